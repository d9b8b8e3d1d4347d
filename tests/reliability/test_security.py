"""Security: credentials, namespaces, the listening address, and secrets kept out of text."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
import psutil
import pytest
from conftest import OTHER_NAMESPACE
from faultproxy import FaultProxy
from reliability_support import FAST_SERVER, free_port, record
from support import QUICK_KILL, TlsListener, issue_certificate, write_script

import juliarun_aio as jr
from juliarun_aio import Context, JuliaBatch, JuliaParBatchWorkers, RetryPolicy
from juliarun_aio._watch import PollPolicy
from juliarun_aio.server import LocalServer, ServerConfig, ServerProcess

#: A token whose base64 holds '+', '/' and '=' (``czM+Y3I/dC10b2tlbi12NGx1ZX4=``), so that
#: every encoded form of it differs from the others.
TOKEN = "s3>cr?t-token-v4lue~"
WRONG_TOKEN = "wr0ng~>?" + TOKEN[::-1]


def secret_forms(*tokens: str) -> list[str]:
    """Every way a token could show up in text: raw, base64, and percent-encoded forms."""
    forms: set[str] = set()
    for token in tokens:
        b64 = base64.b64encode(token.encode()).decode()
        forms |= {token, b64, quote(b64, safe=""), quote(b64), quote(token, safe=""), quote(token)}
    return sorted(forms)


def leaks(text: str, forms: list[str]) -> list[str]:
    """The secret forms found in ``text``."""
    return [form for form in forms if form in text]


def _volume(data_dir: Path) -> Path:
    path = data_dir / "namespaces" / "default" / "volumes" / "work"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _status(url: str, params: dict[str, str], verb: str = "getSystemStatus") -> tuple[int, object]:
    response = httpx.get(f"{url}/{verb}/", params=params, timeout=30)
    return response.status_code, response.json()


def _b64(token: str) -> str:
    return base64.b64encode(token.encode()).decode()


# -- credentials -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_wrong_or_missing_token_gets_401(server: LocalServer) -> None:
    """Security: a missing, undecodable or wrong token gets 401; another namespace's, 403."""
    other = server.config.tokens[OTHER_NAMESPACE]
    cases = {
        "missing": {"jrunns": "default"},
        "empty": {"jruntok": "", "jrunns": "default"},
        "not base64": {"jruntok": "***", "jrunns": "default"},
        "raw token, not base64": {"jruntok": server.token + "!", "jrunns": "default"},
        "wrong token": {"jruntok": _b64("wrong"), "jrunns": "default"},
        "token with a suffix": {"jruntok": _b64(server.token + "x"), "jrunns": "default"},
        "unknown namespace": {"jruntok": _b64("wrong"), "jrunns": "nobody"},
    }
    for what, params in cases.items():
        status, body = await anyio.to_thread.run_sync(_status, server.url, params)
        assert status == 401, what
        assert isinstance(body, dict)
        assert body["code"] != 0, what
    status, body = await anyio.to_thread.run_sync(
        _status, server.url, {"jruntok": _b64(other), "jrunns": "default"}
    )
    assert status == 403
    for token in ("wrong", server.token + "x"):
        async with Context(server.url, token, server.namespace) as ctx:
            with pytest.raises(jr.AuthenticationError) as caught:
                await ctx.get_system_status()
            assert caught.value.status_code == 401
            with pytest.raises(jr.AuthenticationError):
                await ctx.submit_job(JuliaBatch(name="sneaky", start_script="s", run_volume="w"))
    async with Context(server.url, server.token, server.namespace) as ctx:
        assert await ctx.list_jobs() == {}


# -- namespaces --------------------------------------------------------------------------


def _stored(server: LocalServer, namespace: str, name: str) -> tuple[str, int, str] | None:
    database = server.data_dir / "state.sqlite3"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT params, requested, phase FROM jobs WHERE namespace = ? AND name = ?",
            (namespace, name),
        ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


