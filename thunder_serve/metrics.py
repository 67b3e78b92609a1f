"""`/metrics` of the combined server: the scheduler's metrics plus the environment side, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mcp_server import ProgramRegistry
from thunder_env import EnvManager
from thunder_sched.metrics import make_registry
from thunder_sched.scheduler import Scheduler

from .link import ProgramLink


class EnvCollector(Collector):
    def __init__(self, manager: EnvManager, registry: ProgramRegistry, link: ProgramLink) -> None:
        self._manager = manager
        self._registry = registry
        self._link = link

    def collect(self) -> Iterator[Metric]:
        sandboxes = self._manager.sandboxes()
        yield GaugeMetricFamily("thunder_env_sandboxes", "Sandboxes held by programs", value=len(sandboxes))
        yield GaugeMetricFamily(
            "thunder_mcp_programs", "Programs with state in the MCP server", value=len(self._registry.programs())
        )
        prepared = self._manager.provisioner.preparation_stats()
        family = CounterMetricFamily(
            "thunder_env_prepared", "Environments prepared ahead of use, by outcome", labels=["outcome"]
        )
        family.add_metric(["requested"], prepared.requested)
        family.add_metric(["ready_at_acquire"], prepared.ready_at_acquire)
        family.add_metric(["waited_at_acquire"], prepared.waited_at_acquire)
        family.add_metric(["failed"], prepared.failed)
        family.add_metric(["expired"], prepared.expired)
        yield family
        yield CounterMetricFamily(
            "thunder_prepares_on_restore", "Preparations started for a program about to be restored",
            value=self._link.stats.prepares,
        )  # fmt: skip
        ends = CounterMetricFamily(
            "thunder_program_ends", "Programs ended, by the side that ended them first", labels=["side"]
        )
        ends.add_metric(["scheduler"], self._link.stats.ended_by_scheduler)
        ends.add_metric(["env"], self._link.stats.ended_by_env)
        yield ends


def combined_registry(
    scheduler: Scheduler, manager: EnvManager, registry: ProgramRegistry, link: ProgramLink
) -> CollectorRegistry:
    metrics = make_registry(scheduler)
    metrics.register(EnvCollector(manager, registry, link))
    return metrics
