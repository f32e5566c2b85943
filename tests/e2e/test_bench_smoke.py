"""``make bench`` in smoke mode: every scenario once, tiny (~10 s); the kubernetes section
(its own control plane and node agent) apart, marked k8s (~30 s).

CI does not run the benchmark itself (it takes minutes and wants a quiet machine);
this keeps every path of it working: both gateways start, every scenario produces
real (finite, positive) samples on Flotilla, the reference starts clusters and runs a
task, the simulation fills and measures, and the results are written as JSON and
Markdown.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / ".cache" / "bench-reference"
REFERENCE_YARN = REPO / ".cache" / "bench-reference-yarn"
K8S_BIN = Path(os.environ.get("FLOTILLA_K8S_BIN") or REPO / ".cache/k8s/v1.37.2/bin")

pytestmark = pytest.mark.timeout(900)


def _require(path: Path, what: str) -> None:
    if path.exists():
        return
    message = f"{what} not installed ({path}); `make test` installs it"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _real(values: list[Any]) -> bool:
    return bool(values) and all(
        isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in values
    )


def _client() -> Path:
    client = Path(
        os.environ.get("FLOTILLA_UPSTREAM_PYTHON", REPO / ".cache/upstream-client/bin/python")
    )
    _require(client, "the upstream dask-gateway client")
    return client


def test_bench_smoke(tmp_path: Path) -> None:
    client = _client()
    _require(REFERENCE / "bin" / "dask-gateway-server", "the reference dask-gateway-server")
    _require(REFERENCE_YARN / "bin" / "dask-gateway-server", "dask-gateway-server 2025.4.0")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--smoke",
            "--out",
            str(tmp_path),
            "--client-python",
            str(client),
            "--reference-venv",
            str(REFERENCE),
            "--reference-yarn-venv",
            str(REFERENCE_YARN),
            "--skip",
            "kubernetes",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["completed"] and data["meta"]["mode"] == "smoke"
    assert data["failures"] == [], data["failures"]

    # Every row has Flotilla samples; the reference runs the smoke's scenarios that
    # start its clusters (new_cluster, first_task), and its memory is read.
    rows = data["rows"]
    assert len(rows) >= 19, sorted(rows)
    for key, row in rows.items():
        assert _real(row["flotilla"]["samples"]), f"{key} on flotilla: {row['flotilla']}"
    compared = ["new_cluster_s", "stop_s", "first_task_s", "rss_idle", "rss_idle_at_end"]
    compared += ["yarn_new_cluster_s", "yarn_scale_up_s", "yarn_ready_s", "yarn_stop_s"]
    for key in compared:
        assert _real(rows[key]["reference"]["samples"]), f"{key} on reference"
        assert math.isfinite(rows[key]["ratio_of_medians"]), key
    # Times are times: a cluster cannot be ready in no time at all.
    for key in ("new_cluster_s", "first_task_s", "scale_up_s", "yarn_new_cluster_s"):
        assert min(rows[key]["flotilla"]["samples"]) > 0.01, key

    # Where each scale() spent its time, read from YARN's and the containers' logs: every
    # stage of a worker's start, on both gateways, in the order they happen.
    breakdown = data["extra"]["yarn_scale_breakdown"]
    for gateway in ("flotilla", "reference"):
        stages = breakdown[gateway]
        assert list(stages) == ["ALLOCATED", "ACQUIRED", "launched", "python", "registered"]
        medians = [statistics.median(seconds) for seconds in stages.values()]
        assert 0 < medians[0] and medians == sorted(medians), (gateway, stages)

    sizes = data["simulation"]["sizes"]
    assert sizes, "the simulation measured nothing"
    for size in sizes.values():
        assert _real(size["list_ms"]) and _real(size["propagation_ms"])
        assert size["rss_mib"]["envoy"] > 0 and size["rss_mib"]["registry"] > 0

    checks = {c["name"]: c for c in data["checks"]}
    for name in ("new_cluster() vs reference", "first task vs reference"):
        assert math.isfinite(checks[name]["value"]), checks[name]
    assert math.isfinite(checks["embedded stack idle RSS (MiB, Envoy included)"]["value"])
    # The YARN section starts its own YARN (and on a fresh clone resolves its jars first):
    # timed apart from the rest, which stays the minute it was.
    yarn_seconds = data["extra"]["stage_seconds"]["YARN: both gateways' YARN backends"]
    assert data["meta"]["duration_seconds"] - yarn_seconds < 60, data["meta"]
    assert yarn_seconds < 300, yarn_seconds
    page = (tmp_path / "results.md").read_text()
    assert "| cold new_cluster() | s |" in page and "Acceptance (issue 5)" in page


@pytest.mark.k8s
@pytest.mark.timeout(120)
def test_bench_kubernetes_smoke(tmp_path: Path) -> None:
    """The kubernetes section once, scale(2): both backends measured, and the breakdown of
    where a kubernetes step spent its time has every stage, in order."""
    client = _client()
    _require(REFERENCE / "bin" / "dask-gateway-server", "the reference dask-gateway-server")
    _require(K8S_BIN / "kube-apiserver", "the Kubernetes binaries (`make k8s`)")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--smoke",
            "--only",
            "kubernetes",
            "--out",
            str(tmp_path),
            "--client-python",
            str(client),
            "--reference-venv",
            str(REFERENCE),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        env={**os.environ, "FLOTILLA_K8S_BIN": str(K8S_BIN)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["completed"] and data["failures"] == [], data["failures"]
    samples = data["extra"]["kubernetes_samples"]
    for backend, metrics in (
        ("kubernetes", ("new_cluster_s", "stop_s", "stop_gone_s", "scale_up_s")),
        ("local", ("new_cluster_s", "stop_s", "scale_up_s")),
    ):
        for metric in metrics:
            assert _real(samples[backend].get(metric, [])), (backend, metric, samples)
    assert min(samples["kubernetes"]["scale_up_s"]) > 0.01
    found = data["extra"]["kubernetes_breakdown"]
    for step in ("new_cluster", "scale"):
        stages = found[step]
        assert list(stages) == ["created", "scheduled", "started", "running", "ready"], stages
        medians = [statistics.median(seconds) for seconds in stages.values()]
        assert 0 < medians[0] and medians == sorted(medians), (step, stages)
        per_pod = found[f"{step}_per_pod"]
        assert len(per_pod) == 4 and all(_real(v) for v in per_pod.values()), per_pod
    page = (tmp_path / "results.md").read_text()
    assert "## Kubernetes backend vs local backend" in page
    assert "| scale(2) until 2 workers connected | s |" in page
    # The section starts its own control plane and node agent; it stays cheap.
    seconds = data["extra"]["stage_seconds"][
        "Kubernetes: Flotilla's kubernetes backend next to its local one"
    ]
    assert seconds < 60, seconds
