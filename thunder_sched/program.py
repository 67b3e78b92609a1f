"""Program state: the paper's P = <id, c, T, L, phase, status>, plus what the proxy needs to hold requests."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from pydantic import BaseModel

from thunder_sched.policy import Phase, ProgramView, Status


@dataclass(frozen=True, slots=True)
class Usage:
    """Exact token counts from a response's `usage`."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(eq=False, slots=True)
class Program:
    program_id: str
    created_at: float
    ephemeral: bool = False  # a request without a program id: a one-step program
    tokens: int = 0  # c: context tokens (exact after a response, estimated before)
    tokens_exact: bool = False
    status: Status = Status.PAUSED  # a new program starts in the waiting queue; admission is a restore
    backend: str | None = None  # L
    previous_backend: str | None = None
    sandboxes: set[str] = field(default_factory=set)  # T, from tool events
    in_flight: dict[str, int] = field(default_factory=dict)  # backend -> forwarded requests running there
    held: int = 0  # requests waiting in the proxy for admission
    steps: int = 0  # completed requests
    acting_since: float = 0.0
    ready_since: float | None = None
    paused_at: float | None = None
    activated_at: float | None = None
    last_activity: float = 0.0
    ever_active: bool = False
    tools_running: int = 0
    tool_key: str | None = None  # key of the running tool in the duration model
    tool_started_at: float | None = None
    tool_paused_at: float | None = None  # paused for its tool (decision quality is judged at tool_end)
    tool_marked: bool | None = None  # see ProgramView.tool_marked
    mark_timer: asyncio.TimerHandle | None = None  # marks the running tool as long when it fires
    reserve_tokens: int = 0  # decode room asked for by the requests in flight or held
    streamed: int = 0  # tokens streamed so far by the requests in flight
    output_tokens_ema: float | None = None  # observed output length of this program's responses
    in_host_tier: bool = False  # paused, its KV still in the previous backend's host tier
    prefix_key: str | None = None  # its shared prompt prefix (see ProgramView.prefix_key)
    prefix_tokens: int = 0
    last_pause_reason: str | None = None
    flaps: int = 0
    last_tool: str | None = None
    last_tool_duration_s: float | None = None
    last_exit_code: int | None = None
    chars_per_token: float | None = None  # calibrated from this program's own usage
    pauses: int = 0
    restores: int = 0
    kv_lost: int = 0
    terminated_reason: str | None = None
    # Set while the program may send requests (ACTIVE) or has ended; cleared while PAUSED.
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def running(self) -> int:
        return sum(self.in_flight.values())

    @property
    def phase(self) -> Phase:
        return Phase.REASONING if (self.running or self.held) else Phase.ACTING

    def view(self, now: float) -> ProgramView:
        """The policy's snapshot of this program (positional: this runs for many programs per round)."""
        status = self.status
        if status is Status.ACTIVE:
            backend = self.backend
        else:  # a paused program still occupies the backend running its request
            backend = next((b for b, n in self.in_flight.items() if n), None)
        busy = bool(self.held) or any(self.in_flight.values())
        return ProgramView(
            self.program_id,
            self.tokens,
            Phase.REASONING if busy else Phase.ACTING,
            status,
            backend,
            status is Status.PAUSED and self.held > 0,
            0.0 if busy else now - self.acting_since,
            now - self.ready_since if self.ready_since is not None else 0.0,
            self.previous_backend,
            now - self.paused_at if self.paused_at is not None else math.inf,
            now - self.activated_at if self.activated_at is not None else math.inf,
            max(0, self.reserve_tokens - self.streamed) if busy else 0,
            self.ever_active,
            self.tool_marked if self.tools_running else None,
            self.in_host_tier,
            self.prefix_key,
            self.prefix_tokens,
        )

    def info(self, now: float) -> ProgramInfo:
        v = self.view(now)
        return ProgramInfo(
            program_id=self.program_id,
            status=self.status,
            phase=self.phase,
            tokens=self.tokens,
            tokens_exact=self.tokens_exact,
            backend=self.backend,
            previous_backend=self.previous_backend,
            sandboxes=sorted(self.sandboxes),
            steps=self.steps,
            in_flight=self.running,
            held=self.held,
            waiting_s=round(v.waiting_s, 3),
            acting_s=round(v.acting_s, 3),
            age_s=round(now - self.created_at, 3),
            tools_running=self.tools_running,
            last_tool=self.last_tool,
            last_tool_duration_s=self.last_tool_duration_s,
            last_exit_code=self.last_exit_code,
            pauses=self.pauses,
            restores=self.restores,
            kv_lost=self.kv_lost,
            flaps=self.flaps,
            in_host_tier=self.in_host_tier,
            reserve_tokens=self.reserve_tokens,
            ephemeral=self.ephemeral,
            terminated_reason=self.terminated_reason,
        )


class ProgramInfo(BaseModel):
    """One program as shown by GET /programs."""

    program_id: str
    status: Status
    phase: Phase
    tokens: int
    tokens_exact: bool
    backend: str | None
    previous_backend: str | None
    sandboxes: list[str]
    steps: int
    in_flight: int
    held: int
    waiting_s: float
    acting_s: float
    age_s: float
    tools_running: int
    last_tool: str | None
    last_tool_duration_s: float | None
    last_exit_code: int | None
    pauses: int
    restores: int
    kv_lost: int
    flaps: int
    in_host_tier: bool
    reserve_tokens: int
    ephemeral: bool
    terminated_reason: str | None
