"""ClusterConfig: admin defaults, overrides, config_json, limit arithmetic, clamp texts."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from flotilla_common.identity import Identity
from flotilla_registry.clusterconfig import (
    WORKERS_CEILING,
    ClusterConfig,
    PBSClusterConfig,
    ResolvedClusterConfig,
    SlurmClusterConfig,
    clamp_adapt,
    clamp_scale,
    config_class_for,
    resolve_cluster_config,
)
from flotilla_registry.options import Integer, Mapping, Options, OptionsError, Select
from traitlets import Unicode
from traitlets.config import Config

GiB = 2**30


def admin(**values: Any) -> Config:
    config = Config()
    for key, value in values.items():
        setattr(config.ClusterConfig, key, value)
    return config


# --- defaults and config_json ---------------------------------------------------------------


def test_defaults_serialise_to_the_internals_document() -> None:
    resolved = resolve_cluster_config(Config(), {})
    text = resolved.to_json()
    assert json.loads(text) == {
        "scheduler_cmd": ["dask", "scheduler"],
        "worker_cmd": ["dask", "worker"],
        "scheduler_preload": "flotilla.scheduler_preload",
        "environment": {},
        "worker_cores": 1,
        "worker_threads": 1,
        "worker_memory": 2147483648,
        "scheduler_cores": 1,
        "scheduler_memory": 2147483648,
        "adaptive_period": 3.0,
        "idle_timeout": 0.0,
        "heartbeat_period": 15.0,
        "heartbeat_timeout": 30.0,
        "busy_timeout": 3600.0,
        "cluster_max_workers": None,
        "cluster_max_cores": None,
        "cluster_max_memory": None,
        "cluster_start_timeout": 60.0,
        "worker_start_timeout": 60.0,
        "worker_start_failure_limit": 3,
        "max_lifetime": 0.0,
        "no_client_timeout": 0.0,
    }
    # Same key order as docs/internals.md.
    assert list(json.loads(text))[:3] == ["scheduler_cmd", "worker_cmd", "scheduler_preload"]
    assert resolved == ResolvedClusterConfig()
    assert resolved.max_workers == WORKERS_CEILING


def test_every_config_trait_has_help() -> None:
    traits = ClusterConfig.class_traits(config=True)
    assert set(traits) >= {"worker_memory", "cluster_max_memory", "idle_timeout"}
    for name, trait in traits.items():
        assert trait.help, name


def test_admin_values_then_overrides() -> None:
    config = admin(
        worker_cores=2,
        worker_memory="4 G",
        environment={"SITE": "x", "A": "admin"},
        idle_timeout=600,
        scheduler_cmd="/opt/bin/dask-scheduler",
    )
    resolved = resolve_cluster_config(
        config, {"worker_memory": "1.5 G", "environment": {"A": "user"}, "worker_threads": 3}
    )
    assert resolved.worker_cores == 2
    assert resolved.worker_threads == 3
    assert resolved.worker_memory == 3 * 2**29
    # An override replaces the whole value (as traitlets does), it does not merge dicts.
    assert dict(resolved.environment) == {"A": "user"}
    assert resolved.idle_timeout == 600.0
    assert resolved.scheduler_cmd == ("/opt/bin/dask-scheduler",)
    assert json.loads(resolved.to_json())["scheduler_cmd"] == ["/opt/bin/dask-scheduler"]


def test_worker_threads_follow_worker_cores() -> None:
    assert resolve_cluster_config(Config(), {"worker_cores": 4}).worker_threads == 4
    assert resolve_cluster_config(admin(worker_threads=2), {"worker_cores": 4}).worker_threads == 2


def test_single_string_command_is_not_split() -> None:
    resolved = resolve_cluster_config(Config(), {"worker_cmd": "dask worker --foo"})
    assert resolved.worker_cmd == ("dask worker --foo",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2**31, 2**31),
        ("2 G", 2 * GiB),
        ("512 M", 512 * 2**20),
        ("1 T", 2**40),
        (1.5 * GiB, 3 * 2**29),
    ],
)
def test_memory_overrides(value: Any, expected: int) -> None:
    resolved = resolve_cluster_config(Config(), {"worker_memory": value, "scheduler_memory": value})
    assert resolved.worker_memory == expected
    assert resolved.scheduler_memory == expected


def test_resolved_config_is_frozen() -> None:
    resolved = resolve_cluster_config(admin(environment={"A": "1"}), {})
    with pytest.raises(AttributeError):
        resolved.worker_cores = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        resolved.environment["B"] = "2"  # type: ignore[index]


def test_json_round_trip() -> None:
    resolved = resolve_cluster_config(
        admin(cluster_max_memory="16 G", environment={"A": "1"}), {"worker_cores": 2}
    )
    assert ResolvedClusterConfig.from_json(resolved.to_json()) == resolved
    with pytest.raises(ValueError):
        ResolvedClusterConfig.from_json("[]")


def test_unknown_admin_keys_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        resolve_cluster_config(admin(worker_corse=2), {})
    assert "worker_corse" in caplog.text


def test_invalid_admin_value_raises_trait_error() -> None:
    from traitlets import TraitError

    with pytest.raises(TraitError):
        resolve_cluster_config(admin(worker_cores=0), {})


# --- override validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"image": "x"}, "Unknown cluster configuration field 'image'"),
        ({"b": 1, "a": 2}, "Unknown cluster configuration fields 'a', 'b'"),
        ({"config": {}}, "Unknown cluster configuration field 'config'"),
        ({"worker_cores": "2"}, "'worker_cores'"),
        ({"worker_cores": True}, "'worker_cores'"),
        ({"worker_cores": 0}, "'worker_cores'"),
        ({"worker_memory": "lots"}, "worker_memory"),
        ({"worker_memory": "2 GB"}, "worker_memory"),
        ({"worker_memory": 0}, "worker_memory"),
        ({"scheduler_memory": -1}, "scheduler_memory"),
        ({"environment": {"A": 1}}, "'environment'"),
        ({"environment": ["A=1"]}, "'environment'"),
        ({"environment": {"": "x"}}, "environment variable names"),
        ({"environment": {"A=B": "x"}}, "'A=B'"),
        ({"environment": {"A\0": "x"}}, "environment variable names"),
        ({"environment": {"A": "x\0y"}}, "environment variable A must not contain NUL"),
        ({"idle_timeout": 10**400}, "Invalid value for idle_timeout"),
        ({"worker_memory": "9" * 400 + ".5 G"}, "worker_memory"),
        ({"scheduler_cmd": []}, "'scheduler_cmd'"),
        ({"worker_cmd": [1]}, "'worker_cmd'"),
        ({"adaptive_period": 0}, "adaptive_period"),
        ({"heartbeat_period": -1.0}, "heartbeat_period"),
        ({"idle_timeout": -5}, "'idle_timeout'"),
        ({"idle_timeout": float("nan")}, "idle_timeout"),
        ({"cluster_max_workers": -1}, "'cluster_max_workers'"),
        ({"cluster_start_timeout": 0}, "cluster_start_timeout"),
        ({"worker_start_timeout": -1.0}, "worker_start_timeout"),
        ({"heartbeat_timeout": 0}, "heartbeat_timeout"),
        ({"worker_start_failure_limit": -1}, "'worker_start_failure_limit'"),
        ({"worker_start_failure_limit": True}, "'worker_start_failure_limit'"),
        ({"max_lifetime": -1}, "'max_lifetime'"),
        ({"max_lifetime": float("inf")}, "max_lifetime must be a finite number"),
        ({"no_client_timeout": -0.5}, "'no_client_timeout'"),
        (
            {"heartbeat_period": 10, "heartbeat_timeout": 10},
            "heartbeat_timeout (10 s) must exceed heartbeat_period (10 s)",
        ),
    ],
)
def test_invalid_overrides_name_the_field(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(OptionsError) as info:
        resolve_cluster_config(Config(), overrides)
    assert fragment in str(info.value)


def test_timeouts_are_per_cluster_and_the_heartbeat_timeout_follows_the_period() -> None:
    config = admin(cluster_start_timeout=120, worker_start_failure_limit=5)
    resolved = resolve_cluster_config(config, {"heartbeat_period": 2, "worker_start_timeout": 9})
    assert resolved.cluster_start_timeout == 120.0
    assert resolved.worker_start_failure_limit == 5
    assert resolved.worker_start_timeout == 9.0
    assert resolved.heartbeat_timeout == 4.0  # twice the period when not set
    explicit = resolve_cluster_config(config, {"heartbeat_timeout": 47.5})
    assert explicit.heartbeat_timeout == 47.5
    assert ResolvedClusterConfig.from_json(explicit.to_json()) == explicit


def test_overrides_must_be_a_mapping() -> None:
    with pytest.raises(OptionsError, match="must be a dict, got 'list'"):
        resolve_cluster_config(Config(), [])  # type: ignore[arg-type]


class ImageClusterConfig(ClusterConfig):
    image = Unicode("daskgateway/dask-gateway:latest", help="Container image.", config=True)


def test_subclass_traits_are_overridable_and_serialised() -> None:
    config = admin(worker_cores=2)
    resolved = resolve_cluster_config(
        config, {"image": "custom:1"}, config_class=ImageClusterConfig
    )
    assert resolved.worker_cores == 2  # c.ClusterConfig applies to subclasses
    assert dict(resolved.extra) == {"image": "custom:1"}
    data = json.loads(resolved.to_json())
    assert list(data)[-1] == "image" and data["image"] == "custom:1"
    assert ResolvedClusterConfig.from_json(resolved.to_json()) == resolved


def test_batch_backends_have_their_own_cluster_fields() -> None:
    """Where a cluster's jobs run is per cluster on Slurm and PBS (upstream's
    SlurmClusterConfig / PBSClusterConfig): admin defaults, then the handler's choice."""
    assert config_class_for("slurm") is SlurmClusterConfig
    assert config_class_for("pbs") is PBSClusterConfig
    assert config_class_for("local") is ClusterConfig
    config = admin(worker_cores=2)
    config.SlurmClusterConfig.account = "proj42"
    resolved = resolve_cluster_config(
        config, {"partition": "gpu", "qos": "debug-qos"}, config_class=SlurmClusterConfig
    )
    assert resolved.worker_cores == 2
    assert dict(resolved.extra) == {
        "account": "proj42",
        "partition": "gpu",
        "qos": "debug-qos",
        "reservation": "",
    }
    pbs = resolve_cluster_config(
        Config(), {"queue": "workq@server1"}, config_class=PBSClusterConfig
    )
    assert dict(pbs.extra) == {"account": "", "queue": "workq@server1"}
    # The same field on a backend that has no such thing is unknown, not ignored.
    with pytest.raises(OptionsError, match="Unknown cluster configuration field 'partition'"):
        resolve_cluster_config(Config(), {"partition": "gpu"})


