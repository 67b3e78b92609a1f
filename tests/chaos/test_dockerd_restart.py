"""The faults that stop the whole engine, for real: a dockerd restart and a SIGKILLed manager, in a small
chaos run that must leak nothing and crash nothing.

Its own tier (`make test` runs it alone, after the Docker and MCP tiers): a dockerd restart stops every
container on the host, so it never runs beside other tests.
"""

from __future__ import annotations

import argparse

from thunder_env.bench import chaos

from ..engine import require_engine


async def test_a_dockerd_restart_and_a_killed_manager_leak_nothing() -> None:
    await require_engine()
    parser = argparse.ArgumentParser()
    chaos.add_arguments(parser)
    args = parser.parse_args(["--lifecycles", "12", "--worker-sandboxes", "2", "--seed", "11"])
    args.quick = False
    result = await chaos.run(args)
    leaks = {key: value for key, value in result.items() if key.startswith("leaked_")}
    assert leaks == dict.fromkeys(leaks, 0) and len(leaks) == 5, result
    assert result["server_crashes"] == 0 and result["stuck_lifecycles"] == 0, result.get("crash_samples")
    faults = result["faults_injected"]
    assert faults["dockerd_restart"] == 1 and faults["manager_sigkill"] == 1, faults  # type: ignore[index]
    # The sandboxes running during the restart are reported dead to their programs, leases revoked.
    assert result["witnesses"] > 0, result
    assert result["witnesses_reported_dead"] == result["witnesses"] == result["witness_leases_revoked"], result
    assert result["worker_left"] > 0 and result["worker_left_after_reconcile"] == 0, result  # type: ignore[operator]
