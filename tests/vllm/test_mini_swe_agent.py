"""mini-swe-agent (its own DefaultAgent, prompts and LitellmTextbasedModel) against `thunder serve` in-process:
the model behind /v1 with one program id, vLLM's structured outputs keeping the random model's replies valid
actions, the commands in a Thunder sandbox over MCP. Checks that every step went through Thunder and that the
episode's end reclaimed everything on both sides."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from thunder_common.serving import serving
from thunder_env.events import ToolEvent
from thunder_sched.policy import Status
from thunder_serve.app import open_combined
from thunder_serve.demo import local_config

from ..engine import engine_leftovers, require_engine

pytestmark = pytest.mark.vllm

TASK = "Find out which Python version is installed in this environment."
# What each allowed command must print in the thunder/python sandbox (Debian + python3).
EXPECTED = {
    "python3 --version": "Python 3.",
    "echo $((6*7))": "42",
    "cat /etc/os-release": "Debian",
    "ls -la /": "workspace",
}
STEPS = 3


@pytest.fixture
def quiet_offline_mswea(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """mini-swe-agent and litellm read these at import: no banner, no config in $HOME, no fetch of litellm's
    cost map from the network (it is not reachable here)."""
    monkeypatch.setenv("MSWEA_SILENT_STARTUP", "1")
    monkeypatch.setenv("MSWEA_GLOBAL_CONFIG_DIR", str(tmp_path / "mswea"))
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")


async def test_a_mini_swe_agent_episode_runs_through_thunder(cpu_vllm, quiet_offline_mswea: None) -> None:
    from thunder_serve.clients.minisweagent_adapter import run_episode

    await require_engine()
    namespace = "test-mswea-" + secrets.token_hex(3)
    config = local_config([cpu_vllm.url], namespace=namespace)
    events: list[ToolEvent] = []

    async def record(event: ToolEvent) -> None:
        events.append(event)

    async with open_combined(config) as combined, serving(combined.app) as running:
        combined.manager.add_listener(record)
        episode = await asyncio.to_thread(
            run_episode, running.url, config.http.token, TASK, commands=list(EXPECTED), step_limit=STEPS
        )
        # The agent took every step with a valid action (no format error), and each command did its job.
        assert episode.exit_status == "LimitsExceeded" and episode.model_calls == STEPS
        assert len(episode.actions) == len(episode.outputs) == STEPS and set(episode.actions) <= set(EXPECTED)
        for action, code, output in zip(episode.actions, episode.returncodes, episode.outputs, strict=True):
            assert code == 0 and EXPECTED[action] in output, (action, code, output)
        # The scheduler saw the program: each model call was one of its steps, the sandbox one of its tools.
        info = combined.scheduler.program(episode.program_id)
        assert info.steps == STEPS and episode.sandbox_id in info.sandboxes
        assert info.status is Status.TERMINATED and info.terminated_reason == "released"  # by the env's cleanup
        # The commands ran in that Thunder sandbox, attributed to the program.
        execs = [e for e in events if e.kind == "tool_end" and e.tool == "sandbox_exec"]
        assert [(e.program_id, e.sandbox_id, e.exit_code) for e in execs] == [
            (episode.program_id, episode.sandbox_id, 0)
        ] * STEPS
        # Everything reclaimed, each side ended once.
        status = await combined.status(disk=False)
        assert status.resources.total() == 0, status.resources
        assert dict(combined.link.envs.end_calls) == {episode.program_id: 1}
        assert combined.link.stats.ended_by_env == 1 and combined.link.stats.ended_by_scheduler == 0
    assert await engine_leftovers(namespace) == []