@pytest.mark.parametrize(
    "value",
    ["gpu\n#PBS -q other", "-x", "two words", "a;b", ".hidden", "x" * 129, "é", 7],
)
def test_batch_names_that_could_escape_are_refused(value: object) -> None:
    field = "queue" if isinstance(value, str) and "PBS" in value else "partition"
    config_class = PBSClusterConfig if field == "queue" else SlurmClusterConfig
    with pytest.raises(OptionsError, match=field):
        resolve_cluster_config(Config(), {field: value}, config_class=config_class)


# --- limits ---------------------------------------------------------------------------------


def test_scheduler_alone_exceeding_cores_limit() -> None:
    with pytest.raises(OptionsError) as info:
        resolve_cluster_config(admin(cluster_max_cores=2), {"scheduler_cores": 3})
    assert str(info.value) == "Scheduler cores request of 3 exceeds cluster cores limit of 2"
    with pytest.raises(OptionsError, match=r"limit of 2\.5$"):
        resolve_cluster_config(admin(cluster_max_cores=2.5), {"scheduler_cores": 3})


def test_scheduler_alone_exceeding_memory_limit() -> None:
    with pytest.raises(OptionsError) as info:
        resolve_cluster_config(admin(cluster_max_memory="1 G"), {})
    assert str(info.value) == (
        "Scheduler memory request of 2147483648 exceeds cluster memory limit of 1073741824"
    )


