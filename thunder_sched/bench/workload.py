"""Seeded agentic programs: a shared system prompt, a task, then steps of (LLM call, tool call) whose tool
outputs grow the context. Pure: the same config and seed always give the same programs."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

_VOCAB = (
    "alpha build cache delta error fix green heap index join kernel lambda mutex null offset patch queue "
    "retry stack token update value worker yield zone assert branch commit deploy engine fetch graph hook "
    "import json lint merge node parse query route schema test unit vector warn"
).split()


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    programs: int = 12
    steps: int = 8
    system_words: int = 400
    task_words: int = 60
    tool_words: int = 200
    output_tokens: int = 32
    tool_dist: Literal["fixed", "lognormal"] = "lognormal"
    tool_mean_s: float = 1.5
    tool_sigma: float = 0.8
    seed: int = 0


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    index: int
    task: str
    tool_outputs: tuple[str, ...]  # one per step but the last
    tool_durations_s: tuple[float, ...]
    start_delay_s: float


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_VOCAB) for _ in range(n))


def tool_duration(rng: random.Random, config: WorkloadConfig) -> float:
    if config.tool_dist == "fixed":
        return config.tool_mean_s
    mu = math.log(config.tool_mean_s) - config.tool_sigma**2 / 2  # lognormal with the requested mean
    return rng.lognormvariate(mu, config.tool_sigma)


def make_workload(config: WorkloadConfig) -> tuple[str, list[ProgramSpec]]:
    rng = random.Random(config.seed)
    system = "You are a coding agent. Tools: bash, edit, test. Reference:\n" + _text(rng, config.system_words)
    programs = []
    for i in range(config.programs):
        prng = random.Random(config.seed * 100_003 + i)
        programs.append(
            ProgramSpec(
                index=i,
                task=f"Task {i}: " + _text(prng, config.task_words),
                tool_outputs=tuple(
                    f"$ step {s} output:\n" + _text(prng, config.tool_words) for s in range(config.steps - 1)
                ),
                tool_durations_s=tuple(tool_duration(prng, config) for _ in range(config.steps - 1)),
                start_delay_s=prng.uniform(0.0, 0.5),
            )
        )
    return system, programs
