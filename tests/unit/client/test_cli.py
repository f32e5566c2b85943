"""The ``flotilla`` command: argument and ``--option`` parsing, output formatting, the
stored login's file, and login sessions against the RegistryService double."""

from __future__ import annotations

import getpass
import json
import stat
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from flotilla import ClusterReport, ClusterStatus, Options
from flotilla.cli import (
    CLIError,
    StoredLogin,
    apply_options,
    build_parser,
    cluster_document,
    cluster_table,
    coerce_option,
    config_path,
    format_age,
    format_table,
    load_login,
    main,
    new_output,
    parse_option,
    save_login,
    worker_document,
    worker_table,
)
from flotilla.client import WorkerReport
from helpers import free_port

if TYPE_CHECKING:
    from .conftest import FakeGateway

pytestmark = pytest.mark.timeout(60)


def _field(name: str, default: object, **spec: object) -> dict[str, object]:
    return {"field": name, "label": name.title(), "default": default, "spec": spec}


SPEC = [
    _field("worker_cores", 1, type="int", min=1, max=4),
    _field("worker_memory", 1.0, type="float", min=0.5, max=8),
    _field("label", "", type="string"),
    _field("keep_alive", False, type="bool"),
    _field("profile", "small", type="select", options=["small", "large"]),
    _field("environment", {}, type="mapping"),
]


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("FLOTILLA_PASSWORD", raising=False)
    monkeypatch.delenv("DASK_GATEWAY__ADDRESS", raising=False)
    return home


# -- arguments ---------------------------------------------------------------------------


def test_every_verb_takes_the_common_options() -> None:
    parser = build_parser()
    for argv in (
        ["list", "--all-users", "--status", "RUNNING", "--status", "failed"],
        ["create", "-o", "worker_cores=2", "--option", "label=a=b", "--no-wait"],
        ["scale", "abc", "3"],
        ["adapt", "abc", "--minimum", "1", "--maximum", "4"],
        ["stop", "abc"],
        ["logs", "abc", "--follow", "--interval", "0.5"],
        ["options"],
        ["usage", "--all-users"],
        ["admin", "list"],
        ["admin", "stop", "abc"],
        ["admin", "usage"],
        ["login", "--user", "ann", "--password-stdin"],
    ):
        args = parser.parse_args([*argv, "--address", "http://gw:1", "--auth", "basic", "--json"])
        assert (args.address, args.auth, args.json) == ("http://gw:1", "basic", True)
    args = parser.parse_args(["list", "--status", "RUNNING", "--status", "failed"])
    assert args.status == ["running", "failed"]
    args = parser.parse_args(["create", "-o", "worker_cores=2", "--option", "label=a=b"])
    assert args.option == [("worker_cores", "2"), ("label", "a=b")]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["scale", "abc", "-1"],
        ["scale", "abc", "two"],
        ["create", "--option", "worker_cores"],
        ["create", "--option", "=2"],
        ["list", "--status", "sleeping"],
        ["logs", "abc", "--interval", "0"],
        ["logs", "abc", "--follow", "--json"],
        ["admin"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().out == ""


def test_parse_option_splits_at_the_first_equals_sign() -> None:
    assert parse_option('environment={"A": "1=2"}') == ("environment", '{"A": "1=2"}')
    assert parse_option("label=") == ("label", "")


# -- --option values -----------------------------------------------------------------------


def test_option_values_take_their_fields_types() -> None:
    options = Options.from_spec(SPEC)
    apply_options(
        options,
        [
            ("worker_cores", "2"),
            ("worker_memory", "3"),
            ("label", "42"),
            ("keep_alive", "yes"),
            ("profile", "large"),
            ("environment", '{"A": "1"}'),
        ],
    )
    assert dict(options) == {
        "worker_cores": 2,
        "worker_memory": 3.0,
        "label": "42",
        "keep_alive": True,
        "profile": "large",
        "environment": {"A": "1"},
    }
    assert type(options["worker_cores"]) is int and type(options["worker_memory"]) is float
    fields = options.fields
    assert coerce_option(fields["keep_alive"], "OFF") is False
    assert coerce_option(fields["keep_alive"], "maybe") == "maybe"  # for the field to refuse


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (("worker_cores", "lots"), "worker_cores must be an integer, got 'lots'"),
        (("worker_cores", "9"), "worker_cores must be <= 4"),
        (("worker_memory", "big"), "worker_memory must be a float, got 'big'"),
        (("keep_alive", "maybe"), "keep_alive must be a bool, got 'maybe'"),
        (("profile", "huge"), "'huge' is not a valid option for profile"),
        (("environment", "A=1"), "environment must be a dict, got 'str'"),
        (("gpus", "1"), "No option 'gpus' available (options: worker_cores, worker_memory,"),
    ],
)
def test_a_bad_option_is_refused_in_the_specs_words(pair: tuple[str, str], message: str) -> None:
    with pytest.raises(CLIError) as exc:
        apply_options(Options.from_spec(SPEC), [pair])
    assert message in str(exc.value) and "\n" not in str(exc.value)


