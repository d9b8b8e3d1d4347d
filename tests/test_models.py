"""Typed results: tolerant readers for every known shape, strict about bad values."""

from __future__ import annotations

import copy
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from juliarun_aio import Endpoint, JobInfo, JobRef, JobScale, JobStatus, JobTable, SpecError
from juliarun_aio._models import bool_from_wire, str_from_wire

OBSERVED_STATUS = {
    "succeeded": False,
    "created": True,
    "parallelism": 0,
    "nworkers_succeeded": 0,
    "npending": 0,
    "nuptodate": 0,
}


def test_status_observed_dict_form() -> None:
    """The dict form seen from a real server reads field by field."""
    status = JobStatus.from_wire(OBSERVED_STATUS)
    assert status == JobStatus(created=True)
    assert status.nworkers_started is None
    assert status.is_notebook is None
    assert not status.completed


def test_status_full_dict_form() -> None:
    """Every known key of the dict form lands in its field."""
    status = JobStatus.from_wire(
        {
            "succeeded": True,
            "created": True,
            "parallelism": 4,
            "nworkers_succeeded": 3,
            "npending": 1,
            "nuptodate": 2,
            "nworkers_started": 4,
            "is_notebook": False,
            "phase": "succeeded",
            "failed": False,
            "message": "done",
            "uid": "0f3a9c2e81b4d756",
        }
    )
    assert status == JobStatus(
        succeeded=True,
        created=True,
        parallelism=4,
        nworkers_succeeded=3,
        npending=1,
        nuptodate=2,
        nworkers_started=4,
        is_notebook=False,
        phase="succeeded",
        failed=False,
        message="done",
        uid="0f3a9c2e81b4d756",
    )
    assert status.completed


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            [True, 2, 3, False, True],
            JobStatus(
                succeeded=True,
                nworkers_succeeded=2,
                nworkers_started=3,
                created=False,
                is_notebook=True,
            ),
        ),
        (
            [False, 0, 1, True, False],
            JobStatus(nworkers_started=1, created=True, is_notebook=False),
        ),
        # A 4-array (no is_notebook) and extra trailing items are tolerated.
        ([False, 0, 0, True], JobStatus(nworkers_started=0, created=True)),
        (
            [True, 1, 1, True, False, "later"],
            JobStatus(
                succeeded=True,
                nworkers_succeeded=1,
                nworkers_started=1,
                created=True,
                is_notebook=False,
            ),
        ),
        # Julia may print booleans as 0/1 and numbers as strings.
        (
            [1, "2", 2.0, 0, 0],
            JobStatus(succeeded=True, nworkers_succeeded=2, nworkers_started=2, is_notebook=False),
        ),
    ],
)
def test_status_legacy_array_form(data: list[Any], expected: JobStatus) -> None:
    """The 2017 5-array [completed, nworkers_succeeded, nworkers_started, created, is_notebook]."""
    assert JobStatus.from_wire(data) == expected


def test_status_unknown_keys_are_ignored_but_kept() -> None:
    """Keys the model does not know are kept in ``extra`` and do not affect equality."""
    status = JobStatus.from_wire({**OBSERVED_STATUS, "future_field": [1, 2], "node": "n1"})
    assert status == JobStatus(created=True)
    assert status.extra == {"future_field": [1, 2], "node": "n1"}


def test_status_nulls_and_missing_keys_take_defaults() -> None:
    """A null value or a missing key leaves the field at its default."""
    assert JobStatus.from_wire({"succeeded": None, "parallelism": None}) == JobStatus()
    assert JobStatus.from_wire({}) == JobStatus()


def test_status_completed_alias() -> None:
    """A server that says ``completed`` instead of ``succeeded`` is understood."""
    assert JobStatus.from_wire({"completed": True}).succeeded
    assert JobStatus.from_wire({"completed": True}).extra == {}
    assert not JobStatus.from_wire({"completed": True, "succeeded": False}).succeeded


def test_status_lenient_scalars() -> None:
    """Booleans as "true"/0/1 and integers as strings or whole floats are accepted."""
    status = JobStatus.from_wire(
        {"succeeded": "TRUE", "created": 1, "parallelism": "3", "npending": 2.0}
    )
    assert status == JobStatus(succeeded=True, created=True, parallelism=3, npending=2)


