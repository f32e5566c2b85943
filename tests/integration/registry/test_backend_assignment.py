"""A registry offering several backends: users choose with an option or are mapped by
user and group, each launcher's watch sees only its own clusters, and a backend the
gateway does not offer is a 422."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from flotilla.registry.v1 import internal_pb2, internal_pb2_grpc
from flotilla_common.config import Deployment, load_config
from flotilla_common.grpcserver import internal_metadata
from flotilla_common.identity import IDENTITY_HEADER, Identity, sign_identity
from flotilla_registry.app import RegistryApp, StartupError
from flotilla_registry.crypto import generate_key

pytestmark = pytest.mark.integration

CONFIG = """
from flotilla_registry.options import Options, Select, String

c.Registry.backends = ["local", "slurm", "pbs"]
c.Registry.default_backend = "local"
c.Registry.backend_by_user = {"carol": "pbs"}
c.Registry.backend_by_group = {"hpc": "slurm"}

def handler(options):
    # An administrator's rule: anything labelled "legacy" goes to a backend not offered.
    return {"backend": "yarn"} if options.label == "legacy" else {}

c.Registry.cluster_options = Options(
    Select("backend", ["local", "slurm", "pbs"], label="Where to run"),
    String("label", default=""),
    handler=handler,
)
"""


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[RegistryApp]:
    config_file = tmp_path / "config.py"
    config_file.write_text(
        f"c.Deployment.state_dir = {str(tmp_path)!r}\n"
        'c.Deployment.registry_grpc_address = "127.0.0.1:0"\n'
        'c.Deployment.registry_http_address = "127.0.0.1:0"\n'
        f"c.Registry.db_encrypt_keys = [{generate_key()!r}]\n" + CONFIG
    )
    app = RegistryApp(load_config(config_file))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def test_users_land_on_their_backends(registry: RegistryApp) -> None:
    deployment = Deployment(config=registry.config)
    key = deployment.secret("identity_key")
    base = f"http://127.0.0.1:{registry.http_port}/api/v1"

    def headers(user: str, *groups: str) -> dict[str, str]:
        return {IDENTITY_HEADER: sign_identity(Identity(user, frozenset(groups)), key)}

    async def create(http: aiohttp.ClientSession, hdrs: dict[str, str], **options: Any) -> Any:
        async with http.post(
            f"{base}/clusters/", json={"cluster_options": options}, headers=hdrs
        ) as resp:
            return resp.status, await resp.json()

    async with (
        aiohttp.ClientSession() as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{registry.grpc_port}") as channel,
    ):
        # Each user sees their mapped backend as the option's default.
        for hdrs, expected in (
            (headers("alice", "hpc"), "slurm"),
            (headers("carol", "hpc"), "pbs"),
            (headers("bob"), "local"),
        ):
            async with http.get(f"{base}/options", headers=hdrs) as resp:
                spec = {f["field"]: f for f in (await resp.json())["cluster_options"]}
            assert spec["backend"]["default"] == expected
            assert spec["backend"]["spec"]["options"] == ["local", "slurm", "pbs"]

        made = {
            "alice-default": await create(http, headers("alice", "hpc")),
            "alice-local": await create(http, headers("alice", "hpc"), backend="local"),
            "carol-default": await create(http, headers("carol", "hpc")),
            "bob-pbs": await create(http, headers("bob"), backend="pbs"),
        }
        assert {k: status for k, (status, _) in made.items()} == dict.fromkeys(made, 201)
        names = {k: body["name"] for k, (_, body) in made.items()}

        status, body = await create(http, headers("bob"), backend="yarn")
        assert status == 422 and "'yarn' is not a valid option for backend" in body["error"]
        status, body = await create(http, headers("bob"), label="legacy")
        assert status == 422
        assert (
            body["error"] == "Backend 'yarn' is not offered; choose from ['local', 'slurm', 'pbs']"
        )

        # Every launcher is given exactly the clusters of its backend.
        launcher = internal_pb2_grpc.LauncherServiceStub(channel)
        metadata = internal_metadata(deployment.secret("internal_token"))
        seen = {}
        for backend in ("local", "slurm", "pbs"):
            watch = launcher.WatchClusters(
                internal_pb2.WatchClustersRequest(backend=backend), metadata=metadata
            )
            first = await watch.read()
            seen[backend] = sorted(c.name for c in first.clusters)
            assert {c.backend for c in first.clusters} <= {backend}
            watch.cancel()
        assert seen == {
            "local": [names["alice-local"]],
            "slurm": sorted([names["alice-default"]]),
            "pbs": sorted([names["carol-default"], names["bob-pbs"]]),
        }
        # The stored options say what was chosen.
        async with http.get(
            f"{base}/clusters/{names['alice-default']}", headers=headers("alice", "hpc")
        ) as resp:
            assert (await resp.json())["options"]["backend"] == "slurm"


async def test_a_mapping_to_a_backend_not_offered_stops_the_registry(tmp_path: Path) -> None:
    config_file = tmp_path / "config.py"
    config_file.write_text(
        f"c.Deployment.state_dir = {str(tmp_path)!r}\n"
        'c.Deployment.registry_grpc_address = "127.0.0.1:0"\n'
        'c.Deployment.registry_http_address = "127.0.0.1:0"\n'
        'c.Registry.backend_by_user = {"alice": "slurm"}\n'
    )
    app = RegistryApp(load_config(config_file))
    with pytest.raises(StartupError, match="backend_by_user names backend 'slurm'"):
        await app.start()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("c.ClusterConfig.worker_cores = 0", r"backend 'local': .*worker_cores"),
        ('c.SlurmClusterConfig.partition = "two words"', r"backend 'slurm': partition must be"),
    ],
)
async def test_a_bad_cluster_configuration_stops_the_registry(
    tmp_path: Path, setting: str, message: str
) -> None:
    """Not a failed request for every user later: the operator hears it at start."""
    config_file = tmp_path / "config.py"
    config_file.write_text(
        f"c.Deployment.state_dir = {str(tmp_path)!r}\n"
        'c.Deployment.registry_grpc_address = "127.0.0.1:0"\n'
        'c.Deployment.registry_http_address = "127.0.0.1:0"\n'
        'c.Registry.backends = ["local", "slurm"]\n'
        f"{setting}\n"
    )
    app = RegistryApp(load_config(config_file))
    with pytest.raises(StartupError, match=message):
        await app.start()
