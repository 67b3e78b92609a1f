"""Template identity and setup-step validation: pure logic, no engine."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from thunder_env.results import CapturedOutput, ExecResult
from thunder_env.spec import SandboxSpec
from thunder_env.templates import TemplateBuildError, template_key


def spec(**fields: object) -> SandboxSpec:
    return SandboxSpec(image="thunder/base:latest", setup=("echo a",), **fields)  # type: ignore[arg-type]


def test_key_depends_on_image_steps_and_what_steps_see() -> None:
    base = template_key(spec())
    assert template_key(spec()) == base
    assert template_key(SandboxSpec(image="thunder/python:latest", setup=("echo a",))) != base
    assert template_key(SandboxSpec(image="thunder/base:latest", setup=("echo b",))) != base
    assert template_key(SandboxSpec(image="thunder/base:latest", setup=("echo a", "echo a"))) != base
    assert template_key(spec(env={"X": "1"})) != base
    assert template_key(spec(user="nobody")) != base


def test_key_ignores_resource_limits_and_ports() -> None:
    assert template_key(spec(cpus=2.0, memory_bytes=64 << 20, ports=(80,))) == template_key(spec())


@pytest.mark.parametrize("step", ["", "   ", "echo \0"])
def test_empty_or_nul_steps_are_rejected(step: str) -> None:
    with pytest.raises(ValidationError, match="setup step"):
        SandboxSpec(image="thunder/base:latest", setup=("echo ok", step))


def test_build_error_carries_the_step_and_its_output() -> None:
    result = ExecResult(
        exit_code=3,
        stdout=CapturedOutput(b"some progress\n", 14, False),
        stderr=CapturedOutput(b"E: no such package\n", 19, False),
        duration_s=0.1,
    )
    error = TemplateBuildError("k1", 1, "apt-get install nope", result, "failed with exit code 3")
    assert error.step_index == 1 and error.exit_code == 3
    assert "setup step 2 ('apt-get install nope') failed with exit code 3" in str(error)
    assert "E: no such package" in str(error)
