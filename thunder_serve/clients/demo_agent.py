"""One demo program: a small real agent loop against a combined server.

Each step calls the LLM through `/v1` with the program id, then acts through MCP over HTTP: a fresh sandbox
from a template, a file written, a command run on it, the file read back, the sandbox released. The tiny test
model only emits noise, so the tool calls come from a seeded script; every call is real and every result is
checked (the command's output and the file read back must match what was written).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import DemoError
from .mcp_client import ToolClient, connect, program_url

VOCAB = (
    "agent build cache deploy error fix graph heap index kernel lambda merge node patch queue route schema "
    "stack test token update value vector worker yield branch commit engine fetch parse query retry shard"
).split()
WORDS_PER_LINE = 12


@dataclass(frozen=True)
class Plan:
    """What every program of one demo run does (sizes are chosen by the orchestrator from the KV pool)."""

    model: str
    system: str  # shared by every program: a common prefix, as agents of one kind have
    task_words: int
    steps: int
    output_tokens: int
    growth_tokens: int  # context added per step by the tool observation
    template: str


@dataclass
class ProgramResult:
    program_id: str
    steps: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    tokens: int = 0  # context after the last response (prompt + completion)
    completed: bool = False
    error: str | None = None
    creates: list[tuple[str, float]] = field(default_factory=list)  # (origin, seconds) of each sandbox_create


def words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(VOCAB) for _ in range(max(1, n))]


def as_text(items: list[str]) -> str:
    lines = [" ".join(items[i : i + WORDS_PER_LINE]) for i in range(0, len(items), WORDS_PER_LINE)]
    return "\n".join(lines) + "\n"


def script_command(rng: random.Random, path: str, items: list[str]) -> tuple[str, str]:
    """A command over the written file and the output it must print (computed here, checked there)."""
    text = as_text(items)
    kind = rng.randrange(3)
    if kind == 0:
        digest = hashlib.sha256(text.encode()).hexdigest()
        return f"wc -w < {path} && sha256sum {path}", f"{len(items)}\n{digest}  {path}"
    if kind == 1:
        word = rng.choice(items)
        return f"grep -o -w {word} {path} | wc -l", str(sum(1 for w in items if w == word))
    return f"tr ' ' '\\n' < {path} | sort | uniq | wc -l", str(len(set(items)))


class DemoProgram:
    def __init__(
        self, index: int, program_id: str, plan: Plan, *, server_url: str, token: str, llm: httpx.AsyncClient, seed: int
    ) -> None:
        self.index = index
        self.program_id = program_id
        self.plan = plan
        self.server_url = server_url
        self.token = token
        self.llm = llm
        self.rng = random.Random(seed * 1_000_003 + index)
        self.result = ProgramResult(program_id)
        self.tokens_per_word = 1.5  # calibrated from the first response's usage

    async def run(self, on_step: Callable[[], None] | None = None) -> ProgramResult:
        task = f"Task {self.index}: summarize these notes. " + " ".join(words(self.rng, self.plan.task_words))
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self.plan.system},
            {"role": "user", "content": task},
        ]
        step = 0
        try:
            async with connect(program_url(self.server_url, self.program_id), self.token) as tools:
                try:
                    for step in range(self.plan.steps):
                        reply = await self._reason(messages, step)
                        messages.append({"role": "assistant", "content": reply})
                        messages.append({"role": "user", "content": await self._act(tools, step)})
                        self.result.steps += 1
                        if on_step is not None:
                            on_step()
                except Exception:
                    with contextlib.suppress(Exception):  # best effort: reclaim what the failed program holds
                        await self._tool(tools, "program_end")
                    raise
                await self._tool(tools, "program_end")
            self.result.completed = True
        except Exception as exc:  # reported per program (DemoError, HTTP, MCP errors); the others go on
            self.result.error = f"step {step}: {type(exc).__name__}: {exc}"
        return self.result

    async def _reason(self, messages: list[dict[str, Any]], step: int) -> str:
        body = {
            "model": self.plan.model,
            "messages": messages,
            "max_tokens": self.plan.output_tokens,
            "temperature": 0.0,
            "ignore_eos": True,  # fixed output length: the context grows as planned
            "program_id": self.program_id,
        }
        response = await self.llm.post("/v1/chat/completions", json=body)
        self.result.llm_calls += 1
        if response.status_code != 200:
            raise DemoError(self.program_id, step, f"LLM call answered {response.status_code}: {response.text[:300]}")
        data = response.json()
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        self.result.tokens = prompt_tokens + int(usage.get("completion_tokens", 0))
        prompt_words = sum(len(str(m["content"]).split()) for m in messages)
        if step == 0 and prompt_tokens and prompt_words:
            self.tokens_per_word = prompt_tokens / prompt_words
        return str(data["choices"][0]["message"].get("content") or "")

    async def _act(self, tools: ToolClient, step: int) -> str:
        n_words = max(8, int((self.plan.growth_tokens - self.plan.output_tokens - 40) / self.tokens_per_word))
        items = words(self.rng, n_words)
        text = as_text(items)
        path = f"notes/step-{step}.txt"
        command, expected = script_command(self.rng, path, items)
        started = time.monotonic()
        created = await self._tool(tools, "sandbox_create", template=self.plan.template)
        self.result.creates.append((str(created.get("origin", "?")), time.monotonic() - started))
        sandbox = str(created["sandbox_id"])
        try:
            await self._tool(tools, "file_write", sandbox_id=sandbox, path=path, content=text)
            ran = await self._tool(tools, "sandbox_exec", sandbox_id=sandbox, command=command, timeout_s=60)
            if ran.get("exit_code") != 0 or str(ran.get("stdout", "")).strip() != expected:
                raise DemoError(
                    self.program_id, step, f"{command!r} printed {ran.get('stdout')!r} (exit {ran.get('exit_code')})"
                    f", expected {expected!r}; stderr {ran.get('stderr')!r}",
                )  # fmt: skip
            read = await self._tool(tools, "file_read", sandbox_id=sandbox, path=path)
            if read.get("content") != text:
                raise DemoError(self.program_id, step, f"file_read of {path} differs from what file_write wrote")
        finally:
            await self._tool(tools, "sandbox_release", sandbox_id=sandbox)
        return f"Tool results of step {step}:\n$ cat {path}\n{text}$ {command}\n{expected}\n"

    async def _tool(self, tools: ToolClient, name: str, **arguments: Any) -> dict[str, Any]:
        self.result.tool_calls += 1
        return await tools.call(name, **arguments)
