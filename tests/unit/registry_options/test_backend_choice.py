"""How a new cluster's backend is chosen when a gateway offers several."""

from __future__ import annotations

import pytest
from flotilla_common.identity import Identity
from flotilla_registry.backends import BackendChoice
from flotilla_registry.errors import InvalidRequest
from flotilla_registry.options import Integer, Options, Select

CHOICE = BackendChoice(
    backends=("local", "slurm", "pbs"),
    default_backend="local",
    by_user={"carol": "pbs"},
    by_group={"hpc": "slurm", "astro": "pbs"},
)
ALICE = Identity("alice", frozenset({"astro", "hpc"}))
BOB = Identity("bob")
CAROL = Identity("carol", frozenset({"hpc"}))


def test_mapping_user_then_groups_in_order_then_default() -> None:
    assert CHOICE.mapped(CAROL) == "pbs"  # the user entry beats her group
    assert CHOICE.mapped(ALICE) == "slurm"  # "hpc" comes first in backend_by_group
    assert CHOICE.mapped(BOB) == "local"


def test_precedence_handler_then_option_then_mapping() -> None:
    assert CHOICE.choose({"backend": "pbs", "x": 1}, {"backend": "local"}, ALICE) == "pbs"
    assert CHOICE.choose({}, {"backend": "local"}, ALICE) == "local"
    assert CHOICE.choose({}, {"worker_cores": 1}, ALICE) == "slurm"
    overrides = {"backend": "pbs", "worker_cores": 2}
    CHOICE.choose(overrides, {}, BOB)
    assert overrides == {"worker_cores": 2}  # popped: not a cluster configuration key


@pytest.mark.parametrize(
    ("overrides", "options"), [({"backend": "yarn"}, {}), ({}, {"backend": 3})]
)
def test_a_backend_not_offered_is_a_422(
    overrides: dict[str, object], options: dict[str, object]
) -> None:
    with pytest.raises(InvalidRequest) as err:
        CHOICE.choose(overrides, options, BOB)
    assert err.value.http_status == 422
    assert "is not offered; choose from ['local', 'slurm', 'pbs']" in str(err.value)


def test_option_default_is_each_users_mapped_backend() -> None:
    options = Options(
        Integer("worker_cores", default=1, min=1, max=4),
        Select("backend", ["local", "slurm", "pbs"]),
    )
    for identity, expected in ((ALICE, "slurm"), (CAROL, "pbs"), (BOB, "local")):
        offered = CHOICE.offer(options, identity)
        spec = {f["field"]: f["default"] for f in offered.get_specification()}
        assert spec == {"worker_cores": 1, "backend": expected}
        assert offered.parse_options({})["backend"] == expected
    # The declaration itself is never changed.
    assert options.fields[1].default == "local"
    # A mapped backend that is not among the choices leaves the default alone.
    narrow = Options(Select("backend", ["local", "slurm"]))
    assert CHOICE.offer(narrow, CAROL).fields[0].default == "local"


def test_mappings_must_name_offered_backends() -> None:
    with pytest.raises(ValueError, match=r"backend_by_group names backend 'yarn'"):
        BackendChoice(backends=("local",), by_group={"g": "yarn"})
    with pytest.raises(ValueError, match=r"default_backend names backend 'slurm'"):
        BackendChoice(backends=("local",), default_backend="slurm")
