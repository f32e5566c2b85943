"""Summaries of benchmark samples: medians, p90, ratios and the acceptance table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Check", "Row", "kube_table", "markdown", "p90", "summary"]


def p90(samples: Sequence[float]) -> float:
    """The 90th percentile (linear interpolation between closest ranks)."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    if len(ordered) == 1:
        return ordered[0]
    rank = 0.9 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(samples: Sequence[float]) -> dict[str, float]:
    """n, median, p90, min and max of ``samples`` (NaN when empty)."""
    if not samples:
        return {"n": 0, "median": math.nan, "p90": math.nan, "min": math.nan, "max": math.nan}
    return {
        "n": len(samples),
        "median": statistics.median(samples),
        "p90": p90(samples),
        "min": min(samples),
        "max": max(samples),
    }


@dataclass(frozen=True)
class Row:
    """One line of the comparison table: a metric measured on both gateways."""

    metric: str
    unit: str
    flotilla: Sequence[float]
    reference: Sequence[float]
    #: "lower" when smaller is better (times), "higher" for throughputs.
    better: str = "lower"

    def ratio(self) -> float:
        f, r = summary(self.flotilla)["median"], summary(self.reference)["median"]
        return f / r if r else math.nan

    def as_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "unit": self.unit,
            "better": self.better,
            "flotilla": {**summary(self.flotilla), "samples": list(self.flotilla)},
            "reference": {**summary(self.reference), "samples": list(self.reference)},
            "ratio_of_medians": self.ratio(),
        }


@dataclass(frozen=True)
class Check:
    """One acceptance criterion of issue 5 and whether this run meets it."""

    name: str
    value: float
    op: str  # "<=" or ">="
    limit: float

    @property
    def passed(self) -> bool:
        if math.isnan(self.value):
            return False
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "op": self.op,
            "limit": self.limit,
            "passed": self.passed,
        }


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def markdown(
    rows: Sequence[Row],
    checks: Sequence[Check],
    single: Sequence[tuple[str, str, Sequence[float]]],
    meta: Mapping[str, Any],
    sections: Sequence[str] = (),
) -> str:
    """The results page: context, the comparison table, Flotilla-only rows, acceptance,
    then ``sections`` (more Markdown)."""
    lines = [
        f"# Flotilla vs dask-gateway-server {meta.get('reference_version', '')}".rstrip(),
        "",
        f"- mode: {meta.get('mode')}, run at {meta.get('started_at')}, "
        f"took {meta.get('duration_seconds', math.nan):.0f} s",
        f"- machine: {meta.get('cpus')} CPUs, load average at start "
        f"{meta.get('load_start')}, at end {meta.get('load_end')}",
        f"- failed samples: {meta.get('failed_samples', 0)} (see results.json)",
        f"- {meta.get('note', '')}".rstrip(),
        "",
        "Medians and p90 of every sample; ratio = Flotilla median / reference median.",
        "",
        "| metric | unit | Flotilla median | Flotilla p90 | reference median | "
        "reference p90 | ratio | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        f, r = summary(row.flotilla), summary(row.reference)
        lines.append(
            f"| {row.metric} | {row.unit} | {_fmt(f['median'])} | {_fmt(f['p90'])} | "
            f"{_fmt(r['median'])} | {_fmt(r['p90'])} | {_fmt(row.ratio())} | "
            f"{f['n']}/{r['n']} |"
        )
    if single:
        lines += [
            "",
            "Flotilla only (control-plane simulation and per-hop detail):",
            "",
            "| metric | unit | median | p90 | n |",
            "|---|---|---|---|---|",
        ]
        for metric, unit, samples in single:
            s = summary(samples)
            lines.append(
                f"| {metric} | {unit} | {_fmt(s['median'])} | {_fmt(s['p90'])} | {s['n']} |"
            )
    lines += ["", "Acceptance (issue 5):", "", "| criterion | value | target | met |"]
    lines.append("|---|---|---|---|")
    for check in checks:
        lines.append(
            f"| {check.name} | {_fmt(check.value)} | {check.op} {_fmt(check.limit)} | "
            f"{'yes' if check.passed else 'NO'} |"
        )
    return "\n".join([*lines, *sections]) + "\n"


def kube_table(
    rows: Sequence[Row],
    stages: Sequence[tuple[str, Sequence[float]]],
    per_pod: Sequence[tuple[str, Sequence[float]]],
) -> str:
    """The kubernetes section: ``rows`` compare the kubernetes backend (``Row.flotilla``)
    with the local one (``Row.reference``); ``stages`` and ``per_pod`` (label, seconds)
    say where a kubernetes step spent its time."""
    lines = [
        "",
        "## Kubernetes backend vs local backend (Flotilla, same machine)",
        "",
        "Pods run by the test-only node agent (tests/k8s_node_agent.py), not a kubelet: "
        "no image pull, no container runtime. The local backend forks schedulers and workers "
        "from its fork server (distributed already imported); every pod starts a fresh "
        "Python. Ratio = kubernetes median / local median.",
        "",
        "| metric | unit | kubernetes median | kubernetes p90 | local median | local p90 "
        "| ratio | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        k, loc = summary(row.flotilla), summary(row.reference)
        lines.append(
            f"| {row.metric} | {row.unit} | {_fmt(k['median'])} | {_fmt(k['p90'])} | "
            f"{_fmt(loc['median'])} | {_fmt(loc['p90'])} | {_fmt(row.ratio())} | "
            f"{k['n']}/{loc['n']} |"
        )
    lines += [
        "",
        "Where the time goes (kubernetes; seconds after the client's call, median):",
        "",
        "| until | s | n |",
        "|---|---|---|",
    ]
    for label, samples in stages:
        s = summary(samples)
        lines.append(f"| {label} | {_fmt(s['median'])} | {s['n']} |")
    lines += ["", "Per pod, each stage after the one before (median):", "", "| stage | s | n |"]
    lines.append("|---|---|---|")
    for label, samples in per_pod:
        s = summary(samples)
        lines.append(f"| {label} | {_fmt(s['median'])} | {s['n']} |")
    return "\n".join(lines)
