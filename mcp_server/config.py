"""Typed configuration of the MCP front-end. Environment variables are read only by the CLI."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from thunder_common.program_ids import check_program_id, is_header_name
from thunder_env import SandboxSpec


def default_templates() -> dict[str, SandboxSpec]:
    return {
        "python": SandboxSpec(image="thunder/python:latest"),
        "base": SandboxSpec(image="thunder/base:latest", memory_bytes=256 << 20),
    }


class ServerConfig(BaseModel):
    """What the tools allow and how they behave; shared by every transport."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "thunder"
    # The program a call belongs to when the transport names none (stdio: the process's program).
    # None on HTTP: an unbound request then uses its MCP session as its program.
    default_program_id: str | None = None
    default_image: str = "thunder/python:latest"
    # Named starting points for sandbox_create(template=...): an image plus optional setup steps and limits.
    templates: dict[str, SandboxSpec] = Field(default_factory=default_templates)
    # Images sandbox_create(image=...) accepts, by exact name (no image ids, never a snapshot's image);
    # None: the default image and the templates' images.
    allowed_images: tuple[str, ...] | None = None
    max_sandboxes_per_program: int = Field(default=16, ge=1)
    max_cpus: float = Field(default=4.0, gt=0)
    max_memory_bytes: int = Field(default=8 << 30, ge=16 << 20)
    default_memory_bytes: int = Field(default=1 << 30, ge=16 << 20)
    # 'bridge' reaches the outside world: off unless the operator opts in.
    allow_bridge_network: bool = False
    # sandbox_exec waits this long by default, then leaves the command running in the background.
    # Below the 60 s many MCP clients give a call, so the agent gets a process id instead of an error.
    default_wait_s: float = Field(default=50.0, gt=0)
    max_wait_s: float = Field(default=3600.0, gt=0)
    progress_interval_s: float = Field(default=2.0, gt=0)
    # Per stream, head and tail kept: what reaches the model's context must stay small.
    output_limit_bytes: int = Field(default=30_000, ge=1024)
    process_buffer_bytes: int = Field(default=1 << 20, ge=1024)
    # Commands a program may have in flight: sandbox_exec commands (waited for or in the background) and
    # file operations; each holds a connection to the engine or the sandbox's agent.
    max_processes_per_program: int = Field(default=32, ge=1)
    # Ports a program may have exposed across the sandboxes it holds (each is a listening socket).
    max_ports_per_program: int = Field(default=32, ge=1)
    # Programs alive at once on this server (each may hold sandboxes, commands and ports).
    max_programs: int = Field(default=512, ge=1)
    file_read_default_lines: int = Field(default=2000, ge=1)
    file_read_max_bytes: int = Field(default=256 << 10, ge=1024)
    file_write_max_bytes: int = Field(default=8 << 20, ge=1024)
    # The largest file file_read and file_edit load: refused from its size before any transfer, and the
    # transfer itself is bounded (a file grown meanwhile, a sparse file) so the server never holds more.
    file_max_bytes: int = Field(default=32 << 20, ge=1024)
    # File tools reach the sandbox's workdir and these directories (symlinks resolved in the sandbox).
    extra_file_roots: tuple[str, ...] = ("/tmp",)
    # A program with no tool call for this long is ended (None: never).
    program_idle_timeout_s: float | None = Field(default=1800.0, gt=0)
    reaper_interval_s: float = Field(default=30.0, gt=0)
    # Ended program ids remembered so that late calls get a clear error instead of a fresh program.
    ended_programs_remembered: int = Field(default=10_000, ge=0)

    @field_validator("default_program_id")
    @classmethod
    def _valid_program(cls, value: str | None) -> str | None:
        return None if value is None else check_program_id(value)

    @field_validator("extra_file_roots")
    @classmethod
    def _absolute_roots(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for root in value:
            if not root.startswith("/"):
                raise ValueError(f"file roots must be absolute paths, got {root!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServerConfig:
        if self.default_wait_s > self.max_wait_s:
            raise ValueError("default_wait_s must not exceed max_wait_s")
        if self.default_memory_bytes > self.max_memory_bytes:
            raise ValueError("default_memory_bytes must not exceed max_memory_bytes")
        return self


class HttpConfig(BaseModel):
    """Streamable HTTP: where to listen and who may call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    # Grants every program; callers pick theirs by path or X-Program-Id (or get their MCP session's).
    token: str = Field(min_length=16)
    # Tokens that each confine their holder to one program: token -> program id.
    program_tokens: dict[str, str] = Field(default_factory=dict)
    # A read-only token for `/metrics` of `thunder serve` (scrapers); None: only the server token reads it.
    metrics_token: str | None = Field(default=None, min_length=16)
    # A token that reaches only `POST /programs/{id}/end` (the scheduler's notifier); the server token does too.
    notifier_token: str | None = Field(default=None, min_length=16, repr=False)
    # Extra Host / Origin values the DNS-rebinding check accepts (loopback names always are).
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    session_idle_timeout_s: float = Field(default=1800.0, gt=0)
    # Headers (lower case) that name a request's program when neither the path nor X-Program-Id nor a program
    # token does, first present wins: agents' own run ids. The default is Claude Code's session header, the
    # scheduler's default rule too (Claude Code 2.1.197 sends it on LLM requests only; see docs/agents.md).
    # Agents' own run ids: Claude Code's session id (when its MCP config forwards it), OpenHands' conversation id.
    program_headers: tuple[str, ...] = ("x-claude-code-session-id", "x-openhands-serverconversation-id")
    # Room for file_write's largest content once JSON-encoded.
    max_request_body_bytes: int = Field(default=32 << 20, ge=1 << 20)

    @field_validator("program_tokens")
    @classmethod
    def _valid_program_tokens(cls, value: dict[str, str]) -> dict[str, str]:
        for token, program_id in value.items():
            if len(token) < 16:
                raise ValueError("program tokens must be at least 16 characters")
            check_program_id(program_id)
        return value

    @field_validator("program_headers")
    @classmethod
    def _valid_program_headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not is_header_name(name):
                raise ValueError(f"program header {name!r} is not an HTTP header name")
        return tuple(name.lower() for name in value)

    @model_validator(mode="after")
    def _distinct_tokens(self) -> HttpConfig:
        if self.token in self.program_tokens:
            raise ValueError("the server token must differ from every program token")
        if self.metrics_token is not None and (
            self.metrics_token == self.token or self.metrics_token in self.program_tokens
        ):
            raise ValueError("the metrics token must differ from the server token and every program token")
        if self.notifier_token is not None and (
            self.notifier_token in (self.token, self.metrics_token) or self.notifier_token in self.program_tokens
        ):
            raise ValueError("the notifier token must differ from the server, metrics and program tokens")
        return self


class SchedulerLinkConfig(BaseModel):
    """Where this server reports its programs' tool events and ends: a separately running `thunder-sched`.

    Delivery never blocks a tool call: a bounded queue, one sender, short timeouts, retries with backoff for
    transient errors (no answer, 5xx, 429), then the event is dropped and counted.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    # Sent as a bearer token (a scheduler behind `thunder serve`'s token or a proxy); None: no header.
    token: str | None = Field(default=None, repr=False)
    queue_size: int = Field(default=10_000, ge=1)
    timeout_s: float = Field(default=2.0, gt=0)
    max_attempts: int = Field(default=4, ge=1)
    backoff_initial_s: float = Field(default=0.1, gt=0)
    backoff_max_s: float = Field(default=2.0, gt=0)
    # On shutdown, events still queued get this long to go out (program ends of the shutdown included).
    drain_timeout_s: float = Field(default=5.0, ge=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"the scheduler URL must start with http:// or https://, got {value!r}")
        return value.rstrip("/")
