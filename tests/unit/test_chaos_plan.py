"""The chaos benchmark's pure parts: its arguments, and the fault plan drawn from a seed."""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

import pytest

from thunder_env.bench import chaos
from thunder_env.errors import BackendError, SandboxNotFoundError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    chaos.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_and_flags() -> None:
    args = _args()
    assert (args.lifecycles, args.concurrency, args.seed, args.no_dockerd_restart) == (500, 8, 7, False)
    args = _args("--lifecycles", "6", "--no-dockerd-restart", "--seed", "3")
    assert (args.lifecycles, args.no_dockerd_restart, args.seed) == (6, True, 3)


def test_the_plan_is_a_function_of_the_seed() -> None:
    assert chaos.plan_lifecycles(11, 50) == chaos.plan_lifecycles(11, 50)
    assert chaos.plan_lifecycles(11, 50) != chaos.plan_lifecycles(12, 50)
    assert chaos.plan_lifecycles(11, 20) == chaos.plan_lifecycles(11, 50)[:20]  # a prefix: --quick is the start


def test_a_full_plan_holds_every_kind_of_program_fault() -> None:
    plans = chaos.plan_lifecycles(7, 500)
    endings = Counter(plan.ending for plan in plans)
    snapshots = Counter(plan.snapshot for plan in plans)
    assert set(endings) == {"clean", "mid_call", "abandoned"} and endings["clean"] > 250
    assert set(snapshots) == {"none", "fork", "cancelled"}
    assert any(plan.cancel_acquire_after_s is not None for plan in plans)
    assert any(plan.cancel_exec for plan in plans)
    assert any(plan.network == "internal" and plan.expose_port for plan in plans)
    assert all(1 <= plan.execs <= 3 for plan in plans)


@pytest.mark.parametrize("count", [1, 2, 6, 80, 500])
def test_the_kill_comes_before_the_restart_and_both_within_the_run(count: int) -> None:
    kill_at, restart_at = chaos.milestones(count)
    assert 1 <= kill_at < restart_at
    assert kill_at <= count


async def test_typed_errors_are_counted_and_anything_else_is_a_crash() -> None:
    tally = chaos.Tally()

    async def fails(exc: Exception) -> None:
        raise exc

    assert await tally.call(fails(SandboxNotFoundError("sb-1"))) is None
    assert await tally.call(fails(BackendError("x"))) is None
    assert await tally.call(fails(KeyError("oops"))) is None
    assert tally.errors == {"SandboxNotFoundError": 1, "BackendError": 1}
    assert tally.crashes == ["KeyError: 'oops'"]


async def test_the_network_gate_waits_for_its_users_and_holds_new_ones() -> None:
    gate = chaos.NetworkGate()
    order: list[str] = []
    async with gate.shared():
        closing = asyncio.create_task(_alone(gate, order))
        await asyncio.sleep(0.01)
        assert not closing.done()  # waits for the shared user
        order.append("user done")
    late = asyncio.create_task(_shared(gate, order))
    await asyncio.gather(closing, late)
    assert order == ["user done", "alone", "late user"]


async def _alone(gate: chaos.NetworkGate, order: list[str]) -> None:
    async with gate.alone():
        await asyncio.sleep(0.01)
        order.append("alone")


async def _shared(gate: chaos.NetworkGate, order: list[str]) -> None:
    async with gate.shared():
        order.append("late user")
