"""mini-swe-agent on Thunder: its model behind `thunder serve`'s `/v1` (one program id per run) and its
environment in a Thunder sandbox over MCP.

    env = ThunderEnvironment(server_url=url, token=token, program_id="run-1", template="python")
    model = thunder_model(url, "run-1", regex=action_regex(["ls -la", "python3 --version"]))
    DefaultAgent(model, env, **agent_config).run(task);  env.cleanup()   # program_end: both sides reclaimed

or `run_episode(url, token, task, ...)`. The model is mini-swe-agent's own `LitellmTextbasedModel`, configured
only: the program id and vLLM's structured-output regex travel in the request body (`extra_body`).
mini-swe-agent is imported lazily (it does work at import time): set `MSWEA_SILENT_STARTUP=1` and, offline,
`LITELLM_LOCAL_MODEL_COST_MAP=True` before the first use.
"""

from __future__ import annotations

import platform
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .mcp_client import ToolCallError, program_url
from .sync_tools import SyncToolClient

SUBMIT_COMMAND = "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
SUBMIT_MARKER = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
_REGEX_SPECIAL = re.compile(r"([\\.^$*+?{}\[\]|()])")


def _escape(text: str) -> str:
    """Escape regex operators only (no `\\ ` for spaces: the grammar backends' regex subset)."""
    return _REGEX_SPECIAL.sub(r"\\\1", text)


def action_regex(commands: Sequence[str], *, thought_chars: int = 60) -> str:
    """A reply in mini-swe-agent's text format (a THOUGHT, then exactly one ```mswea_bash_command block)
    whose command is one of `commands`. Given to vLLM as `structured_outputs.regex`, it makes any model,
    even a random-weight one, answer with a valid action."""
    if not commands:
        raise ValueError("action_regex needs at least one command")
    choices = "|".join(_escape(command) for command in commands)
    return f"THOUGHT: [a-z][a-z ]{{0,{thought_chars - 1}}}\\n\\n```mswea_bash_command\\n({choices})\\n```"