def test_scheduler_exactly_at_limits_is_allowed() -> None:
    resolved = resolve_cluster_config(admin(cluster_max_cores=1, cluster_max_memory="2 G"), {})
    assert resolved.max_workers == 0


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, WORKERS_CEILING),  # no limit set: the registry's ceiling still holds
        ({"cluster_max_workers": 5}, 5),
        ({"cluster_max_workers": 10 * WORKERS_CEILING}, WORKERS_CEILING),
        ({"cluster_max_workers": 0}, 0),
        # (8 - 1) // 2 = 3
        ({"cluster_max_cores": 8, "worker_cores": 2}, 3),
        ({"cluster_max_cores": 8.5, "worker_cores": 2}, 3),
        # (16 G - 2 G) // 4 G = 3
        ({"cluster_max_memory": "16 G", "worker_memory": "4 G"}, 3),
        ({"cluster_max_memory": "16 G", "scheduler_memory": "4 G", "worker_memory": "4 G"}, 3),
        ({"cluster_max_memory": "17 G", "scheduler_memory": "1 G", "worker_memory": "4 G"}, 4),
        # The tightest limit wins.
        ({"cluster_max_workers": 10, "cluster_max_cores": 5, "cluster_max_memory": "8 G"}, 3),
        ({"cluster_max_workers": 2, "cluster_max_cores": 5, "cluster_max_memory": "8 G"}, 2),
        ({"cluster_max_cores": 100, "cluster_max_memory": "4 G", "worker_memory": "512 M"}, 4),
    ],
)
def test_max_workers_arithmetic(values: dict[str, Any], expected: int) -> None:
    assert resolve_cluster_config(admin(**values), {}).max_workers == expected


