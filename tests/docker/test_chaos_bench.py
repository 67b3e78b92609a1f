"""The chaos benchmark's own check, on a tiny run: faults, a SIGKILLed manager, and nothing leaked.

The dockerd restart is left out here (``--no-dockerd-restart``): it stops every container on the
host, so only the benchmark runs it, never the test suite.
"""

from __future__ import annotations

import argparse

from thunder_env.bench import chaos

from ..engine import require_engine


async def test_a_tiny_chaos_run_leaks_nothing_and_crashes_nothing() -> None:
    await require_engine()
    parser = argparse.ArgumentParser()
    chaos.add_arguments(parser)
    args = parser.parse_args(["--lifecycles", "6", "--no-dockerd-restart", "--worker-sandboxes", "2", "--seed", "5"])
    args.quick = False
    figures = chaos.run(args)
    result = await figures
    leaks = {key: value for key, value in result.items() if key.startswith("leaked_")}
    assert leaks == dict.fromkeys(leaks, 0) and len(leaks) == 5, result
    assert result["server_crashes"] == 0 and result["stuck_lifecycles"] == 0, result.get("crash_samples")
    assert result["lifecycles"] == 6 and result["faults_injected"]["manager_sigkill"] == 1  # type: ignore[index]
    assert result["worker_left"] > 0 and result["worker_left_after_reconcile"] == 0, result  # type: ignore[operator]
