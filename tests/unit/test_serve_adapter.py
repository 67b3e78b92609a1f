"""The mini-swe-agent adapter's pure parts: the structured-output regex (every reply it admits is one valid
action in mini-swe-agent's text format, and nothing else is admitted) and the model's request arguments.
The adapter against the real vLLM and Docker is tests/vllm/test_mini_swe_agent.py."""

from __future__ import annotations

import re

import pytest

from thunder_serve.clients.minisweagent_adapter import (
    SUBMIT_COMMAND,
    ThunderEnvironmentConfig,
    action_regex,
    thunder_model_kwargs,
)

COMMANDS = ["echo $((6*7))", "ls -la /", "cat notes.txt | wc -l", "grep -c 'a.b' [x].txt", SUBMIT_COMMAND]
# LitellmTextbasedModelConfig.action_regex of mini-swe-agent 2.4.6 (importing it would import litellm).
MSWEA_ACTION = re.compile(r"```mswea_bash_command\s*\n(.*?)\n```", re.DOTALL)


def reply(command: str, thought: str = "let me look") -> str:
    return f"THOUGHT: {thought}\n\n```mswea_bash_command\n{command}\n```"


def test_every_allowed_command_is_admitted_and_parses_as_exactly_that_action() -> None:
    pattern = re.compile(action_regex(COMMANDS))
    for command in COMMANDS:
        text = reply(command)
        assert pattern.fullmatch(text), command
        assert [a.strip() for a in MSWEA_ACTION.findall(text)] == [command]


@pytest.mark.parametrize(
    "text",
    [
        reply("rm -rf /"),  # not an allowed command
        reply("echo $((6*7)) && rm -rf /"),
        reply("echo 42"),  # '$((6*7))' is literal text, not a regex
        reply("ls -la /") + "\n" + reply("ls -la /"),  # two actions
        "```mswea_bash_command\nls -la /\n```",  # no THOUGHT
        reply("ls -la /", thought="x" * 61),  # the thought is bounded
        reply("ls -la /", thought="Upper"),
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    assert re.fullmatch(action_regex(COMMANDS), text) is None


def test_the_regex_escapes_operators_but_not_spaces() -> None:
    regex = action_regex(["a b.c"])
    assert "a b\\.c" in regex and "\\ " not in regex
    with pytest.raises(ValueError, match="at least one command"):
        action_regex([])


def test_model_arguments_carry_the_program_id_and_the_regex_in_the_body() -> None:
    kwargs = thunder_model_kwargs(
        "http://127.0.0.1:8400/", "run-7", regex="x", max_tokens=64, extra_body={"program_id": "other", "seed": 3}
    )
    assert kwargs["api_base"] == "http://127.0.0.1:8400/v1"
    assert kwargs["max_tokens"] == 64 and kwargs["temperature"] == 0.0
    assert kwargs["extra_body"] == {"program_id": "run-7", "seed": 3, "structured_outputs": {"regex": "x"}}
    assert "structured_outputs" not in thunder_model_kwargs("http://h", "p")["extra_body"]


def test_the_environment_config_never_exposes_the_token() -> None:
    config = ThunderEnvironmentConfig(server_url="http://h", token="secret-token-123456", program_id="p")
    assert "secret-token" not in repr(config) and "token" not in config.model_dump()
    assert config.model_dump()["template"] == "python"