@pytest.mark.parametrize(
    ("phase", "failed", "succeeded", "completed"),
    [
        (None, False, False, False),
        ("pending", False, False, False),
        ("running", False, False, False),
        ("succeeded", False, True, True),
        ("failed", True, False, True),
        ("lost", False, False, True),
        (None, True, False, True),
        (None, False, True, True),
    ],
)
def test_status_completed_property(
    phase: str | None, failed: bool, succeeded: bool, completed: bool
) -> None:
    """``completed`` is true once the job succeeded, failed or was lost."""
    status = JobStatus(phase=phase, failed=failed, succeeded=succeeded)
    assert status.completed is completed


@pytest.mark.parametrize(
    ("data", "quoted"),
    [
        ({"succeeded": "maybe"}, "'maybe'"),
        ({"created": 2}, "2"),
        ({"parallelism": "many"}, "'many'"),
        ({"npending": 1.5}, "1.5"),
        ({"nuptodate": [1]}, "[1]"),
        ({"is_notebook": "yes"}, "'yes'"),
        ([True, 0, 0], "[True, 0, 0]"),
        ([True, "x", 0, True, False], "'x'"),
        ([True, 0, 0, "created?", False], "'created?'"),
        ("running", "'running'"),
        (42, "42"),
        (None, "None"),
    ],
)
def test_status_malformed_raises_value_error_quoting_it(data: object, quoted: str) -> None:
    """A malformed status raises ValueError whose message quotes the bad value."""
    with pytest.raises(ValueError) as info:
        JobStatus.from_wire(data)
    assert quoted in str(info.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([0, 0], JobScale(0, 0)),
        ([2, 4], JobScale(2, 4)),
        (["1", 3.0], JobScale(1, 3)),
        ([1, 2, "ignored"], JobScale(1, 2)),
        ({"running": 3, "requested": 5, "other": 1}, JobScale(3, 5)),
    ],
)
def test_scale_forms(data: object, expected: JobScale) -> None:
    """getJobScale's ``[running, requested]`` (and an object form) read as JobScale."""
    assert JobScale.from_wire(data) == expected


@pytest.mark.parametrize(
    ("data", "quoted"),
    [
        ([1], "[1]"),
        ([], "[]"),
        (None, "None"),
        ({"running": 1}, "{'running': 1}"),
        ("1,2", "'1,2'"),
        (["one", 2], "'one'"),
        ([1, None], "None"),
    ],
)
def test_scale_malformed(data: object, quoted: str) -> None:
    """A malformed scale raises ValueError quoting the value."""
    with pytest.raises(ValueError, match="expected") as info:
        JobScale.from_wire(data)
    assert quoted in str(info.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (["10.0.180.127", {"port8000": 8000}], Endpoint("10.0.180.127", {"port8000": 8000})),
        (["10.0.0.1", {"http": 80, "ssh": "22"}], Endpoint("10.0.0.1", {"http": 80, "ssh": 22})),
        (["10.0.0.1"], Endpoint("10.0.0.1", {})),
        (["10.0.0.1", None], Endpoint("10.0.0.1", {})),
        (["10.0.0.1", {}], Endpoint("10.0.0.1", {})),
        ([None, {}], Endpoint(None, {})),
        ("10.0.0.2", Endpoint("10.0.0.2", {})),
        (None, Endpoint(None, {})),
        ([], Endpoint(None, {})),
        ((), Endpoint(None, {})),
        ("", Endpoint(None, {})),
    ],
)
def test_endpoint_forms(data: object, expected: Endpoint) -> None:
    """``[ip, {name: port}]`` and the "no endpoint yet" forms read as Endpoint."""
    assert Endpoint.from_wire(data) == expected


@pytest.mark.parametrize(
    ("data", "quoted"),
    [
        (["10.0.0.1", [8000]], "[8000]"),
        (["10.0.0.1", {"http": "eighty"}], "'eighty'"),
        ([8000, {}], "[8000, {}]"),
        ({"host": "h"}, "{'host': 'h'}"),
        (17, "17"),
    ],
)
def test_endpoint_malformed(data: object, quoted: str) -> None:
    """A malformed endpoint raises ValueError quoting the value."""
    with pytest.raises(ValueError, match="expected") as info:
        Endpoint.from_wire(data)
    assert quoted in str(info.value)


