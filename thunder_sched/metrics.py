"""Prometheus metrics of one app, read from the scheduler at scrape time (own registry, no globals)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from thunder_sched.policy import PauseReason
from thunder_sched.scheduler import Scheduler


class SchedulerCollector(Collector):
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        s = self._scheduler
        snap = s.snapshot()
        programs = GaugeMetricFamily("thunder_programs", "Live programs by status", labels=["status"])
        programs.add_metric(["active"], snap.active)
        programs.add_metric(["paused"], snap.paused)
        yield programs
        yield GaugeMetricFamily(
            "thunder_programs_waiting", "Paused programs with a request held in the proxy", value=snap.waiting
        )
        pauses = CounterMetricFamily("thunder_pauses", "Programs paused, by reason", labels=["reason"])
        for reason in PauseReason:
            pauses.add_metric([reason.value], s.stats.pauses.get(reason.value, 0))
        yield pauses
        yield CounterMetricFamily(
            "thunder_flaps", "Programs restored within flap_window_s of being paused", value=s.stats.flaps
        )
        tool_pauses = CounterMetricFamily(
            "thunder_tool_pauses_judged",
            "Pauses for a long tool, by outcome: premature (the tool ended within tool_pause_s) or right",
            labels=["outcome"],
        )
        tool_pauses.add_metric(["premature"], s.stats.tool_pauses_premature)
        tool_pauses.add_metric(["right"], s.stats.tool_pauses_right)
        yield tool_pauses
        yield CounterMetricFamily(
            "thunder_late_restores",
            "Restores whose request had waited more than late_restore_s",
            value=s.stats.late_restores,
        )
        yield CounterMetricFamily("thunder_reschedules", "Policy rounds run", value=s.stats.reschedules)
        yield CounterMetricFamily("thunder_restores", "Paused programs restored", value=s.stats.restores)
        yield CounterMetricFamily("thunder_admissions", "New programs admitted", value=s.stats.admissions)
        yield CounterMetricFamily(
            "thunder_floor_restores",
            "Restores and admissions past the memory limit because too few requests ran (work conservation)",
            value=s.stats.floor_restores,
        )
        terminated = CounterMetricFamily("thunder_programs_terminated", "Programs ended", labels=["reason"])
        for reason, count in sorted(s.stats.terminated.items()):
            terminated.add_metric([reason], count)
        yield terminated
        yield CounterMetricFamily("thunder_kv_lost", "Program caches lost with a backend", value=s.stats.kv_lost)
        capacity = GaugeMetricFamily("thunder_backend_capacity_tokens", "KV pool in tokens", labels=["backend"])
        used = GaugeMetricFamily(
            "thunder_backend_used_tokens", "Weighted tokens of active programs (thrashing check)", labels=["backend"]
        )
        healthy = GaugeMetricFamily("thunder_backend_healthy", "1 if the backend is up", labels=["backend"])
        tier = GaugeMetricFamily(
            "thunder_backend_host_tier_tokens", "Host (CPU) KV tier in tokens; 0 without a tier", labels=["backend"]
        )
        tier_used = GaugeMetricFamily(
            "thunder_backend_host_tier_used_tokens",
            "Tokens of paused programs accounted in the host KV tier",
            labels=["backend"],
        )
        for url, cap in snap.backend_capacity.items():
            capacity.add_metric([url], cap)
            used.add_metric([url], snap.backend_used[url])
            healthy.add_metric([url], 1.0 if snap.backend_healthy[url] else 0.0)
            tier.add_metric([url], snap.backend_host_tier[url])
            tier_used.add_metric([url], snap.backend_host_tier_used[url])
        yield capacity
        yield used
        yield healthy
        yield tier
        yield tier_used


def make_registry(scheduler: Scheduler) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SchedulerCollector(scheduler))
    return registry
