"""The fault-injecting backend wrapper itself: faults fire where chosen, and only there."""

from __future__ import annotations

import asyncio

import pytest

from thunder_env.errors import BackendError
from thunder_env.testing.faults import FaultyBackend


class Recorder:
    """Stands in for the wrapped backend: the wrapper is what is tested here."""

    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []
        self.label = "inner"

    async def destroy(self, sandbox_id: str) -> None:
        self.done.append(("destroy", sandbox_id))

    async def is_running(self, sandbox_id: str) -> bool:
        self.done.append(("is_running", sandbox_id))
        return True

    def agent_socket(self, sandbox_id: str) -> str:
        return "sock-" + sandbox_id


async def test_error_on_a_chosen_call_number_only() -> None:
    inner = Recorder()
    faults = FaultyBackend(inner)
    faults.fail("destroy", BackendError("engine said no"), on_call=2)
    await faults.destroy("a")
    with pytest.raises(BackendError, match="engine said no"):
        await faults.destroy("b")
    await faults.destroy("c")
    assert inner.done == [("destroy", "a"), ("destroy", "c")]  # the faulted call never reached the backend
    assert faults.calls["destroy"] == 3 and faults.injected == 1


async def test_predicate_and_times_bound_the_fault() -> None:
    inner = Recorder()
    faults = FaultyBackend(inner)
    faults.fail("destroy", BackendError("x"), when=lambda args, kwargs: args[0] == "b", times=1)
    await faults.destroy("a")
    with pytest.raises(BackendError):
        await faults.destroy("b")
    await faults.destroy("b")  # fired once already
    assert inner.done == [("destroy", "a"), ("destroy", "b")]


async def test_after_runs_the_real_call_then_fails() -> None:
    inner = Recorder()
    faults = FaultyBackend(inner)
    faults.fail("destroy", BackendError("answer lost"), after=True)
    with pytest.raises(BackendError):
        await faults.destroy("a")
    assert inner.done == [("destroy", "a")]


async def test_hang_waits_until_cancelled_and_clear_restores() -> None:
    inner = Recorder()
    faults = FaultyBackend(inner)
    faults.hang("is_running")
    call = asyncio.create_task(faults.is_running("a"))
    await asyncio.sleep(0.05)
    assert not call.done()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    faults.clear()
    assert await faults.is_running("a") is True
    assert inner.done == [("is_running", "a")]


async def test_delay_then_the_real_call() -> None:
    inner = Recorder()
    faults = FaultyBackend(inner)
    fault = faults.delay("is_running", 0.01)
    assert await faults.is_running("a") is True
    assert fault.fired == 1 and inner.done == [("is_running", "a")]


async def test_swallow_answers_without_reaching_the_backend() -> None:
    inner = Recorder()
    faults = FaultyBackend(inner)
    faults.swallow("is_running", result=False, times=1)
    assert await faults.is_running("a") is False
    assert await faults.is_running("a") is True
    assert inner.done == [("is_running", "a")]


def test_sync_members_pass_through_and_unknown_methods_are_refused() -> None:
    faults = FaultyBackend(Recorder())
    assert faults.label == "inner" and faults.agent_socket("a") == "sock-a"
    with pytest.raises(ValueError, match="no async method"):
        faults.fail("agent_socket", BackendError("x"))
    with pytest.raises(TypeError, match="unknown fault options"):
        faults.hang("destroy", on_cal=1)


async def test_an_engine_call_past_its_time_limit_is_reported_stuck() -> None:
    from thunder_env.docker.errors import engine_errors
    from thunder_env.errors import EngineStuckError

    with pytest.raises(EngineStuckError, match="did not answer in time"):
        async with engine_errors("sb-1"):
            raise TimeoutError  # what aiohttp raises when the client's total timeout passes