def test_job_info_list_jobs_form() -> None:
    """listJobs' ``{name: {"type": ...}}`` reads as JobInfo with only the kind."""
    jobs = JobInfo.mapping_from_wire(
        {"sim": {"type": "JuliaBatch"}, "nb": {"type": "Notebook", "unknown": 1}}
    )
    assert jobs == {
        "sim": JobInfo(name="sim", kind="JuliaBatch"),
        "nb": JobInfo(name="nb", kind="Notebook"),
    }
    assert jobs["sim"].ref == JobRef("JuliaBatch", "sim")


def test_job_info_all_job_info_form() -> None:
    """getAllJobInfo entries carry status, scale and endpoint in their wire forms."""
    jobs = JobInfo.mapping_from_wire(
        {
            "par": {
                "type": "JuliaParBatch",
                "status": OBSERVED_STATUS,
                "scale": [1, 2],
                "endpoint": ["10.0.0.5", {"port8000": 8000}],
            },
            "old": {
                "type": "JuliaBatch",
                "status": [True, 0, 0, True, False],
                "scale": [],
                "endpoint": None,
            },
        }
    )
    assert jobs["par"] == JobInfo(
        name="par",
        kind="JuliaParBatch",
        status=JobStatus(created=True),
        scale=JobScale(1, 2),
        endpoint=Endpoint("10.0.0.5", {"port8000": 8000}),
    )
    assert jobs["old"].status == JobStatus(
        succeeded=True, nworkers_started=0, created=True, is_notebook=False
    )
    assert jobs["old"].scale is None
    assert jobs["old"].endpoint == Endpoint(None, {})


def test_job_info_null_is_empty() -> None:
    """A null job listing reads as no jobs."""
    assert JobInfo.mapping_from_wire(None) == {}
    assert JobInfo.mapping_from_wire({}) == {}


@pytest.mark.parametrize(
    ("data", "quoted"),
    [
        (["sim"], "['sim']"),
        ({"sim": "JuliaBatch"}, "'JuliaBatch'"),
        ({"sim": {"kind": "JuliaBatch"}}, "{'kind': 'JuliaBatch'}"),
        ({"sim": {"type": "JuliaBatch", "scale": "two"}}, "'two'"),
        ({"sim": {"type": "JuliaBatch", "status": {"created": "perhaps"}}}, "'perhaps'"),
    ],
)
def test_job_info_malformed(data: object, quoted: str) -> None:
    """A malformed listing raises ValueError quoting the offending value."""
    with pytest.raises(ValueError) as info:
        JobInfo.mapping_from_wire(data)
    assert quoted in str(info.value)


STATUSES = st.builds(
    JobStatus,
    succeeded=st.booleans(),
    created=st.booleans(),
    parallelism=st.integers(0, 1000),
    nworkers_succeeded=st.integers(0, 1000),
    npending=st.integers(0, 1000),
    nuptodate=st.integers(0, 1000),
    nworkers_started=st.none() | st.integers(0, 1000),
    is_notebook=st.none() | st.booleans(),
    phase=st.none() | st.sampled_from(["pending", "running", "succeeded", "failed", "lost"]),
    failed=st.booleans(),
    message=st.none() | st.text(max_size=20),
    uid=st.none() | st.text("0123456789abcdef", min_size=16, max_size=16),
)


@given(STATUSES)
def test_status_to_wire_round_trip(status: JobStatus) -> None:
    """JobStatus.from_wire(status.to_wire()) gives the same status back."""
    assert JobStatus.from_wire(status.to_wire()) == status


def test_status_to_wire_keeps_extra_keys() -> None:
    """Unknown keys survive a round trip through to_wire."""
    status = JobStatus.from_wire({**OBSERVED_STATUS, "node": "n1"})
    assert status.to_wire()["node"] == "n1"
    assert JobStatus.from_wire(status.to_wire()).extra == {"node": "n1"}


def test_status_to_wire_is_the_observed_form() -> None:
    """A default status encodes to exactly the dict form observed from JuliaRun."""
    assert JobStatus(created=True).to_wire() == OBSERVED_STATUS


@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_scale_round_trip(running: int, requested: int) -> None:
    """JobScale round-trips through ``[running, requested]``."""
    scale = JobScale(running, requested)
    assert scale.to_wire() == [running, requested]
    assert JobScale.from_wire(scale.to_wire()) == scale


@given(
    st.none() | st.text(min_size=1, max_size=15),
    st.dictionaries(st.text(min_size=1, max_size=10), st.integers(1, 65535), max_size=4),
)
def test_endpoint_round_trip(host: str | None, ports: dict[str, int]) -> None:
    """Endpoint round-trips through ``[host, {name: port}]``."""
    endpoint = Endpoint(host, ports)
    assert Endpoint.from_wire(endpoint.to_wire()) == endpoint


