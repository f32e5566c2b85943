"""Quota resolution (user, then the most generous group, then the default), refusals that
name the quota and the numbers, and how many workers a quota leaves."""

from __future__ import annotations

import re

import pytest
from flotilla_registry.quotas import (
    Quota,
    Quotas,
    Shape,
    Usage,
    clamp_message,
    quota_refusal,
    workers_allowed,
)
from traitlets import TraitError

GiB = 2**30


def test_user_then_most_generous_group_then_default() -> None:
    quotas = Quotas(
        default={"max_cores": 100, "max_memory": "400 G", "max_clusters": 2},
        groups={
            "big": {"max_cores": 500},
            "bigger": {"max_cores": 800},
            "free": {"max_cores": None},
        },
        users={"carol": {"max_clusters": 10}},
    )
    assert quotas.for_user("alice", []) == Quota(2, 100, 400 * GiB, None)
    assert quotas.for_user("bob", ["big", "bigger"]).max_cores == 800
    assert quotas.for_user("bob", ["big", "free"]).max_cores is None  # None: no limit
    carol = quotas.for_user("carol", ["big"])
    assert (carol.max_clusters, carol.max_cores) == (10, 500)
    assert not Quotas().for_user("anyone", []).limited


@pytest.mark.parametrize(
    "bad",
    [{"max_gpus": 1}, {"max_cores": -1}, {"max_cores": "many"}, {"max_memory": "4 GB"}, [1]],
)
def test_bad_quotas_are_refused_with_the_key(bad: object) -> None:
    with pytest.raises(TraitError, match="Quotas"):
        Quotas(default=bad)
    with pytest.raises(TraitError, match=re.escape("c.Quotas.groups['g']")):
        Quotas(groups={"g": bad})


def test_a_refusal_names_the_quota_the_limit_and_the_use() -> None:
    quota = Quota(max_cores=100, max_memory=400 * GiB)
    shape = Shape(scheduler_cores=4, scheduler_memory=GiB, worker_cores=16, worker_memory=64 * GiB)
    used = shape.usage(6)  # 100 cores
    refusal = quota_refusal("alice", quota, used, shape.usage(0))
    assert refusal is not None and refusal.http_status == 409
    assert refusal.message == (
        "Cannot create the cluster: it would exceed quota max_cores of 100 cores for user "
        "alice (in use: 100 cores; the new cluster needs 4 cores)"
    )
    assert quota_refusal("alice", quota, shape.usage(5), shape.usage(0)) is None
    memory = quota_refusal(
        "alice", Quota(max_memory=400 * GiB), Usage(memory=399.5 * GiB), shape.usage(0)
    )
    assert memory is not None and "max_memory of 400 GiB" in memory.message
    assert "in use: 399.5 GiB" in memory.message
    clusters = quota_refusal("alice", Quota(max_clusters=1), Usage(clusters=1), shape.usage(0))
    assert clusters is not None and clusters.message.endswith("(in use: 1 clusters)")


def test_workers_allowed_by_the_tightest_quota() -> None:
    shape = Shape(scheduler_cores=4, scheduler_memory=GiB, worker_cores=16, worker_memory=64 * GiB)
    others = shape.usage(3)  # 52 cores, 193 GiB
    quota = Quota(max_cores=100, max_memory=400 * GiB)
    allowed, binding, in_use = workers_allowed(10, quota, others, shape)
    # Cores: (100 - 56) // 16 = 2; memory: (400 - 194) // 64 = 3.
    assert (allowed, binding, in_use) == (2, "max_cores", "56 cores")
    assert clamp_message(10, allowed, quota, binding, in_use) == (
        "Scale request of 10 workers would exceed quota max_cores of 100 cores (in use by "
        "your other clusters and this scheduler: 56 cores). Scaling to 2 instead."
    )
    assert workers_allowed(2, quota, others, shape) == (2, None, "")
    assert workers_allowed(5, Quota(max_workers=4), Usage(workers=3), shape)[:2] == (
        1,
        "max_workers",
    )
    # Nothing left: 0, never negative.
    assert workers_allowed(3, Quota(max_cores=10), Usage(cores=50), shape)[0] == 0
