"""A backend wrapper that injects faults (errors, hangs, delays) at chosen calls of a real backend.

``FaultyBackend(DockerBackend())`` behaves like the backend it wraps until told otherwise:
``faults.swallow("destroy")`` answers without doing anything,
``faults.fail("destroy", BackendError("boom"), on_call=2)`` makes the second ``destroy`` raise,
``faults.hang("destroy")`` makes every ``destroy`` wait forever (until cancelled), and
``faults.delay("exec", 0.5, when=lambda args, kwargs: args[0] == sid)`` slows one sandbox's execs.
With ``after=True`` the real call runs first and the fault hits its answer (the engine did the work,
the caller never heard). Composition, not subclassing: any backend, any async method.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

Predicate = Callable[[tuple[Any, ...], dict[str, Any]], bool]
FaultAction = Literal["error", "hang", "delay", "swallow"]


@dataclass(eq=False, slots=True)
class Fault:
    method: str
    action: FaultAction
    error: BaseException | None = None
    delay_s: float = 0.0
    result: Any = None  # what a swallowed call returns
    on_calls: frozenset[int] | None = None  # 1-based numbers of the method's calls; None: any call
    when: Predicate | None = None
    times: int | None = None  # fires at most this often (None: no bound)
    after: bool = False  # run the real call first, then fault
    fired: int = 0

    def matches(self, call_number: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.on_calls is not None and call_number not in self.on_calls:
            return False
        return self.when is None or self.when(args, kwargs)


class FaultyBackend:
    """Wraps a backend; every async method of it can be made to fail, hang or lag."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()  # calls made per method, faulted or not
        self.injected = 0  # faults that fired
        self._faults: list[Fault] = []

    # ------------------------------------------------------------------ choosing faults

    def fail(self, method: str, error: BaseException, **where: Any) -> Fault:
        return self._add(Fault(method, "error", error=error, **_where(where)))

    def hang(self, method: str, **where: Any) -> Fault:
        return self._add(Fault(method, "hang", **_where(where)))

    def delay(self, method: str, seconds: float, **where: Any) -> Fault:
        return self._add(Fault(method, "delay", delay_s=seconds, **_where(where)))

    def swallow(self, method: str, result: Any = None, **where: Any) -> Fault:
        """The call answers ``result`` without reaching the backend (an answer for work never done)."""
        return self._add(Fault(method, "swallow", result=result, **_where(where)))

    def remove(self, fault: Fault) -> None:
        self._faults.remove(fault)

    def clear(self) -> None:
        self._faults.clear()

    # ------------------------------------------------------------------ delegation

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute  # properties, counters, sync helpers: the real thing

        async def faulty(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            fault = self._pick(name, self.calls[name], args, kwargs)
            if fault is None:
                return await attribute(*args, **kwargs)
            if fault.action == "swallow":
                return fault.result
            if fault.after:
                result = await attribute(*args, **kwargs)
                await self._fire(fault)
                return result
            await self._fire(fault)
            return await attribute(*args, **kwargs)

        return faulty

    def _add(self, fault: Fault) -> Fault:
        if not inspect.iscoroutinefunction(getattr(self.inner, fault.method, None)):
            raise ValueError(f"{type(self.inner).__name__} has no async method {fault.method!r}")
        self._faults.append(fault)
        return fault

    def _pick(self, name: str, number: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Fault | None:
        for fault in self._faults:
            if fault.method == name and fault.matches(number, args, kwargs):
                fault.fired += 1
                self.injected += 1
                return fault
        return None

    @staticmethod
    async def _fire(fault: Fault) -> None:
        if fault.action == "hang":
            await asyncio.get_running_loop().create_future()  # until cancelled: a wedged engine
        if fault.action == "delay":
            await asyncio.sleep(fault.delay_s)
            return
        assert fault.error is not None
        raise fault.error


def _where(where: dict[str, Any]) -> dict[str, Any]:
    unknown = set(where) - {"on_call", "when", "times", "after"}
    if unknown:
        raise TypeError(f"unknown fault options {sorted(unknown)}")
    on_call: int | Collection[int] | None = where.get("on_call")
    calls = None if on_call is None else frozenset([on_call] if isinstance(on_call, int) else on_call)
    return {
        "on_calls": calls, "when": where.get("when"), "times": where.get("times"), "after": where.get("after", False)
    }