@pytest.mark.anyio
async def test_another_namespace_job_is_invisible_and_untouchable(
    server: LocalServer, volume: Path
) -> None:
    """Security: from namespace B, A's job is 404 everywhere and nothing B does changes it."""
    write_script(volume, "unit.py", "import time\nprint('unit up', flush=True)\ntime.sleep(60)\n")
    job = JuliaParBatchWorkers(name="secret", start_script="unit.py", run_volume="work", nworkers=1)
    other_token = server.config.tokens[OTHER_NAMESPACE]
    poll = PollPolicy(initial=0.02, maximum=0.1)
    async with (
        Context(server.url, server.token, server.namespace) as owner,
        Context(server.url, other_token, OTHER_NAMESPACE) as intruder,
    ):
        await owner.submit_job(job)
        with anyio.fail_after(30):
            await owner.wait_for_scale(job, 1, poll=poll)
        with anyio.fail_after(30):  # until the unit's first line is in the log
            async with contextlib.aclosing(owner.tail_logs(job, poll=poll)) as lines:
                async for _ in lines:
                    break
        before = (
            _stored(server, "default", "secret"),
            await owner.get_job_scale(job),
            await owner.tail_job(job),
        )

        assert "secret" not in await intruder.list_jobs()
        assert "secret" not in await intruder.get_all_job_info()
        reads = [
            intruder.get_job_status(job),
            intruder.get_job_scale(job),
            intruder.get_job_endpoint(job),
            intruder.get_encoded_url(job, 80),
            intruder.tail_job(job),
        ]
        writes = [
            intruder.set_job_scale(job, 5),
            intruder.update_job(
                JuliaParBatchWorkers(
                    name="secret", start_script="evil.py", run_volume="work", nworkers=3
                )
            ),
            intruder.delete_job(job, force=True),
        ]
        refused = 0
        for call in [*reads, *writes]:
            with pytest.raises(jr.JobNotFoundError):
                await call
            refused += 1
        with pytest.raises((jr.JobNotFoundError, jr.WaitTimeoutError)):
            async for _ in intruder.tail_logs(job, start_timeout=0.2, poll=poll):
                pass
        # B's own job of the same name is B's alone; deleting it leaves A's alone.
        await intruder.submit_job(
            JuliaBatch(name="secret", start_script="missing.py", run_volume="work")
        )
        await intruder.delete_job(JuliaBatch(name="secret", start_script="m", run_volume="w"))
        status = await owner.get_job_status(job)
        after = (
            _stored(server, "default", "secret"),
            await owner.get_job_scale(job),
            await owner.tail_job(job),
        )
    # A's credential presented for B's namespace is refused too.
    code, _ = await anyio.to_thread.run_sync(
        _status, server.url, {"jruntok": _b64(server.token), "jrunns": OTHER_NAMESPACE}, "listJobs"
    )
    assert code == 403
    assert after == before
    assert status.phase == "running"
    assert after[2] == "unit up"
    assert (server.data_dir / "namespaces" / "default" / "jobs" / "secret").is_dir()
    record("namespace isolation", refused_calls=refused + 1)


# -- the listening address ---------------------------------------------------------------