def thunder_model_kwargs(
    server_url: str,
    program_id: str,
    *,
    regex: str | None = None,
    temperature: float = 0.0,
    max_tokens: int = 256,
    extra_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """litellm arguments that send every request to Thunder's OpenAI API under `program_id`."""
    body: dict[str, Any] = {**(extra_body or {}), "program_id": program_id}
    if regex is not None:
        body["structured_outputs"] = {"regex": regex}
    return {
        "api_base": f"{server_url.rstrip('/')}/v1",
        "api_key": "thunder",  # vLLM without --api-key ignores it; litellm insists on one
        "temperature": temperature,
        "max_tokens": max_tokens,
        "extra_body": body,
    }


def thunder_model(
    server_url: str,
    program_id: str,
    *,
    model: str = "thunder-tiny",
    regex: str | None = None,
    max_tokens: int = 256,
    **config: Any,
) -> Any:
    """mini-swe-agent's `LitellmTextbasedModel` pointed at Thunder (`config`: more model settings)."""
    from minisweagent.models.litellm_textbased_model import LitellmTextbasedModel

    kwargs = thunder_model_kwargs(server_url, program_id, regex=regex, max_tokens=max_tokens)
    model_kwargs = {**config.pop("model_kwargs", {}), **kwargs}
    return LitellmTextbasedModel(
        model_name=f"openai/{model}", model_kwargs=model_kwargs, cost_tracking="ignore_errors", **config
    )


class ThunderEnvironmentConfig(BaseModel):
    server_url: str
    token: str = Field(repr=False, exclude=True)  # never in trajectories or template variables
    program_id: str
    template: str = "python"
    cwd: str = ""  # default: the sandbox's workdir
    env: dict[str, str] = {}
    timeout: int = 30
    end_program_on_cleanup: bool = True  # cleanup() calls program_end: the program ends on both sides


class ThunderEnvironment:
    """mini-swe-agent's Environment protocol on a Thunder sandbox (created at once, one per environment)."""

    def __init__(self, *, config_class: type = ThunderEnvironmentConfig, **kwargs: Any) -> None:
        self.config = config_class(**kwargs)
        self._tools = SyncToolClient(program_url(self.config.server_url, self.config.program_id), self.config.token)
        try:
            created = self._tools.call("sandbox_create", template=self.config.template)
        except BaseException:
            self._tools.close()
            raise
        self.sandbox_id = str(created["sandbox_id"])
        self.workdir = str(created.get("workdir") or "")
        self._cleaned = False

    def execute(self, action: dict[str, Any], cwd: str = "", *, timeout: int | None = None) -> dict[str, Any]:
        """Run the action's command in the sandbox; output is stdout and stderr merged, as mini-swe-agent expects."""
        command = str(action.get("command", ""))
        limit = timeout or self.config.timeout
        try:
            result = self._tools.call(
                "sandbox_exec",
                sandbox_id=self.sandbox_id,
                command="exec 2>&1\n" + command,
                timeout_s=limit,
                workdir=cwd or self.config.cwd or None,
                env=self.config.env or None,
            )
            output = self._output(result, limit)
        except ToolCallError as exc:
            output = {
                "output": "",
                "returncode": -1,
                "exception_info": f"An error occurred while executing the command: {exc.message}",
                "extra": {"exception_type": type(exc).__name__, "exception": exc.message},
            }
        self._check_finished(output)
        return output

    def _output(self, result: dict[str, Any], limit: int) -> dict[str, Any]:
        text = str(result.get("stdout", "")) + str(result.get("stderr", ""))
        if result.get("status") == "running":  # outlived the timeout: Thunder kept it; the agent wants it gone
            self._tools.call("process_kill", process_id=str(result["process_id"]))
            return {
                "output": text,
                "returncode": -1,
                "exception_info": f"The command timed out after {limit} s and was killed.",
                "extra": {"exception_type": "TimeoutExpired", "exception": f"timed out after {limit} s"},
            }
        code = result.get("exit_code")
        return {"output": text, "returncode": -1 if code is None else int(code), "exception_info": ""}

    def _check_finished(self, output: dict[str, Any]) -> None:
        lines = str(output.get("output", "")).lstrip().splitlines(keepends=True)
        if lines and lines[0].strip() == SUBMIT_MARKER and output["returncode"] == 0:
            from minisweagent.exceptions import Submitted

            submission = "".join(lines[1:])
            raise Submitted(
                {"role": "exit", "content": submission, "extra": {"exit_status": "Submitted", "submission": submission}}
            )

    def get_template_vars(self, **kwargs: Any) -> dict[str, Any]:
        from minisweagent.utils.serialize import recursive_merge

        # The sandbox shares the host's kernel: uname's system, release, version and machine are its own.
        return recursive_merge(self.config.model_dump(), platform.uname()._asdict(), kwargs)

    def serialize(self) -> dict[str, Any]:
        return {
            "info": {
                "config": {
                    "environment": self.config.model_dump(mode="json"),
                    "environment_type": f"{type(self).__module__}.{type(self).__name__}",
                    "sandbox_id": self.sandbox_id,
                }
            }
        }

    def cleanup(self) -> None:
        """End the program (its sandboxes and its scheduler state go) and close the session. Idempotent."""
        if self._cleaned:
            return
        self._cleaned = True
        try:
            if self.config.end_program_on_cleanup:
                self._tools.call("program_end")
            else:
                self._tools.call("sandbox_release", sandbox_id=self.sandbox_id)
        finally:
            self._tools.close()

    def __enter__(self) -> ThunderEnvironment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@dataclass(frozen=True)
class Episode:
    program_id: str
    sandbox_id: str
    exit_status: str
    model_calls: int
    actions: list[str]  # the commands the agent ran, in order
    returncodes: list[int]
    outputs: list[str]  # what each command printed, as the agent saw it


def textbased_config() -> dict[str, Any]:
    """mini-swe-agent's own text-based configuration (mini_textbased.yaml): prompts and templates."""
    import yaml
    from minisweagent import package_dir

    return yaml.safe_load(Path(package_dir, "config", "mini_textbased.yaml").read_text())


def run_episode(
    server_url: str,
    token: str,
    task: str,
    *,
    commands: Sequence[str],
    program_id: str | None = None,
    model: str = "thunder-tiny",
    step_limit: int = 4,
    template: str = "python",
    max_tokens: int = 192,
) -> Episode:
    """One mini-swe-agent run on Thunder with the agent's stock prompts, its replies constrained to `commands`
    (plus nothing else): it ends after `step_limit` model calls or when it submits. The program ends after."""
    from minisweagent.agents.default import DefaultAgent

    config = textbased_config()
    program_id = program_id or "mswea-" + secrets.token_hex(4)
    env = ThunderEnvironment(
        server_url=server_url,
        token=token,
        program_id=program_id,
        template=template,
        env=config.get("environment", {}).get("env", {}),
    )
    try:
        model_config = dict(config.get("model", {}))
        agent_model = thunder_model(
            server_url, program_id, model=model, regex=action_regex(commands), max_tokens=max_tokens, **model_config
        )
        agent = DefaultAgent(agent_model, env, **{**config["agent"], "step_limit": step_limit, "cost_limit": 0.0})
        result = agent.run(task)
        actions = [a["command"] for m in agent.messages for a in m.get("extra", {}).get("actions", [])]
        observed = [m["extra"] for m in agent.messages if "returncode" in m.get("extra", {})]
        return Episode(
            program_id,
            env.sandbox_id,
            str(result.get("exit_status", "")),
            agent.n_calls,
            actions,
            [int(o["returncode"]) for o in observed],
            [str(o.get("raw_output", "")) for o in observed],
        )
    finally:
        env.cleanup()
