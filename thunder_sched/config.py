"""Typed configuration of the scheduler. Read from flags only in `cli.py`; components get these objects."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
        None, gt=0, description="read timeout of a forwarded request; None waits as long as generation takes"
    )
    inactivity_timeout_s: float = Field(
        600.0, gt=0, description="a program with no request, no running tool and no event for this long ends"
    )
    no_backend_timeout_s: float = Field(
        60.0, gt=0, description="a request waiting while no backend is usable fails after this long (503)"
    )
    tokenize_first_request: bool = Field(True, description="count a new program's first prompt with /tokenize")
    default_chars_per_token: float = Field(4.0, gt=0, description="estimate before any calibration")
    env_manager_url: str | None = Field(
        None,
        description="POST here when a program ends; '{program_id}' is substituted, "
        "else '/programs/{program_id}/end' is appended",
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
        return self
