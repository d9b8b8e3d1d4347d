"""The SDK's Context over HTTPS against the local server and its jobs, on asyncio and trio."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import anyio
import pytest
from server_support import FAST
from support import QUICK_KILL, issue_certificate, write_script

from juliarun_aio import (
    CertificateError,
    Context,
    JuliaBatch,
    RetryPolicy,
    TransportError,
)
from juliarun_aio._logs import Mode
from juliarun_aio._watch import PollPolicy
from juliarun_aio.server import LocalServer, ServerProcess

pytestmark = pytest.mark.anyio

#: A job that calls its server back with a bare Context(): JRUN_URL, JRUN_TOKEN,
#: JRUN_NAMESPACE and JRUN_CA_BUNDLE come from the server.
CALL_BACK = """\
import os, anyio
from juliarun_aio import Context, self_job

async def main():
    async with Context() as ctx:
        status = await ctx.get_job_status(self_job())
        print("url", ctx.url.split("://")[0], flush=True)
        print("phase", status.phase, flush=True)
        print("listed", sorted(await ctx.list_jobs()), flush=True)
        print("bundle", os.environ["JRUN_CA_BUNDLE"], flush=True)

anyio.run(main)
"""

#: Reconnects without waiting, within a budget far above what a refusal may take.
QUICK = RetryPolicy(attempts=4, initial=0, maximum=0, total_timeout=60)
POLL = PollPolicy(initial=0.02, maximum=0.1)


def _volume(data_dir: Path) -> Path:
    path = data_dir / "namespaces" / "default" / "volumes" / "work"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("JRUN_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)


async def _drain(ctx: Context, spec: JuliaBatch, mode: Mode) -> None:
    async with contextlib.aclosing(ctx.tail_logs(spec, mode=mode)) as lines:
        async for _ in lines:
            pass


async def test_every_kind_of_call_over_the_servers_own_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With JRUN_CA_BUNDLE as printed, verbs, the log stream and waits work over HTTPS."""
    _clean_environment(monkeypatch)
    async with LocalServer(tmp_path / "data", tls_self_signed=True, **FAST) as server:
        assert server.url.startswith("https://")
        write_script(_volume(server.data_dir), "count.py", "for i in range(300):\n    print(i)\n")
        spec = JuliaBatch(name="count", start_script="count.py", run_volume="work")
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        async with Context() as ctx:
            assert await ctx.get_system_status() is True
            await ctx.submit_job(spec)
            lines = [line.text async for line in ctx.tail_logs(spec, mode="stream")]
            assert lines == [str(i) for i in range(300)]
            assert (await ctx.wait_for_job(spec, timeout=30, poll=POLL)).succeeded
            assert (await ctx.tail_job(spec, count=2)).splitlines() == ["298", "299"]
            assert await ctx.delete_job(spec) is True
        monkeypatch.delenv("JRUN_CA_BUNDLE")
        assert server.ca_bundle is not None
        for verify in (server.ca_bundle, Path(server.ca_bundle)):
            async with Context(server.url, server.token, server.namespace, verify=verify) as ctx:
                assert await ctx.list_jobs() == {}
        context = ssl.create_default_context(cafile=server.ca_bundle)
        async with Context(server.url, server.token, server.namespace, verify=context) as ctx:
            assert await ctx.list_jobs() == {}
        env = {"SSL_CERT_FILE": server.ca_bundle}
        async with Context(server.url, server.token, server.namespace, env=env) as ctx:
            assert await ctx.list_jobs() == {}
        async with Context(server.url, server.token, server.namespace, verify=False) as ctx:
            assert await ctx.get_system_status() is True