@given(STATUSES, st.none() | st.builds(JobScale, st.integers(0, 9), st.integers(0, 9)))
def test_job_info_round_trip(status: JobStatus, scale: JobScale | None) -> None:
    """A getAllJobInfo entry round-trips through to_wire."""
    info = JobInfo(
        name="job-1",
        kind="JuliaParBatch",
        status=status,
        scale=scale,
        endpoint=Endpoint("10.1.2.3", {"port8000": 8000}),
    )
    assert JobInfo.mapping_from_wire({"job-1": info.to_wire()}) == {"job-1": info}
    bare = JobInfo(name="b", kind="Generic")
    assert bare.to_wire() == {"type": "Generic"}
    assert JobInfo.mapping_from_wire({"b": bare.to_wire()}) == {"b": bare}


@pytest.mark.parametrize(
    ("data", "expected"),
    [(True, True), (False, False), (None, False), ("true", True), ("FALSE", False)],
)
def test_bool_from_wire_reads_booleans(data: object, expected: bool) -> None:
    """A boolean answer is true/false in any case, and null reads as false."""
    assert bool_from_wire(data) is expected


@pytest.mark.parametrize(("data", "expected"), [("a\nb", "a\nb"), ("", ""), (None, "")])
def test_str_from_wire_reads_strings(data: object, expected: str) -> None:
    """A string answer is taken as it is, and null reads as an empty string."""
    assert str_from_wire(data) == expected


@pytest.mark.parametrize(
    ("reader", "data"),
    [(bool_from_wire, "yes"), (bool_from_wire, 1), (str_from_wire, 3), (str_from_wire, ["a"])],
)
def test_wire_readers_refuse_other_shapes(reader: Callable[[object], object], data: object) -> None:
    """Anything else raises ValueError quoting the value."""
    with pytest.raises(ValueError, match=repr(data).replace("[", r"\[")):
        reader(data)


def test_job_info_keeps_an_unknown_job_type() -> None:
    """A job type newer than the SDK is listed; only asking for its ref fails."""
    jobs = JobInfo.mapping_from_wire(
        {"future": {"type": "QuantumBatch"}, "b": {"type": "JuliaBatch"}}
    )
    assert jobs["future"].kind == "QuantumBatch"
    assert jobs["b"].ref == JobRef("JuliaBatch", "b")
    with pytest.raises(SpecError):
        _ = jobs["future"].ref


def test_status_uid_tells_submissions_apart() -> None:
    """Two statuses that differ only in their uid (a job deleted and submitted again) differ."""
    first = JobStatus.from_wire({**OBSERVED_STATUS, "uid": "a" * 16})
    again = JobStatus.from_wire({**OBSERVED_STATUS, "uid": "b" * 16})
    assert first.uid == "a" * 16
    assert first != again
    assert JobStatus.from_wire(OBSERVED_STATUS).uid is None


# -- notebook displays and plain text ------------------------------------------------


