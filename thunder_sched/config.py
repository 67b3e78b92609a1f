"""Typed configuration of the scheduler. Read from flags only in `cli.py`; components get these objects."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from thunder_sched.program_ids import DEFAULT_PROGRAM_ID_RULES, ProgramIdRule

MODEL_ALIAS_DEFAULT = "*"  # the model alias applied to every requested name not listed


class PolicyConfig(BaseModel):
    """Knobs of the pure scheduling policy (see docs/scheduler.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lambda_max: float = Field(1.0, gt=0, description="high watermark: pause when load > lambda_max * capacity")
    lambda_min: float | None = Field(
        None, gt=0, description="low watermark: restore only while load < lambda_min * capacity (default lambda_max)"
    )
    time_decay: bool = Field(True, description="weigh acting programs by exp(-t / tau)")
    tau_s: float = Field(30.0, gt=0, description="time constant of the acting-token decay, seconds")
    aging_rate: float = Field(
        0.1, ge=0, description="per second of waiting, a program ranks as if (1 + rate * wait) times shorter"
    )
    max_wait_s: float = Field(
        60.0, gt=0, description="a ready program waiting longer is served first, with reservation and preemption"
    )
    min_residency_s: float = Field(
        5.0, ge=0, description="a program restored less than this ago is not preempted for a starving one"
    )
    cache_affinity_s: float = Field(
        30.0, ge=0, description="a program paused less than this ago prefers its previous backend (prefix cache)"
    )
    tool_aware: bool = Field(
        True,
        description="use tool events: learn tool durations and free the room of programs whose tool is expected "
        "to outlast the value of their cache",
    )
    shared_prefixes: bool = Field(
        True, description="count a prompt prefix shared by programs (system prompt, tools) once per backend"
    )
    tool_pause_s: float = Field(
        8.0, gt=0, description="a running tool expected to need more than this many more seconds frees its room"
    )
    host_tier_cost_ratio: float = Field(
        0.067,
        gt=0,
        le=1,
        description="cost of restoring from a host KV tier relative to recomputing (H200: 0.039 s vs 0.60 s); "
        "scales tool_pause_s on backends with a tier",
    )
    min_running: int = Field(
        1,
        ge=0,
        description="work conservation: while fewer requests than this run on a backend and ready programs wait, "
        "the next one is restored there even past the memory limit, as long as the running requests still fit "
        "(idle programs' caches pay for it, never a running request); 0 turns it off",
    )
    flap_window_s: float = Field(
        5.0, gt=0, description="a pause followed by a restore of the same program within this is counted a flap"
    )

    @model_validator(mode="after")
    def _watermarks(self) -> PolicyConfig:
        if self.lambda_min is not None and self.lambda_min > self.lambda_max:
            raise ValueError(f"lambda_min ({self.lambda_min}) must not exceed lambda_max ({self.lambda_max})")
        return self

    @property
    def low_watermark(self) -> float:
        return self.lambda_max if self.lambda_min is None else self.lambda_min


class SchedulerConfig(BaseModel):
    """Everything the proxy and its scheduler need; built by the CLI or by an embedding application."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backends: tuple[str, ...] = Field(min_length=1, description="base URLs of the vLLM servers")
    policy: PolicyConfig = PolicyConfig()
    interval_s: float = Field(1.0, gt=0, description="period of the thrashing check")
    backend_refresh_s: float = Field(5.0, gt=0, description="period of the capacity/health refresh")
    backend_timeout_s: float = Field(5.0, gt=0, description="timeout of one /metrics or /health probe")
    backend_failures_to_down: int = Field(2, ge=1, description="consecutive failed probes that mark a backend down")
    connect_timeout_s: float = Field(5.0, gt=0)
    request_timeout_s: float | None = Field(
        600.0,
        gt=0,
        description="idle timeout of a forwarded request: the longest silence from the backend (a non-streaming "
        "response is silent until done); None waits forever",
    )
    inactivity_timeout_s: float = Field(
        600.0, gt=0, description="a program with no request, no running tool and no event for this long ends"
    )
    no_backend_timeout_s: float = Field(
        60.0, gt=0, description="a request waiting while no backend is usable fails after this long (503)"
    )
    late_restore_s: float = Field(
        1.0, gt=0, description="a paused program's request held longer than this counts as a late restore"
    )
    decode_reserve_tokens: int = Field(
        256, ge=0, description="decode room reserved for a request before the program's output length is known"
    )
    max_tool_s: float = Field(
        3600.0, gt=0, description="a tool with no tool_end after this long is treated as ended (lost event)"
    )
    tokenize_first_request: bool = Field(True, description="count a new program's first prompt with /tokenize")
    default_chars_per_token: float = Field(4.0, gt=0, description="estimate before any calibration")
    env_manager_url: str | None = Field(
        None,
        description="POST here when a program ends; '{program_id}' is substituted, "
        "else '/programs/{program_id}/end' is appended",
    )
    env_manager_token: str | None = Field(
        None,
        repr=False,
        min_length=16,
        description="bearer token sent with the program-end POST (the env manager's server or notifier token)",
    )
    host_tier_tokens: dict[str, int] = Field(
        default_factory=dict,
        description="host (CPU) KV tier size in tokens per backend URL, when the backend's /metrics does not tell",
    )
    forward_auth: bool = Field(
        False,
        description="forward the client's Authorization and x-api-key headers to the backends (off: a token meant "
        "for this proxy, e.g. thunder serve's, never reaches a backend)",
    )
    model_aliases: dict[str, str] = Field(
        default_factory=dict,
        description="requested model name -> the backend's served name, applied to the body's `model` of every "
        f"completion route; the name {MODEL_ALIAS_DEFAULT!r} maps every name not listed",
    )
    program_id_rules: tuple[ProgramIdRule, ...] = Field(
        DEFAULT_PROGRAM_ID_RULES,
        description="where to find the program of a request that names none (no body program_id, no X-Program-Id): "
        "the first rule that matches wins; the default recognises Claude Code's session id",
    )
    max_connections: int = Field(1024, ge=1, description="connection pool size towards the backends")
    terminated_history: int = Field(256, ge=0, description="recently terminated programs kept for GET /programs")

    @model_validator(mode="after")
    def _urls(self) -> SchedulerConfig:
        cleaned = tuple(url.rstrip("/") for url in self.backends)
        for url in cleaned:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"backend URL {url!r} must start with http:// or https://")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError(f"duplicate backend URLs in {list(self.backends)}")
        object.__setattr__(self, "backends", cleaned)
        tiers = {url.rstrip("/"): tokens for url, tokens in self.host_tier_tokens.items()}
        unknown = sorted(set(tiers) - set(cleaned))
        if unknown:
            raise ValueError(f"host tier given for unknown backend(s) {unknown}; backends are {list(cleaned)}")
        if any(tokens < 0 for tokens in tiers.values()):
            raise ValueError("host tier sizes must be >= 0 tokens")
        object.__setattr__(self, "host_tier_tokens", tiers)
        for name, served in self.model_aliases.items():
            if not name.strip() or not served.strip():
                raise ValueError(f"model alias {name!r} -> {served!r}: both names must be non-empty")
        return self
