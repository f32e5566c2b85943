"""A Python environment packed with venv-pack, as docs/hadoop.md tells sites to make one.

The archive holds what a dask-gateway-server site's environment holds (dask, distributed
and dask-gateway, nothing of Flotilla's) and is built once per set of pins into
``.cache/packed-env/<digest>/environment.tar.gz``. venv-pack keeps the link to the base
interpreter (/usr/bin/python3.11 here, as on the guide's nodes), so the archive works
where that interpreter is at the same path.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
CACHE = PROJECT / ".cache" / "packed-env"
UV = PROJECT / ".cache" / "tools" / "bin" / "uv"
#: What the environment holds: the versions the tests' clients run (Dask compares
#: these between client, scheduler and workers).
MATCHED = ("dask", "distributed", "cloudpickle", "msgpack", "toolz", "tornado")
PINS = (*(f"{name}=={version(name)}" for name in MATCHED), "dask-gateway==2026.3.0")
VENV_PACK = "venv-pack==0.2.0"


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {done.stderr.strip()[-2000:]}")


def packed_environment() -> Path:
    """The archive (built if missing); ``environment/bin/activate`` activates it."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    digest = hashlib.sha256("\n".join((str(base), VENV_PACK, *PINS)).encode()).hexdigest()[:12]
    home = CACHE / digest
    archive = home / "environment.tar.gz"
    if archive.exists():
        return archive
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if archive.exists():
            return archive
        shutil.rmtree(home, ignore_errors=True)
        env, tools = home / "environment", home / "tools"
        for venv in (env, tools):
            _run([str(UV), "venv", "--quiet", "--python", str(base), str(venv)])
        _run([str(UV), "pip", "install", "--quiet", "--python", str(env / "bin/python"), *PINS])
        _run(
            [str(UV), "pip", "install", "--quiet", "--python", str(tools / "bin/python"), VENV_PACK]
        )
        partial = home / "partial.tar.gz"  # venv-pack picks the format by the name
        _run([str(tools / "bin/venv-pack"), "-p", str(env), "-o", str(partial), "--force"])
        partial.chmod(0o644)  # public visibility: every user's containers may read it
        partial.rename(archive)
        shutil.rmtree(env)
    return archive