# -- output -----------------------------------------------------------------------------------


def test_tables_are_aligned_without_trailing_blanks() -> None:
    table = format_table(["NAME", "N"], [["a", 1], ["longer", None]])
    assert table.splitlines() == ["NAME    N", "a       1", "longer"]


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59.9, "59s"), (60, "1m"), (7199, "1h"), (86400 * 3, "3d")]
)
def test_ages(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


def report(**kw: object) -> ClusterReport:
    base: dict[str, object] = dict(
        name="c1", options={"worker_cores": 2}, status=ClusterStatus.RUNNING,
        scheduler_address="gateway://gw:1/c1", dashboard_link="http://gw:1/clusters/c1/status",
        start_time=datetime(2026, 1, 1, 12, 0), stop_time=None, tls_cert="CERT", tls_key="KEY",
        owner="ann", backend="local", requested_workers=3, running_workers=2, cores=7,
        memory=13 * 2**30,
    )  # fmt: skip
    base.update(kw)
    return ClusterReport(**base)  # type: ignore[arg-type]


def test_the_cluster_table() -> None:
    now = datetime(2026, 1, 1, 12, 5)
    ended = report(name="c2", status=ClusterStatus.STOPPED, dashboard_link=None, cores=0, memory=0)
    lines = cluster_table([report(), ended], owners=True, now=now).splitlines()
    assert lines[0].split() == [
        "NAME", "OWNER", "STATUS", "WORKERS", "CORES", "MEMORY", "AGE", "DASHBOARD",
    ]  # fmt: skip
    assert lines[1].split() == [
        "c1", "ann", "running", "2/3", "7", "13.00", "GiB", "5m", "http://gw:1/clusters/c1/status",
    ]  # fmt: skip
    assert lines[2].split() == ["c2", "ann", "stopped", "2/3", "-", "-", "5m", "-"]
    # columns line up: every value starts where its header does
    assert lines[1].index("running") == lines[0].index("STATUS") == lines[2].index("stopped")
    assert "OWNER" not in cluster_table([report()], owners=False, now=now)


def test_the_workers_table_ends_with_the_whole_reason() -> None:
    now = datetime(2026, 1, 1, 12, 5)
    oom = "worker w1 exceeded its memory limit of 400 MiB (OOMKilled)"
    reports = [
        WorkerReport("w2", ClusterStatus.RUNNING, None, datetime(2026, 1, 1, 12, 3), None),
        WorkerReport(
            "w1", ClusterStatus.FAILED, oom, datetime(2026, 1, 1, 12), datetime(2026, 1, 1, 12, 1)
        ),
    ]
    lines = worker_table(reports, now=now).splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "RAN", "REASON"]
    assert lines[1].split() == ["w2", "running", "2m"]
    assert lines[2].split()[:3] == ["w1", "failed", "1m"] and lines[2].endswith("   " + oom)
    doc = worker_document(reports[1])
    assert doc["status"] == "FAILED" and doc["reason"] == oom
    assert doc["stop_time"].startswith("2026-01-01T12:01:00")


def test_the_json_document_has_no_tls_credentials() -> None:
    doc = cluster_document(report())
    assert doc["name"] == "c1" and doc["status"] == "RUNNING" and doc["cores"] == 7
    assert doc["start_time"].startswith("2026-01-01T12:00:00")
    assert "CERT" not in json.dumps(doc) and "KEY" not in json.dumps(doc)


def test_followed_logs_print_only_what_is_new() -> None:
    assert new_output("", "a\nb\n") == "a\nb\n"
    assert new_output("a\nb\n", "a\nb\nc\n") == "c\n"
    # The launcher keeps only the end: the old start is cut, a line says so.
    assert new_output("a\nb\nc\n", "[... 2 earlier bytes not kept ...]\nb\nc\nd\n") == "d\n"
    assert new_output("x\ny\n", "p\nq\n") == "p\nq\n"  # nothing in common
    assert new_output("a\nb\n", "a\nb\n") == ""


# -- the stored login ------------------------------------------------------------------------


def test_the_login_file_is_private(config_home: Path) -> None:
    path = save_login(StoredLogin("http://gw:1", "basic", "ann", "s=abc", 123.0))
    assert path == config_home / "flotilla" / "cli.json" == config_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_login() == StoredLogin("http://gw:1", "basic", "ann", "s=abc", 123.0)
    save_login(StoredLogin("http://gw:2", "basic"))  # replaced whole, still private
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_login() == StoredLogin("http://gw:2", "basic")
    assert [p.name for p in path.parent.iterdir()] == ["cli.json"]


