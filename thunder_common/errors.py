"""The root of every error Thunder raises on purpose; each component's own root derives from it."""

from __future__ import annotations


class ThunderError(Exception):
    """Root of every error Thunder raises on purpose.

    Components derive their own root from it (``thunder_env.errors.EnvError``, ``mcp_server.errors.
    McpServerError``, ``thunder_sched.errors.SchedulerError``, ``thunder_serve.errors.CombinedError``); where a
    builtin fits, a subclass also inherits it (``KeyError``, ``TimeoutError``...) so callers can catch either.
    """