def test_max_workers_follows_user_overrides() -> None:
    config = admin(cluster_max_cores=9)
    assert resolve_cluster_config(config, {}).max_workers == 8
    assert resolve_cluster_config(config, {"worker_cores": 4}).max_workers == 2


def test_max_workers_from_stored_json() -> None:
    stored = resolve_cluster_config(admin(cluster_max_workers=3), {}).to_json()
    assert ResolvedClusterConfig.from_json(stored).max_workers == 3


# --- clamping -------------------------------------------------------------------------------


def test_clamp_scale() -> None:
    assert clamp_scale(5, None) == (5, None)
    assert clamp_scale(3, 3) == (3, None)
    assert clamp_scale(0, 3) == (0, None)
    assert clamp_scale(5, 3) == (
        3,
        "Scale request of 5 workers would exceed resource limit of 3 workers. "
        "Scaling to 3 instead.",
    )


@pytest.mark.parametrize(
    ("request_", "limit", "expected"),
    [
        ((None, None), None, (None, None, None)),
        ((1, 100), None, (1, 100, None)),
        ((None, None), 3, (0, 3, None)),
        ((1, 3), 3, (1, 3, None)),
        (
            (1, 10),
            3,
            (
                1,
                3,
                "Adapt with `maximum=10, minimum=1` workers would exceed resource limit of "
                "3 workers. Using `maximum=3, minimum=1` instead.",
            ),
        ),
        # Upstream test texts: adapt(maximum=3) and adapt(minimum=3) with a limit of 2.
        (
            (None, 3),
            2,
            (
                0,
                2,
                "Adapt with `maximum=3, minimum=0` workers would exceed resource limit of "
                "2 workers. Using `maximum=2, minimum=0` instead.",
            ),
        ),
        (
            (3, None),
            2,
            (
                2,
                2,
                "Adapt with `maximum=2, minimum=3` workers would exceed resource limit of "
                "2 workers. Using `maximum=2, minimum=2` instead.",
            ),
        ),
    ],
)
def test_clamp_adapt(
    request_: tuple[int | None, int | None],
    limit: int | None,
    expected: tuple[int | None, int | None, str | None],
) -> None:
    minimum, maximum = request_
    assert clamp_adapt(minimum, maximum, limit) == expected


# --- options to config, end to end ----------------------------------------------------------


async def test_options_handler_to_resolved_config() -> None:
    def handler(options: Any, user: Any) -> dict[str, Any]:
        return {
            "worker_cores": options.worker_cores,
            "worker_memory": f"{options.worker_memory} G",
            "environment": {**options.environment, "USERNAME_FROM_HANDLER": user.name},
        }

    options = Options(
        Integer("worker_cores", default=1, min=1, max=4),
        Select("worker_memory", [("small", 1), ("large", 4)]),
        Mapping("environment"),
        handler=handler,
    )
    parsed = options.parse_options({"worker_cores": 2, "environment": {"FOO": "bar"}})
    overrides = await options.get_configuration(parsed, Identity(user="alice"))
    resolved = resolve_cluster_config(admin(cluster_max_cores=9), overrides)
    assert resolved.worker_threads == 2
    assert resolved.worker_memory == GiB
    assert dict(resolved.environment) == {"FOO": "bar", "USERNAME_FROM_HANDLER": "alice"}
    assert resolved.max_workers == 4


async def test_options_without_handler_must_target_config_fields() -> None:
    options = Options(Select("profile", ["small"]))
    overrides = await options.get_configuration(options.parse_options({}), Identity(user="a"))
    with pytest.raises(OptionsError, match="Unknown cluster configuration field 'profile'"):
        resolve_cluster_config(Config(), overrides)
