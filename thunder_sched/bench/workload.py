"""Seeded agentic programs: a shared system prompt, a task, then steps of (LLM call, tool call) whose tool
outputs grow the context. Pure: the same config and seed always give the same programs."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Literal

_VOCAB = (
    "alpha build cache delta error fix green heap index join kernel lambda mutex null offset patch queue "
    "retry stack token update value worker yield zone assert branch commit deploy engine fetch graph hook "
    "import json lint merge node parse query route schema test unit vector warn"
).split()

# What a coding agent's bash tool runs; the first word is drawn per step. Durations do not depend on it:
# the field is there so a tool-aware scheduler sees realistic events, not to make it predictable.
COMMANDS = ("pytest -q", "ls src", "pip install x", "git diff", "grep -rn TODO src", "python main.py")

# The two tool-duration distributions of the comparison: (mean seconds, lognormal sigma).
TOOL_DISTS: dict[str, tuple[float, float]] = {"1s": (1.0, 0.8), "heavy": (2.0, 1.5)}


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    programs: int = 12
    steps: int = 8
    system_words: int = 400
    task_words: int = 60
    tool_words: int = 200
    output_tokens: int = 32
    tool_dist: Literal["fixed", "lognormal"] = "lognormal"
    tool_mean_s: float = 1.0
    tool_sigma: float = 0.8
    seed: int = 0

    def with_tools(self, name: str) -> WorkloadConfig:
        """This workload with one of the named lognormal tool distributions of `TOOL_DISTS`."""
        mean, sigma = TOOL_DISTS[name]
        return replace(self, tool_dist="lognormal", tool_mean_s=mean, tool_sigma=sigma)


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    index: int
    task: str
    tool_outputs: tuple[str, ...]  # one per step but the last
    tool_commands: tuple[str, ...]
    tool_durations_s: tuple[float, ...]
    start_delay_s: float


def seeded_text(rng: random.Random, n: int) -> str:
    """``n`` words drawn by ``rng``: the text of every seeded workload (this benchmark's, `thunder demo`'s)."""
    return " ".join(rng.choice(_VOCAB) for _ in range(n))


def tool_duration(rng: random.Random, config: WorkloadConfig) -> float:
    if config.tool_dist == "fixed":
        return config.tool_mean_s
    mu = math.log(config.tool_mean_s) - config.tool_sigma**2 / 2  # lognormal with the requested mean
    return rng.lognormvariate(mu, config.tool_sigma)


def make_workload(config: WorkloadConfig) -> tuple[str, list[ProgramSpec]]:
    rng = random.Random(config.seed)
    system = "You are a coding agent. Tools: bash, edit, test. Reference:\n" + seeded_text(rng, config.system_words)
    programs = []
    tools = config.steps - 1
    for i in range(config.programs):
        # Texts, commands and durations from separate streams: the token workload is the same whatever the
        # tool distribution, so both distributions run the same prompts.
        text_rng = random.Random(config.seed * 100_003 + i)
        cmd_rng = random.Random(f"cmd-{config.seed}-{i}")
        time_rng = random.Random(f"time-{config.seed}-{i}")
        commands = tuple(cmd_rng.choice(COMMANDS) for _ in range(tools))
        programs.append(
            ProgramSpec(
                index=i,
                task=f"Task {i}: " + seeded_text(text_rng, config.task_words),
                tool_outputs=tuple(f"$ {cmd}\n" + seeded_text(text_rng, config.tool_words) for cmd in commands),
                tool_commands=commands,
                tool_durations_s=tuple(tool_duration(time_rng, config) for _ in range(tools)),
                start_delay_s=time_rng.uniform(0.0, 0.5),
            )
        )
    return system, programs