class _Html(HTMLParser):
    """Collects the tags, attributes and text of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.text += data


def _parse(fragment: str) -> _Html:
    parser = _Html()
    parser.feed(fragment)
    parser.close()
    return parser


SAFE_TAGS = {"div", "b", "i", "span", "table", "thead", "tbody", "tr", "th", "td", "a"}
SAFE_ATTRIBUTES = {"style", "href", "target", "rel"}

TRAIN = JobInfo(
    "train",
    "JuliaParBatch",
    JobStatus(created=True, parallelism=3, nuptodate=2, phase="running", message="2 of 3 up"),
    JobScale(2, 3),
    Endpoint("127.0.0.1", {"http": 8080, "amqp": 5672}),
)
DONE = JobInfo("prep", "JuliaBatch", JobStatus(succeeded=True, created=True), JobScale(0, 0))


def test_job_table_is_a_dict_of_job_info() -> None:
    """JobTable keeps every dict behaviour: equality, lookup, iteration, copies."""
    table = JobTable({"train": TRAIN, "prep": DONE})
    assert isinstance(table, dict)
    assert table == {"train": TRAIN, "prep": DONE}
    assert table["train"] is TRAIN
    assert sorted(table) == ["prep", "train"]
    assert dict(table) == {"train": TRAIN, "prep": DONE}
    assert copy.copy(table) == table
    assert JobTable() == {}


def test_job_table_prints_like_juliarun_info() -> None:
    """str() of a JobTable is the aligned table of ``juliarun info``, sorted by name."""
    table = JobTable({"train": TRAIN, "prep": DONE})
    assert str(table).splitlines() == [
        "NAME   TYPE           PHASE      WORKERS  ENDPOINT",
        "prep   JuliaBatch     succeeded  0/0      -",
        "train  JuliaParBatch  running    2/3      127.0.0.1 http=8080,amqp=5672",
    ]
    assert str(JobTable()) == "no jobs"
    pretty = pytest.importorskip("IPython.lib.pretty")
    assert pretty.pretty(table) == str(table)


def test_models_have_a_one_line_text_form() -> None:
    """str() of each model says what matters in one line."""
    assert TRAIN.status is not None
    assert str(TRAIN.status) == "running, 2/3 workers: 2 of 3 up"
    assert str(JobStatus(created=True)) == "running"
    assert str(JobScale(2, 3)) == "2/3 workers running"
    assert str(Endpoint("127.0.0.1", {"http": 8080})) == "127.0.0.1 http=8080"
    assert str(Endpoint(None)) == "-"
    assert str(DONE) == "prep  JuliaBatch  succeeded  0/0  -"


def test_html_shows_phases_in_colour_and_links_web_ports() -> None:
    """The table's phase badges carry the phase colours; web ports are links, others not."""
    fragment = JobTable({"train": TRAIN, "prep": DONE})._repr_html_()
    parsed = _parse(fragment)
    assert "background:#2f6fdb" in fragment  # running
    assert "background:#1f8a4c" in fragment  # succeeded
    assert ("href", "http://127.0.0.1:8080/") in parsed.attributes
    assert parsed.tags.count("a") == 1
    assert parsed.tags.count("tr") == 3
    assert "2 of 3 up" in parsed.text
    links = _parse(Endpoint("::1", {"https": 8443, "nb": 8888})._repr_html_()).attributes
    assert ("href", "https://[::1]:8443/") in links
    assert ("href", "http://[::1]:8888/") in links
    assert "no jobs" in JobTable()._repr_html_()


def test_each_model_displays_as_html() -> None:
    """JobStatus, JobScale, Endpoint and JobInfo each render an HTML fragment of their facts."""
    assert TRAIN.status is not None
    status = _parse(TRAIN.status._repr_html_())
    assert "running" in status.text
    assert "2 of 3 up" in status.text
    scale = _parse(JobScale(2, 4)._repr_html_())
    assert scale.text.split() == ["2", "of", "4", "workers", "running"]
    assert "width:50%" in JobScale(2, 4)._repr_html_()
    assert "width:100%" in JobScale(0, 0)._repr_html_()
    assert "127.0.0.1" in _parse(Endpoint("127.0.0.1", {"amqp": 5672})._repr_html_()).text
    assert _parse(TRAIN._repr_html_()).tags.count("tr") == 2


# Markup-heavy text finds a missing escape far sooner than arbitrary text does.
texts = st.text(alphabet=st.sampled_from("<>\"'&=/ ab;#x"), max_size=30) | st.text(max_size=30)
ATTACK = '"><img src=x onerror=alert(1)><script>alert(1)</script>&amp;'


@example(name=ATTACK, kind=ATTACK, message=ATTACK, host=ATTACK, port_name=ATTACK, extra=ATTACK)
@given(name=texts, kind=texts, message=texts, host=texts, port_name=texts, extra=texts)
def test_html_escapes_every_value(
    name: str, kind: str, message: str, host: str, port_name: str, extra: str
) -> None:
    """Whatever the server sends, the HTML holds only its own tags and attributes, and
    shows each value as text."""
    status = JobStatus(phase=kind, message=message, extra={"note": extra})
    info = JobInfo(name, kind, status, JobScale(1, 2), Endpoint(host, {port_name: 80}))
    for fragment in (
        JobTable({name: info})._repr_html_(),
        status._repr_html_(),
        info.endpoint._repr_html_() if info.endpoint else "",
    ):
        parsed = _parse(fragment)
        assert set(parsed.tags) <= SAFE_TAGS
        assert {key for key, _ in parsed.attributes} <= SAFE_ATTRIBUTES
    table = _parse(JobTable({name: info})._repr_html_())
    for value in (name, message, host):
        assert value in table.text