def test_a_session_expires() -> None:
    login = StoredLogin("http://gw:1", "basic", "ann", "s=abc", expires=100.0)
    assert login.session(99.0) == "s=abc" and login.session(100.0) is None
    assert StoredLogin("http://gw:1", "basic", cookie="s=1").session(1e12) == "s=1"


def test_an_unreadable_login_file_is_one_error(
    config_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (config_home / "flotilla").mkdir(parents=True)
    (config_home / "flotilla" / "cli.json").write_text("{not json")
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flotilla: error: cannot read ") and err.count("\n") == 1


def test_no_address_is_one_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("flotilla: error: no gateway address") and err.count("\n") == 1


# -- against the RegistryService double --------------------------------------------------------


def test_login_stores_the_session_not_the_password(
    bare_gateway: FakeGateway,
    config_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bare_gateway.registry.password = "s3cret"
    monkeypatch.setenv("FLOTILLA_PASSWORD", "wrong")
    assert main(["login", "--address", bare_gateway.address, "--user", "ann"]) == 1
    err = capsys.readouterr().err
    assert "Authentication required" in err and err.count("\n") == 1
    assert not config_path().exists()

    monkeypatch.setenv("FLOTILLA_PASSWORD", "s3cret")
    assert main(["login", "--address", bare_gateway.address, "--user", "ann", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["user"] == "ann" and doc["session"] is True
    text = config_path().read_text()
    assert "s3cret" not in text
    stored = load_login()
    assert stored is not None and stored.cookie and stored.cookie.startswith("flotilla-session=")
    assert stored.expires is not None

    # Later commands send the session, not credentials.
    monkeypatch.delenv("FLOTILLA_PASSWORD")
    name = bare_gateway.registry.new_pending("ann")
    bare_gateway.registry.calls.clear()
    assert main(["list", "--json"]) == 0
    assert [c["name"] for c in json.loads(capsys.readouterr().out)] == [name]
    method, metadata = bare_gateway.registry.calls[-1]
    assert method == "ListClusters"
    assert metadata["cookie"] == stored.cookie and "authorization" not in metadata

    # A session the gateway no longer accepts says what to do.
    bare_gateway.registry.sessions.clear()
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert "run `flotilla login`" in err and err.count("\n") == 1


def test_errors_are_one_line_and_exit_1(
    bare_gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    address = ["--address", bare_gateway.address]
    assert main(["stop", "nope", *address]) == 1
    assert capsys.readouterr().err == "flotilla: error: Cluster nope not found\n"
    theirs = bare_gateway.registry.new_pending("someone-else")
    assert main(["stop", theirs, *address]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flotilla: error: User ") and "lacks permissions" in err
    assert err.count("\n") == 1


def test_an_unreachable_gateway_is_one_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--address", f"http://127.0.0.1:{free_port()}"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("flotilla: error: Gateway at ") and err.count("\n") == 1


def test_the_list_table_and_an_empty_list(
    bare_gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    address = ["--address", bare_gateway.address, "--auth", "basic"]
    assert main(["list", *address]) == 0
    assert capsys.readouterr().out == "No clusters\n"
    name = bare_gateway.registry.new_pending(getpass.getuser())
    assert main(["list", *address]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "STATUS", "WORKERS"]
    assert lines[1].split()[:3] == [name, "pending", "0/0"]


def test_scale_and_adapt_say_when_a_limit_granted_less(
    bare_gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    address = ["--address", bare_gateway.address]
    name = bare_gateway.registry.new_pending(getpass.getuser())
    bare_gateway.registry.clusters[name].status = 2  # RUNNING
    assert main(["scale", name, "2", *address]) == 0
    assert capsys.readouterr() == (f"Scaled cluster {name} to 2 workers\n", "")
    assert main(["scale", name, "5", "--json", *address]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["requested_workers"] == 3 and len(doc["warnings"]) == 1
    assert "exceed resource limit of 3 workers" in doc["warnings"][0]
    assert err == f"flotilla: warning: {doc['warnings'][0]}\n"

    assert main(["adapt", name, "--minimum", "1", "--maximum", "2", *address]) == 0
    assert capsys.readouterr() == (f"Cluster {name} adapts between 1 and 2 workers\n", "")
    assert bare_gateway.registry.clusters[name].adapt == (1, 2, True)
    assert main(["adapt", name, *address]) == 0
    assert capsys.readouterr().err == "flotilla: warning: Using `maximum=3` instead.\n"
    assert bare_gateway.registry.clusters[name].adapt == (None, None, True)


def test_logs_are_printed_under_a_header_per_process(
    bare_gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    address = ["--address", bare_gateway.address]
    name = bare_gateway.registry.new_pending(getpass.getuser())
    bare_gateway.registry.clusters[name].logs = {"scheduler": "s1\ns2\n", "worker-a": "w1"}
    assert main(["logs", name, *address]) == 0
    assert capsys.readouterr().out == "==> scheduler <==\ns1\ns2\n\n==> worker-a <==\nw1\n"
