"""Which configuration class a backend's clusters use, and the keys both sides share."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest
from flotilla_common import clusterconfig
from flotilla_common.clusterconfig import (
    CORE_KEYS,
    ClusterConfig,
    PBSClusterConfig,
    SlurmClusterConfig,
    YarnClusterConfig,
    batch_name,
    config_class_for,
)
from flotilla_launcher.backends import base
from flotilla_registry.clusterconfig import ResolvedClusterConfig, resolve_cluster_config
from traitlets.config import Config


class _ImageClusterConfig(ClusterConfig):
    """A third-party backend's options."""

    image = batch_name("Image", "c.ImageBackend.image")


@dataclasses.dataclass
class _EntryPoint:
    name: str
    target: Any
    value: str = "tests:thing"

    def load(self) -> Any:
        return self.target


@pytest.fixture(autouse=True)
def _fresh_lookup() -> Iterator[None]:
    config_class_for.cache_clear()
    yield
    config_class_for.cache_clear()


def _register(monkeypatch: pytest.MonkeyPatch, name: str, target: Any) -> None:
    def fake(*, group: str, name: str) -> list[_EntryPoint]:
        assert group == "flotilla.cluster_configs"
        return [e for e in [_EntryPoint(registered, target)] if e.name == name]

    registered = name
    monkeypatch.setattr(clusterconfig, "entry_points", fake)


def test_an_unknown_backend_gets_the_plain_class() -> None:
    assert config_class_for("local") is ClusterConfig
    assert config_class_for("no-such-backend") is ClusterConfig


def test_the_batch_backends_classes_are_found_through_their_entry_points() -> None:
    assert config_class_for("slurm") is SlurmClusterConfig
    assert config_class_for("pbs") is PBSClusterConfig
    assert config_class_for("yarn") is YarnClusterConfig


def test_yarn_settings_carry_to_the_launcher() -> None:
    files = {
        "env": {"source": "hdfs:///envs/py.tar.gz", "type": "archive", "visibility": "public"},
        "data.csv": "/srv/data.csv",
    }
    resolved = resolve_cluster_config(
        Config(),
        {"queue": "science", "localize_files": files, "worker_setup": "source env/bin/activate"},
        config_class=YarnClusterConfig,
    )
    extra = base.ClusterConfig.from_json(resolved.to_json()).extra
    assert extra["queue"] == "science"
    assert extra["localize_files"] == files
    assert extra["worker_setup"] == "source env/bin/activate"
    assert extra["scheduler_setup"] == ""


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a/b": "/x"}, "not a plain file name"),
        ({"env": ""}, "must be a path"),
        ({"env": {"type": "archive"}}, "must be a path"),
    ],
)
def test_bad_localize_files_are_refused_naming_the_entry(
    files: dict[str, Any], message: str
) -> None:
    with pytest.raises(Exception, match=message):
        YarnClusterConfig(localize_files=files)


def test_a_registered_backend_gets_its_class_and_its_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _register(monkeypatch, "image", _ImageClusterConfig)
    assert config_class_for("image") is _ImageClusterConfig
    assert config_class_for("local") is ClusterConfig
    resolved = resolve_cluster_config(
        Config(), {"image": "py311"}, config_class=config_class_for("image")
    )
    assert dict(resolved.extra) == {"image": "py311"}
    # ...which the launcher reads as the backend's own key.
    assert base.ClusterConfig.from_json(resolved.to_json()).extra["image"] == "py311"


def test_an_entry_point_that_is_not_a_cluster_config_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _register(monkeypatch, "bad", dict)
    with pytest.raises(TypeError, match="backend 'bad'"):
        config_class_for("bad")


def test_the_core_keys_are_the_options_of_the_base_class() -> None:
    assert set(CORE_KEYS) == set(ClusterConfig.class_trait_names(config=True))
    assert len(set(CORE_KEYS)) == len(CORE_KEYS)
    stored = {f.name for f in dataclasses.fields(ResolvedClusterConfig)} - {"extra"}
    assert stored == set(CORE_KEYS)


def test_registry_and_launcher_agree_on_the_keys_and_defaults() -> None:
    launcher_keys = {f.name for f in dataclasses.fields(base.ClusterConfig)} - {"extra"}
    assert launcher_keys <= set(CORE_KEYS)
    # What the registry stores for a cluster with no overrides, the launcher reads back
    # as its own defaults, with nothing of the core left over in ``extra``.
    resolved = resolve_cluster_config(Config(), {}, config_class=SlurmClusterConfig)
    parsed = base.ClusterConfig.from_json(resolved.to_json())
    assert parsed == dataclasses.replace(base.ClusterConfig(), extra=parsed.extra)
    assert set(parsed.extra) == (set(CORE_KEYS) - launcher_keys) | {
        "account",
        "partition",
        "qos",
        "reservation",
    }
    assert json.loads(resolved.to_json())["partition"] == ""
