"""The embedded runner starts one launcher per offered backend."""

from __future__ import annotations

from pathlib import Path

from flotilla_common.embedded import EmbeddedStack


def launchers(tmp_path: Path, config: str) -> list[list[str]]:
    path = tmp_path / "config.py"
    path.write_text(f"c.Deployment.state_dir = {str(tmp_path)!r}\n" + config)
    stack = EmbeddedStack(str(path))
    return [argv[1:3] for name, argv in stack._argv() if name.startswith("launcher-")]


def test_one_launcher_per_registry_backend(tmp_path: Path) -> None:
    assert launchers(tmp_path, "") == [["--backend", "local"]]
    assert launchers(tmp_path, 'c.Registry.backends = ["local", "slurm", "pbs"]\n') == [
        ["--backend", "local"],
        ["--backend", "slurm"],
        ["--backend", "pbs"],
    ]


def test_launchers_can_be_chosen(tmp_path: Path) -> None:
    # E.g. the Slurm launcher runs on a login node, not beside the other services.
    config = 'c.Registry.backends = ["local", "slurm"]\nc.Embedded.launchers = ["local"]\n'
    assert launchers(tmp_path, config) == [["--backend", "local"]]
