"""Disk attribution from the engine's /system/df figures: pure logic, no engine."""

from __future__ import annotations

import asyncio

from thunder_env.backend import EngineDiskUsage
from thunder_env.diskusage import DiskMeter, SnapshotOwnership, account
from thunder_env.docker.snapshots import parse_system_df

OURS = {"thunder.namespace": "ns", "thunder.instance": "me"}

RAW = {
    "LayersSize": 1000,
    "Images": [
        {"Id": "sha256:base", "Size": 600, "SharedSize": 600, "Labels": None},
        {"Id": "sha256:snap1", "Size": 700, "SharedSize": 600, "Labels": {}},
        {"Id": "sha256:other", "Size": 50, "SharedSize": -1, "Labels": {}},
    ],
    "Containers": [
        {"Id": "c1", "SizeRw": 10, "SizeRootFs": 710, "Labels": {**OURS, "thunder.sandbox": "sb-1"}},
        {"Id": "c2", "SizeRw": 20, "SizeRootFs": 720, "Labels": {**OURS, "thunder.sandbox": "sb-2"}},
        {"Id": "c3", "SizeRw": 30, "SizeRootFs": 630, "Labels": {**OURS, "thunder.sandbox": "sb-warm"}},
        {"Id": "c4", "SizeRw": 99, "SizeRootFs": 699, "Labels": {**OURS, "thunder.instance": "another"}},
        {"Id": "c5", "SizeRw": 77, "Labels": None},
    ],
}


def test_parse_treats_missing_and_uncomputed_sizes_as_zero() -> None:
    usage = parse_system_df(RAW)
    assert [i.shared_size for i in usage.images] == [600, 600, 0]
    assert usage.containers[4].size_root_fs == 0
    assert usage.total_bytes == 1000 + 10 + 20 + 30 + 99 + 77


def test_account_splits_unique_and_shared_and_sums_per_program() -> None:
    report = account(
        parse_system_df(RAW),
        namespace="ns",
        instance="me",
        sandbox_programs={"sb-1": ["p1", "p2"], "sb-2": ["p1"]},
        snapshots=[
            SnapshotOwnership("snap-1", "sha256:snap1", frozenset({"p2"})),
            SnapshotOwnership("snap-gone", "sha256:missing", frozenset({"p1"})),
        ],
        measured_at=0.0,
    )
    sandboxes = {u.resource_id: (u.unique_bytes, u.shared_bytes) for u in report.sandboxes}
    assert sandboxes == {"sb-1": (10, 700), "sb-2": (20, 700), "sb-warm": (30, 600)}  # other instances excluded
    assert [(u.resource_id, u.unique_bytes, u.shared_bytes) for u in report.snapshots] == [("snap-1", 100, 600)]
    # A sandbox shared by two programs counts for both; a snapshot for every program holding it.
    assert report.programs == {"p1": 30, "p2": 110}
    assert report.managed_bytes == 10 + 20 + 30 + 100
    assert report.engine_bytes == 1000 + 10 + 20 + 30 + 99 + 77


class CountingEngine:
    """Stands in for the engine's /system/df only to count how often it is asked."""

    def __init__(self) -> None:
        self.calls = 0

    async def disk_usage(self) -> EngineDiskUsage:
        self.calls += 1
        await asyncio.sleep(0.01)
        return parse_system_df({"LayersSize": self.calls})


async def test_meter_caches_and_shares_one_request() -> None:
    engine = CountingEngine()
    now = [100.0]
    meter = DiskMeter(engine, cache_s=2.0, clock=lambda: now[0])  # type: ignore[arg-type]
    first = await asyncio.gather(*(meter.read() for _ in range(5)))
    assert engine.calls == 1 and {u.layers_size for u in first} == {1}
    now[0] += 1.0
    assert (await meter.read()).layers_size == 1  # within cache_s
    assert (await meter.read(max_age_s=0)).layers_size == 2  # asked fresh
    now[0] += 5.0
    assert (await meter.read()).layers_size == 3
    await meter.close()


def test_overruns_are_the_sandboxes_past_their_own_limit() -> None:
    from thunder_env.diskguard import find_overruns

    report = account(
        parse_system_df(RAW), namespace="ns", instance="me", sandbox_programs={}, snapshots=[], measured_at=0.0
    )
    # sb-1 wrote 10 (limit 10: at, not past); sb-2 wrote 20 > 15; sb-warm has no limit (not adopted).
    overruns = find_overruns(report, {"sb-1": 10, "sb-2": 15})
    assert [(o.sandbox_id, o.used_bytes, o.limit_bytes) for o in overruns] == [("sb-2", 20, 15)]
    assert "over its disk limit" in overruns[0].reason
