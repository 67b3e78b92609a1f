"""One error root: every component's root error derives from `ThunderError` (thunder_common.errors), and every
exception class a component defines derives from its component's root, so `except ThunderError` catches
whatever Thunder raises on purpose and `except SchedulerError` whatever the scheduler does. Found by importing
every module of the packages and walking the classes each defines."""

from __future__ import annotations

import importlib
import pkgutil

from mcp_server.errors import McpServerError
from thunder_common.errors import ThunderError
from thunder_env.errors import EnvError
from thunder_sched.errors import SchedulerError
from thunder_serve.errors import CombinedError

ROOTS: dict[str, type[BaseException]] = {
    "thunder_common": ThunderError,
    "thunder_env": EnvError,
    "mcp_server": McpServerError,
    "thunder_sched": SchedulerError,
    "thunder_serve": CombinedError,
}

# Exceptions that are signals inside a component, never an error shown to anyone, with why they stay apart.
SIGNALS = {
    # The client hung up: the app answers 499. Under SchedulerError, the Messages routes' `except
    # SchedulerError` would turn it into an error body.
    "thunder_sched.proxy.ClientGoneError",
}


def defined_exceptions(package: str) -> list[type[BaseException]]:
    """Every exception class defined (not imported) by a module of the package (`__main__` modules are CLIs)."""
    found: list[type[BaseException]] = []
    root = importlib.import_module(package)
    names = [package, *(m.name for m in pkgutil.walk_packages(root.__path__, package + "."))]
    for name in names:
        if name.rsplit(".", 1)[-1] == "__main__":
            continue
        module = importlib.import_module(name)
        found += [
            value
            for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == name
        ]
    return found


def test_each_component_root_is_a_thunder_error() -> None:
    for package, root in ROOTS.items():
        assert issubclass(root, ThunderError), package
        assert root.__module__.split(".")[0] == package  # the root lives in its own component


def test_each_typed_error_derives_from_its_component_root() -> None:
    outside: list[str] = []
    seen = 0
    for package, root in ROOTS.items():
        for cls in defined_exceptions(package):
            seen += 1
            name = f"{cls.__module__}.{cls.__qualname__}"
            if not issubclass(cls, root) and name not in SIGNALS:
                outside.append(f"{name} does not derive from {root.__name__}")
    assert not outside, "\n".join(outside)
    assert seen > 50  # the walk found the components' errors


def test_a_signal_listed_apart_still_exists() -> None:
    defined = {f"{c.__module__}.{c.__qualname__}" for package in ROOTS for c in defined_exceptions(package)}
    assert SIGNALS <= defined, SIGNALS - defined