def test_the_server_binds_loopback_by_default(tmp_path: Path) -> None:
    """Security: the server listens on 127.0.0.1 unless told otherwise (config, class, CLI)."""
    assert ServerConfig(data_dir=tmp_path, tokens={"default": "t"}).host == "127.0.0.1"
    with LocalServer(tmp_path / "local", **FAST_SERVER) as local:
        assert local.url.startswith("http://127.0.0.1:")
    server = ServerProcess(tmp_path / "cli", tokens={"default": "t"}, args=QUICK_KILL).start()
    try:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.proc is not None
        listening = [
            conn.laddr
            for conn in psutil.Process(server.proc.pid).net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
    finally:
        server.stop()
    assert listening
    assert {addr.ip for addr in listening} == {"127.0.0.1"}


# -- secrets in text ---------------------------------------------------------------------


class _Capture(logging.Handler):
    """Keeps every record, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))


#: Loggers that do not propagate to the root logger get the handler themselves.
_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore", "juliarun_aio")


@pytest.fixture
def every_log_record() -> Iterator[_Capture]:
    """Capture every record of every logger at DEBUG level."""
    capture = _Capture()
    saved = []
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
        logger.addHandler(capture)
    try:
        yield capture
    finally:
        for logger, level in saved:
            logger.removeHandler(capture)
            logger.setLevel(level)


def _error_texts(exc: BaseException) -> list[str]:
    return [
        str(exc),
        repr(exc),
        "".join(traceback.format_exception(exc)),
        repr(vars(exc)),
    ]


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_token_never_appears_in_logs_errors_or_reprs(
    tmp_path: Path, every_log_record: _Capture
) -> None:
    """Security: the token (raw, base64, encoded) is in no log record, error, warning or repr.

    Over plain HTTP and HTTPS: refused certificates on every path, failures once verified.
    """
    forms = secret_forms(TOKEN, WRONG_TOKEN)
    texts: list[str] = []
    errors: list[BaseException] = []
    quick = RetryPolicy(attempts=3, initial=0, maximum=0.01, total_timeout=10)
    poll = PollPolicy(initial=0.02, maximum=0.1)
    async with LocalServer(tmp_path / "data", tokens={"default": TOKEN}, **FAST_SERVER) as server:
        # The server configures uvicorn's loggers as it starts: open them up again.
        for name in _LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
        volume = server.data_dir / "namespaces" / "default" / "volumes" / "work"
        write_script(
            volume, "hello.py", "import sys\nprint('hello')\nprint('oops', file=sys.stderr)\n"
        )
        job = JuliaBatch(name="hello", start_script="hello.py", run_volume="work")

        async def attempt(call: Awaitable[object]) -> None:
            try:
                await call
            except jr.JuliaRunError as exc:
                errors.append(exc)

        async def drain(lines: AsyncIterator[object]) -> None:
            async for _ in lines:
                pass

        async with Context(server.url, TOKEN, "default", retries=quick) as ctx:
            texts += [repr(ctx), str(ctx), repr(ctx.retry_policy)]
            await ctx.submit_job(job)
            with anyio.fail_after(30):
                await ctx.wait_for_job(job, poll=poll)
            await ctx.list_jobs()
            await ctx.get_all_job_info()
            texts.append(await ctx.tail_job(job))
            texts += [repr(line) async for line in ctx.tail_logs(job, follow=False)]
            await attempt(ctx.submit_job(job))  # 409
            await attempt(ctx.get_job_status(jr.JobRef("JuliaBatch", "missing")))  # 404
            await attempt(ctx.wait_for_scale(job, 3, timeout=0.1, poll=poll))
            await attempt(ctx.set_job_scale(jr.JobRef("JuliaBatch", "missing"), 2))
        port = int(server.url.rsplit(":", 1)[1])
        # Retries, resets, bad answers, stalls and timeouts through a faulty proxy.
        async with (
            FaultProxy(port, rate=0.5, seed=3) as proxy,
            Context(proxy.url, TOKEN, "default", retries=quick, timeout=0.5) as ctx,
        ):
            for _ in range(40):
                await attempt(ctx.get_job_status(job))
            for i in range(10):
                spec = JuliaBatch(name=f"leak-{i}", start_script="m.py", run_volume="work")
                await attempt(ctx.submit_job(spec))
            await attempt(ctx.update_job(job))
        async with Context(server.url, WRONG_TOKEN, "default", retries=quick) as ctx:
            await attempt(ctx.get_system_status())  # 401
            await attempt(ctx.tail_job(job))
        closed = f"http://127.0.0.1:{free_port()}"
        brief = RetryPolicy(attempts=2, initial=0, maximum=0, total_timeout=0.5)
        async with Context(closed, TOKEN, "default", retries=brief) as ctx:
            await attempt(ctx.get_system_status())  # connection refused
            await attempt(ctx.delete_job(job))
            await attempt(drain(ctx.tail_logs(job, follow=False, mode="stream")))
    refused_before = len(errors)
    # HTTPS: refused certificates on every path, and calls that fail once verified.
    async with LocalServer(
        tmp_path / "tls", tokens={"default": TOKEN}, tls_self_signed=True, **FAST_SERVER
    ) as server:
        for name in _LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
        async with Context(server.url, TOKEN, "default", retries=quick, env={}) as ctx:
            await attempt(ctx.get_system_status())  # unknown CA
            await attempt(ctx.submit_job(job))
            await attempt(ctx.wait_for_job(job, timeout=10, poll=poll))
            await attempt(drain(ctx.tail_logs(job, mode="stream")))
            await attempt(drain(ctx.tail_logs(job, mode="poll")))
        async with Context(server.url, WRONG_TOKEN, "default", verify=server.ca_bundle) as ctx:
            await attempt(ctx.list_jobs())  # 401 over TLS
        async with Context(server.url, TOKEN, "default", verify=server.ca_bundle) as ctx:
            await attempt(ctx.get_job_status(job))  # 404 over TLS
    for name, expired in (("elsewhere.example", False), ("127.0.0.1", True)):
        files = issue_certificate(tmp_path / name, name, expired=expired)
        with TlsListener(files) as listener:
            async with Context(listener.url, TOKEN, "default", verify=files.ca) as ctx:
                await attempt(ctx.list_jobs())  # name mismatch, then expired
    certificate_errors = [e for e in errors[refused_before:] if isinstance(e, jr.CertificateError)]
    assert {e.reason for e in certificate_errors} == {"unknown CA", "name mismatch", "expired"}
    with pytest.warns(jr.InsecureTransportWarning) as warned:
        async with Context(f"http://10.231.0.1:{free_port()}", TOKEN, "default"):
            pass  # made and closed: nothing is sent
    texts += [str(warning.message) for warning in warned]
    for exc in errors:
        texts += _error_texts(exc)
    found = {
        "log records": [t for t in every_log_record.texts if leaks(t, forms)],
        "errors and reprs": [t for t in texts if leaks(t, forms)],
    }
    record(
        "token never in text",
        log_records=len(every_log_record.texts),
        errors=len(errors),
        certificate_errors=len(certificate_errors),
        warnings=len(warned),
        texts=len(texts),
        faults=proxy.total_injected,
    )
    assert len(errors) > 20
    assert any("jruntok" in t for t in every_log_record.texts)  # URLs were logged, redacted
    assert found == {"log records": [], "errors and reprs": []}


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_token_never_appears_in_a_tls_servers_output(tmp_path: Path) -> None:
    """Security: a TLS server at debug level prints no token through verbs that pass and fail."""
    forms = secret_forms(TOKEN, WRONG_TOKEN)
    data_dir = tmp_path / "data"
    write_script(_volume(data_dir), "hello.py", "print('hello')\n")
    job = JuliaBatch(name="hello", start_script="hello.py", run_volume="work")
    poll = PollPolicy(initial=0.02, maximum=0.1)
    quick = RetryPolicy(attempts=2, initial=0, maximum=0, total_timeout=10)
    failures = 0
    args = (*QUICK_KILL, "--log-level", "debug")
    tokens = {"default": TOKEN}
    with ServerProcess(data_dir, tokens=tokens, tls_self_signed=True, args=args) as server:
        bundle = server.ca_bundle
        async with Context(server.url, TOKEN, "default", verify=bundle, retries=quick) as ctx:
            await ctx.submit_job(job)
            await ctx.wait_for_job(job, timeout=30, poll=poll)
            [line async for line in ctx.tail_logs(job)]
            await ctx.get_all_job_info()
            for call in (
                ctx.submit_job(job),  # 409
                ctx.get_job_status(jr.JobRef("JuliaBatch", "missing")),  # 404
                ctx.set_job_scale(jr.JobRef("JuliaBatch", "missing"), 2),
                ctx.delete_job(jr.JobRef("JuliaBatch", "missing")),
            ):
                with pytest.raises(jr.ApiError):
                    await call
                failures += 1
        for token, verify in ((WRONG_TOKEN, bundle), (TOKEN, None)):  # 401; unknown CA
            async with Context(server.url, token, "default", verify=verify, env={}) as ctx:
                with pytest.raises((jr.AuthenticationError, jr.CertificateError)):
                    await ctx.list_jobs()
                failures += 1
        # Plain HTTP to the HTTPS port: the server sees a request that is not TLS.
        plain = server.url.replace("https://", "http://")
        async with Context(plain, TOKEN, "default", retries=1) as ctx:
            with pytest.raises(jr.TransportError):
                await ctx.list_jobs()
            failures += 1
    printed = server.output()  # through its shutdown
    assert "export JRUN_CA_BUNDLE=" in printed
    record(
        "token never in a tls server's output",
        lines=printed.count("\n"),
        failing_calls=failures,
        leaks=len(leaks(printed, forms)),
    )
    assert leaks(printed, forms) == []


def _cli(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``python -m juliarun_aio`` with ``args``; return its exit code and output."""
    done = subprocess.run(
        [sys.executable, "-m", "juliarun_aio", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return done.returncode, f"{done.stdout}\n{done.stderr}"


@pytest.mark.slow
def test_the_token_never_appears_in_cli_output(tmp_path: Path) -> None:
    """Security: `python -m juliarun_aio` prints no token, in --json, on errors, over TLS."""
    forms = secret_forms(TOKEN, WRONG_TOKEN)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    env = {key: value for key, value in os.environ.items() if not key.startswith("JRUN_")}
    outputs: list[str] = []
    codes: list[int] = []
    with LocalServer(tmp_path / "data", tokens={"default": TOKEN}, **FAST_SERVER) as server:
        volume = server.data_dir / "namespaces" / "default" / "volumes" / "work"
        write_script(volume, "hello.py", "print('hello from the cli job')\n")
        good = ["--url", server.url, f"--token={TOKEN}", "--namespace", "default"]
        by_file = ["--url", server.url, "--token-file", str(token_file), "--namespace", "default"]
        wrong = ["--url", server.url, f"--token={WRONG_TOKEN}", "--namespace", "default"]
        closed = [
            "--url",
            f"http://127.0.0.1:{free_port()}",
            f"--token={TOKEN}",
            "--namespace",
            "d",
        ]
        runs: list[tuple[list[str], dict[str, str]]] = [
            ([*good, "--json", "status"], {}),
            (
                [
                    *good,
                    "--json",
                    "submit",
                    "JuliaBatch",
                    "cli-job",
                    "--start-script",
                    "hello.py",
                    "--run-volume",
                    "work",
                    "--wait",
                ],
                {},
            ),
            ([*good, "--json", "list"], {}),
            ([*good, "--json", "info"], {}),
            ([*good, "logs", "cli-job"], {}),
            ([*good, "--json", "job-status", "JuliaBatch/missing"], {}),
            ([*wrong, "--json", "list"], {}),
            ([*closed, "--json", "list"], {}),
            (
                ["--json", "list"],
                {"JRUN_URL": server.url, "JRUN_TOKEN": TOKEN, "JRUN_NAMESPACE": "default"},
            ),
            (
                ["--json", "logs", "missing"],
                {"JRUN_URL": server.url, "JRUN_TOKEN": WRONG_TOKEN, "JRUN_NAMESPACE": "default"},
            ),
            ([*by_file, "--json", "delete", "JuliaBatch/cli-job"], {}),
        ]
        for args, extra in runs:
            code, output = _cli(args, {**env, **extra})
            codes.append(code)
            outputs.append(output)
    tls_codes: list[int] = []
    with LocalServer(
        tmp_path / "tls", tokens={"default": TOKEN}, tls_self_signed=True, **FAST_SERVER
    ) as server:
        assert server.ca_bundle is not None
        secure = ["--url", server.url, f"--token={TOKEN}", "--namespace", "default"]
        via_env = {**env, **server.env}
        tls_runs: list[tuple[list[str], dict[str, str]]] = [
            ([*secure, "--ca-bundle", server.ca_bundle, "--json", "status"], env),
            ([*secure, "--json", "list"], env),  # unknown CA
            ([*secure, "--ca-bundle", str(tmp_path / "missing.pem"), "list"], env),
            (["--json", "info"], via_env),
            (["logs", "missing"], {**via_env, "JRUN_TOKEN": WRONG_TOKEN}),
            ([*secure, "--ca-bundle", server.ca_bundle, "job-status", "JuliaBatch/gone"], env),
        ]
        for args, run_env in tls_runs:
            code, output = _cli(args, run_env)
            tls_codes.append(code)
            outputs.append(output)
    every_run = [*runs, *tls_runs]
    leaked = [(every_run[i][0][-2:], out) for i, out in enumerate(outputs) if leaks(out, forms)]
    record(
        "token never in cli output",
        cli_runs=len(every_run),
        tls_runs=len(tls_runs),
        failing_runs=sum(map(bool, codes + tls_codes)),
    )
    assert not leaked, leaked[:3]
    assert tls_codes == [0, 8, 1, 0, 4, 3], outputs[len(runs) :]
    assert [codes[i] for i in (0, 1, 2, 3, 4, 8, 10)] == [0] * 7, outputs
    assert all(codes[i] != 0 for i in (5, 6, 7, 9)), outputs
    assert "hello from the cli job" in outputs[4]
    assert json.loads(outputs[2])[0]["name"] == "cli-job"
