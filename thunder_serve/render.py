"""Rendering a status document for a terminal (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .status import StatusReport


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def render_status(console: Console, report: StatusReport) -> None:
    for backend in report.backends:
        state = "[green]up[/]" if backend.healthy else "[red]down[/]"
        tier = (
            f"; host KV tier {backend.host_tier_used_tokens:,} / {backend.host_tier_tokens:,} tokens"
            if backend.host_tier_tokens
            else ""
        )
        console.print(
            f"backend {backend.url} {state}: {backend.used_tokens:,.0f} / {backend.capacity_tokens:,} KV tokens in use"
            + tier
        )
    c, r = report.counters, report.resources
    console.print(
        f"pauses {c.pauses}, restores {c.restores}, environments prepared ahead {c.prepared_ready_at_acquire} "
        f"(of {c.prepared_requested}), ended by scheduler {c.ended_by_scheduler}, by MCP {c.ended_by_env}"
    )
    console.print(
        f"holding {r.sandboxes} sandboxes, {r.containers} containers, {r.snapshots} snapshots, {r.ports} ports "
        f"(namespace '{report.namespace}', up {report.uptime_s:.0f} s)"
    )
    if not report.programs:
        console.print("no live programs")
        return
    table = Table(title=f"{len(report.programs)} programs")
    numbers = ("tokens", "disk", "steps", "pauses/restores")
    for column in ("program", "status", "phase", "tokens", "backend", "sandboxes", "disk", "steps", "pauses/restores"):
        table.add_column(column, justify="right" if column in numbers else "left")
    for p in report.programs:
        table.add_row(
            p.program_id,
            p.status,
            p.phase,
            f"{p.tokens:,}",
            p.backend or "-",
            ", ".join(p.sandboxes) or "-",
            human_bytes(p.disk_bytes),
            str(p.steps),
            f"{p.pauses}/{p.restores}",
        )
    console.print(table)