async def test_without_the_ca_every_helper_fails_at_once_with_the_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verbs, writes, the log stream, polling and waits raise CertificateError, none retried."""
    _clean_environment(monkeypatch)
    async with LocalServer(tmp_path / "data", tls_self_signed=True, **FAST) as server:
        spec = JuliaBatch(name="never", start_script="s.py", run_volume="work")
        async with Context(server.url, server.token, server.namespace, retries=QUICK) as ctx:
            calls = {
                "read": ctx.get_system_status(),
                "write": ctx.submit_job(spec),
                "delete": ctx.delete_job(spec),
                "wait": ctx.wait_for_job(spec, timeout=60, poll=POLL),
                "scale wait": ctx.wait_for_scale(spec, 1, timeout=60, poll=POLL),
            }
            for what, call in calls.items():
                with pytest.raises(CertificateError) as caught:
                    await call
                assert caught.value.reason == "unknown CA", what
                assert caught.value.attempts == 1, what
            modes: tuple[Mode, ...] = ("stream", "poll")
            for mode in modes:
                with pytest.raises(CertificateError):
                    await _drain(ctx, spec, mode)
        assert server.token not in str(caught.value)


async def test_a_certificate_from_a_test_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server given a test CA's certificate: trusted by that CA, refused by name or other CA."""
    _clean_environment(monkeypatch)
    files = issue_certificate(tmp_path / "certs", "localhost")
    other = issue_certificate(tmp_path / "other", "localhost")
    data_dir = tmp_path / "data"
    with ServerProcess(data_dir, tls_cert=files.cert, tls_key=files.key, args=QUICK_KILL) as server:
        assert server.url.startswith("https://localhost:")
        write_script(_volume(data_dir), "hi.py", "print('hi over tls')\n")
        spec = JuliaBatch(name="hi", start_script="hi.py", run_volume="work")
        async with Context(server.url, server.token, server.namespace, verify=files.ca) as ctx:
            await ctx.submit_job(spec)
            assert (await ctx.wait_for_job(spec, timeout=30, poll=POLL)).succeeded
            assert [line.text async for line in ctx.tail_logs(spec)] == ["hi over tls"]
        refused = {
            "unknown CA": Context(server.url, server.token, server.namespace, verify=other.ca),
            "name mismatch": Context(
                server.url.replace("localhost", "127.0.0.1"),
                server.token,
                server.namespace,
                verify=files.ca,
            ),
        }
        for reason, ctx in refused.items():
            async with ctx:
                with pytest.raises(CertificateError) as caught:
                    await ctx.list_jobs()
            assert caught.value.reason == reason
            assert server.token not in str(caught.value)
        # A transport failure that is not about the certificate stays a plain TransportError.
        async with Context(
            server.url.replace("https", "http"), server.token, server.namespace, retries=1
        ) as ctx:
            with pytest.raises(TransportError) as plain:
                await ctx.list_jobs()
            assert not isinstance(plain.value, CertificateError)


async def test_a_job_calls_its_self_signed_server_back_with_a_bare_context(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job of a --tls-self-signed server calls it back with Context() alone, verified."""
    _clean_environment(monkeypatch)
    volume = _volume(data_dir)
    write_script(volume, "call_back.py", CALL_BACK)
    spec = JuliaBatch(name="caller", start_script="call_back.py", run_volume="work")
    with ServerProcess(data_dir, tls_self_signed=True, args=QUICK_KILL) as server:
        assert server.ca_bundle is not None
        async with Context(
            server.url, server.token, server.namespace, verify=server.ca_bundle
        ) as ctx:
            await ctx.submit_job(spec)
            status = await ctx.wait_for_job(spec, timeout=60, poll=POLL)
            log = await ctx.tail_job(spec)
        assert status.succeeded, log
        assert log.splitlines() == [
            "url https",
            "phase running",
            "listed ['caller']",
            f"bundle {server.ca_bundle}",
        ]


async def test_a_context_rides_out_a_restart_of_its_self_signed_server(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Across a SIGKILL and restart: same CA, the open Context's wait completes, logs from 0."""
    _clean_environment(monkeypatch)
    volume = _volume(data_dir)
    go = volume / "go"
    write_script(
        volume,
        "two.py",
        "import os, time\n"
        "print('before', flush=True)\n"
        f"while not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.05)\n"
        "print('after', flush=True)\n",
    )
    spec = JuliaBatch(name="across", start_script="two.py", run_volume="work")
    with ServerProcess(data_dir, tls_self_signed=True, args=QUICK_KILL) as server:
        assert server.ca_bundle is not None
        ca = await anyio.Path(server.ca_bundle).read_bytes()
        async with Context(
            server.url, server.token, server.namespace, verify=server.ca_bundle
        ) as ctx:
            await ctx.submit_job(spec)
            async with contextlib.aclosing(ctx.tail_logs(spec)) as running:
                assert (await anext(running)).text == "before"
            async with anyio.create_task_group() as tg:
                results: list[bool] = []

                async def wait() -> None:
                    status = await ctx.wait_for_job(spec, timeout=120, poll=POLL)
                    results.append(status.succeeded)

                tg.start_soon(wait)
                await anyio.sleep(0.2)
                server.kill()
                await anyio.to_thread.run_sync(server.start)
                go.touch()
            assert results == [True]
            assert await anyio.Path(server.ca_bundle).read_bytes() == ca
            lines = [line.text async for line in ctx.tail_logs(spec)]
            assert lines == ["before", "after"]
