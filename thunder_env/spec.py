"""What a sandbox is made of: the user's request, validated once at the edge."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NetworkMode = Literal["none", "internal", "bridge"]

# Enough for package managers running as root (chown, setuid to _apt, kill own children);
# everything else (NET_RAW, MKNOD, SYS_CHROOT, AUDIT_WRITE, SETFCAP...) is dropped.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
)

# The container's main process: sleeps until stopped, answers SIGTERM at once.
KEEPALIVE_COMMAND: tuple[str, ...] = (
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
)


class SandboxSpec(BaseModel):
    """A request for a sandbox. Unknown fields are rejected so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(min_length=1)
    cpus: float = Field(default=1.0, gt=0, le=256)
    memory_bytes: int = Field(default=1 << 30, ge=16 << 20)
    pids_limit: int = Field(default=512, ge=8)
    # The sandbox's writable layer (None: the manager's sandbox_disk_limit_bytes; never above it).
    disk_bytes: int | None = Field(default=None, ge=1 << 20)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = "/workspace"
    user: str = ""
    network: NetworkMode = "none"
    ports: tuple[int, ...] = ()
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    command: tuple[str, ...] = KEEPALIVE_COMMAND
    # Setup steps make the spec a *template*: each step is a shell command (``/bin/sh -c``) run once,
    # in order, in ``workdir`` as ``user`` with ``env``; the result is snapshotted and every sandbox of
    # the template starts from that snapshot (see thunder_env.templates). Empty: a plain image.
    setup: tuple[str, ...] = ()

    @field_validator("workdir")
    @classmethod
    def _absolute_workdir(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"workdir must be an absolute path, got {value!r}")
        return value

    @field_validator("ports")
    @classmethod
    def _valid_ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is outside 1..65535")
        return value

    @field_validator("setup")
    @classmethod
    def _valid_setup(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for step in value:
            if not step.strip() or "\0" in step:
                raise ValueError(f"setup step {step!r} is empty or contains NUL")
        return value

    @field_validator("env")
    @classmethod
    def _valid_env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"invalid environment variable name {key!r}")
        return value

    def key(self) -> str:
        """Stable identity of this spec (used to reuse lingering sandboxes of the same kind)."""
        raw = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]
