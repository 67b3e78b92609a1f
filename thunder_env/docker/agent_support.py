"""The exec agent inside Docker sandboxes: mounts, host directories, readiness and the exec fast path.

Each sandbox gets ``<run_dir>/<namespace>/<sandbox_id>/`` on the host, bind-mounted at /.thunder/run,
where its agent (the read-only /.thunder/agent, the container's main process) listens on agent.sock.
The manager reaches that socket only through the host directory, so a sandbox's agent serves that
sandbox alone. That directory is a tmpfs of its own (AGENT_DIR_TMPFS: a few KiB, a few inodes) that
the manager mounts before the container starts: a sandbox can write there, never on a shared host
filesystem such as /run. Where the manager cannot mount it (not root), the sandbox gets no agent.
Any trouble before a command starts falls back to the Engine API's exec with a
warning; the Engine API stays the path for other users than the sandbox's and for remote engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import time
from collections.abc import Collection, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from ..agent.build import DEFAULT_CACHE_DIR, AgentBuildError, ensure_agent_binary
from ..backend import ExecRequest, OutputCallback
from ..errors import CommandStartUnknownError
from ..reconcile import OwnerIdentity
from ..results import ExecResult
from ..spec import KEEPALIVE_COMMAND, SandboxSpec
from .agent_client import (
    START_TIMEOUT_S,
    AgentEndpoint,
    AgentNotListeningError,
    AgentUnavailableError,
    AgentUnresponsiveError,
    agent_exec,
    agent_kill,
    agent_ping,
)
from .clients import DockerClients

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = Path("/run/thunder")
AGENT_PATH = "/.thunder/agent"
RUN_MOUNT = "/.thunder/run"
SOCKET_NAME = "agent.sock"
OWNER_SUFFIX = ".owner"
# A new sandbox's agent must answer within this long of the start; past it the sandbox uses the Engine API.
READY_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 1.0
# A directory without an owner file is someone's create in flight for at most this long.
UNOWNED_GRACE_S = 60.0
# The agent's directory holds its socket and nothing else: room for it, and little more.
AGENT_DIR_TMPFS = "size=64k,nr_inodes=32,mode=1777"
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MNT_DETACH, _UMOUNT_NOFOLLOW = 2, 8
_LIBC = ctypes.CDLL(None, use_errno=True)
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")

# Set by engine_exec_only(): this task's execs take the Engine API even where an agent runs.
_ENGINE_ONLY: ContextVar[bool] = ContextVar("thunder_engine_exec_only", default=False)


@contextlib.contextmanager
def engine_exec_only() -> Iterator[None]:
    """Within this block (this task only), execs skip the agent: for benchmarks and diagnostics."""
    token = _ENGINE_ONLY.set(True)
    try:
        yield
    finally:
        _ENGINE_ONLY.reset(token)


def agent_command(sandbox_id: str, command: tuple[str, ...]) -> list[str]:
    """The container's main command: the agent's supervisor, running the spec's own command if it has one."""
    base = [AGENT_PATH, "supervise", f"{RUN_MOUNT}/{SOCKET_NAME}", sandbox_id]
    return base if command == KEEPALIVE_COMMAND else [*base, "--", *command]


class ExecAgents:
    """The exec agents of one backend's sandboxes: their host directories, readiness, and the exec and
    kill fast paths. The lifecycle calls ``prepare``/``register`` on create and ``detach``/``forget`` on
    destroy; execution tries ``exec``/``kill`` first and takes the Engine API when they answer None/False."""

    def __init__(self, clients: DockerClients, enabled: bool, run_dir: Path | None, cache_dir: Path | None) -> None:
        # The host directory must be the engine's host: only for an engine on a local Unix socket.
        self.enabled = enabled and clients.local
        self.agent_execs = 0  # commands the agent ran
        self.fallback_execs = 0  # commands meant for the agent that went through the Engine API
        self._run_dir = run_dir or DEFAULT_RUN_DIR
        self._agent_cache_dir = cache_dir or DEFAULT_CACHE_DIR
        self._agent_binary: Path | None = None
        self._agent_build_lock = asyncio.Lock()
        self._agent_build_error: str | None = None
        self._agents: dict[str, AgentEndpoint] = {}
        self._unconfirmed: dict[str, float] = {}  # sandbox -> deadline for its agent's first answer
        # Markers of agent execs not started yet: a kill waits for the start, or it would find nothing.
        self._starting: dict[str, asyncio.Event] = {}
        # Sandboxes whose agent stopped reading requests (SIGSTOP, wedged): their commands take the
        # Engine API at once instead of each waiting START_TIMEOUT_S for an agent that will not answer.
        self._unresponsive: set[str] = set()
        self._owner = OwnerIdentity.current().encode()

    @property
    def run_dir(self) -> Path:
        """Where the per-sandbox socket directories live: ``<run_dir>/<namespace>/<sandbox_id>``."""
        return self._run_dir

    def socket(self, sandbox_id: str) -> AgentEndpoint | None:
        """The sandbox's agent (None: its commands take the Engine API)."""
        return self._agents.get(sandbox_id)

    # ------------------------------------------------------------------------- lifecycle hooks

    async def prepare(
        self, sandbox_id: str, spec: SandboxSpec, labels: Mapping[str, str], config: dict[str, Any]
    ) -> AgentEndpoint | None:
        """Make the sandbox's host directory and point the create body at the agent."""
        if not self.enabled:
            return None
        binary = await self._binary()
        if binary is None:
            return None
        namespace = labels.get("thunder.namespace", "default")
        leaf = self._run_dir / namespace / sandbox_id
        try:
            for name in (namespace, sandbox_id):
                if not _valid_name(name):
                    raise ValueError(f"{name!r} cannot name a host directory (letters, digits, '_.-')")
            await asyncio.to_thread(_make_run_dir, self._run_dir, leaf, self._owner)
        except (OSError, ValueError) as exc:
            # The agent is an accelerator: without its directory the sandbox still works, slower.
            log.warning("sandbox %s gets no exec agent (%s); its commands take the Engine API", sandbox_id, exc)
            await self.forget(sandbox_id)
            return None
        config["Cmd"] = agent_command(sandbox_id, spec.command)
        mounts = config["HostConfig"].setdefault("Mounts", [])
        mounts.append({"Type": "bind", "Source": str(binary), "Target": AGENT_PATH, "ReadOnly": True})
        mounts.append({"Type": "bind", "Source": str(leaf), "Target": RUN_MOUNT})
        return AgentEndpoint(sandbox_id, str(leaf / SOCKET_NAME), spec.user)

    def register(self, agent: AgentEndpoint | None) -> None:
        """The sandbox started: its agent is used from now on, once it has answered a first time.

        Create does not wait for it (cold acquire stays as fast as without the agent); the first
        command waits for it instead, for at most READY_TIMEOUT_S from now, then takes the Engine API.
        """
        if agent is not None:
            self._agents[agent.sandbox_id] = agent
            self._unconfirmed[agent.sandbox_id] = time.monotonic() + READY_TIMEOUT_S

    async def _agent_listens(self, agent: AgentEndpoint) -> bool | None:
        """True once the agent has answered; False if it never did (warned); None if the sandbox went."""
        deadline = self._unconfirmed.get(agent.sandbox_id)
        if deadline is None:
            return True
        delay = 0.001
        while True:
            if agent.sandbox_id not in self._unconfirmed:  # another command settled it meanwhile
                return True if agent.sandbox_id in self._agents else None
            try:
                await agent_ping(agent, timeout_s=PING_TIMEOUT_S)
            except AgentUnavailableError as exc:
                if isinstance(exc, AgentNotListeningError) and time.monotonic() < deadline:
                    await asyncio.sleep(delay)  # not up yet: it starts with the container
                    delay = min(delay * 2, 0.05)
                    continue
                if self._unconfirmed.pop(agent.sandbox_id, None) is None:
                    return None  # destroyed meanwhile, or another command already gave up on it
                self._agents.pop(agent.sandbox_id, None)
                log.warning(
                    "the exec agent of sandbox %s did not answer (%s); its commands take the Engine API (slower)",
                    agent.sandbox_id,
                    exc,
                )
                return False
            self._unconfirmed.pop(agent.sandbox_id, None)
            return True

    def detach(self, sandbox_id: str) -> None:
        """The sandbox is going: commands cut off from now on are its end, not the agent's failure."""
        self._agents.pop(sandbox_id, None)
        self._unconfirmed.pop(sandbox_id, None)
        self._unresponsive.discard(sandbox_id)

    def unresponsive(self, sandbox_id: str) -> bool:
        """Whether the sandbox's agent was given up on (its commands take the Engine API)."""
        return sandbox_id in self._unresponsive

    def _give_up_on_agent(self, sandbox_id: str, why: Exception) -> None:
        if sandbox_id in self._agents and sandbox_id not in self._unresponsive:
            self._unresponsive.add(sandbox_id)
            log.warning("the exec agent of sandbox %s is unresponsive (%s); its commands take the Engine API",
                        sandbox_id, why)

    async def forget(self, sandbox_id: str) -> None:
        """Drop the sandbox's agent and its host directory (by name: also after a cancelled create)."""
        self.detach(sandbox_id)
        if self.enabled:
            await asyncio.to_thread(_remove_sandbox_dirs, self._run_dir, sandbox_id)

    async def remove_orphan_dirs(self, namespace: str, live_sandbox_ids: Collection[str]) -> list[str]:
        """Remove host directories of the namespace whose sandbox is gone and whose maker is dead.

        A live maker's directory may belong to a create in flight: that maker removes it itself.
        """
        if not _valid_name(namespace):
            return []
        return await asyncio.to_thread(_remove_orphans, self._run_dir / namespace, set(live_sandbox_ids))

    # ------------------------------------------------------------------------- operations

    def _agent_for(self, sandbox_id: str, user: str) -> AgentEndpoint | None:
        if not self.enabled or _ENGINE_ONLY.get():
            return None
        if sandbox_id in self._unresponsive:
            return None
        endpoint = self._agents.get(sandbox_id)
        # The agent runs as the sandbox's user; a command for another user takes the Engine API.
        return endpoint if endpoint is not None and endpoint.user == user else None

    async def exec(
        self, sandbox_id: str, request: ExecRequest, on_output: OutputCallback | None
    ) -> ExecResult | None:
        """The command's result through the agent, or None when it must take the Engine API."""
        endpoint = self._agent_for(sandbox_id, request.user)
        if endpoint is None:
            return None
        listens = await self._agent_listens(endpoint)
        if listens is not True:
            if listens is False:  # never answered (warned); None: the sandbox went meanwhile
                self.fallback_execs += 1
            return None
        started = self._starting.setdefault(request.marker, asyncio.Event())
        try:
            result = await agent_exec(endpoint, request, on_output, started.set)
        except CommandStartUnknownError as exc:
            self._give_up_on_agent(sandbox_id, exc)
            raise
        except AgentUnavailableError as exc:
            if sandbox_id not in self._agents:
                return None  # destroyed meanwhile: the Engine API path reports the sandbox gone
            if isinstance(exc, AgentUnresponsiveError):
                self._give_up_on_agent(sandbox_id, exc)
            self.fallback_execs += 1
            log.warning("%s; running the command through the Engine API instead", exc)
            return None
        finally:
            started.set()
            if self._starting.get(request.marker) is started:
                del self._starting[request.marker]
        self.agent_execs += 1
        return result

    async def kill(self, sandbox_id: str, marker: str, user: str) -> bool:
        """Whether the agent killed the marked processes (False: take the Engine API)."""
        endpoint = self._agent_for(sandbox_id, user)
        if endpoint is None or not await self._agent_listens(endpoint):
            return False
        starting = self._starting.get(marker)
        if starting is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(starting.wait(), START_TIMEOUT_S)
        try:
            await agent_kill(endpoint, marker)
        except AgentUnavailableError as exc:
            if sandbox_id in self._agents:
                log.warning("%s; killing marked processes through the Engine API instead", exc)
            return False
        return True

    async def _binary(self) -> Path | None:
        if self._agent_binary is not None or self._agent_build_error is not None:
            return self._agent_binary
        async with self._agent_build_lock:
            if self._agent_binary is None and self._agent_build_error is None:
                try:
                    self._agent_binary = await ensure_agent_binary(self._agent_cache_dir)
                except (AgentBuildError, OSError) as exc:
                    self._agent_build_error = str(exc)
                    log.warning("no exec agent in sandboxes (commands take the slower Engine API): %s", exc)
        return self._agent_binary


def _valid_name(name: str) -> bool:
    return bool(_NAME.match(name)) and set(name) != {"."}


def _make_run_dir(run_dir: Path, leaf: Path, owner: str) -> None:
    for attempt in range(3):
        try:
            for parent in (run_dir, leaf.parent):
                if not parent.is_dir():
                    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    os.chmod(parent, 0o700)  # root only: no host user reaches a sandbox's socket
            # Written before the directory exists, so reconcile never sees an unowned one of ours.
            (leaf.parent / (leaf.name + OWNER_SUFFIX)).write_text(owner)
            leaf.mkdir(mode=0o755)
            # Its own tmpfs, sticky and open to any sandbox user (its socket); nobody removes another's.
            try:
                _mount_tmpfs(leaf)
            except OSError:
                _remove_leaf(leaf)
                raise
            return
        except FileNotFoundError:
            if attempt == 2:  # a concurrent cleanup removed the empty namespace directory: retry
                raise
        except FileExistsError:
            _remove_leaf(leaf)  # a stale directory of a reused id: start clean


def _mount_tmpfs(leaf: Path) -> None:
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if _LIBC.mount(b"thunder-agent", os.fsencode(leaf), b"tmpfs", flags, AGENT_DIR_TMPFS.encode()) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot mount the agent's tmpfs on {leaf}: {os.strerror(code)}")


def _remove_leaf(leaf: Path | str) -> None:
    """Unmount the sandbox's tmpfs (lazily: a dying container may still hold it) and remove the directory."""
    while _LIBC.umount2(os.fsencode(leaf), _MNT_DETACH | _UMOUNT_NOFOLLOW) == 0:
        pass  # stacked mounts of a reused id: each goes
    code = ctypes.get_errno()
    # EINVAL: not (any more) a mount point; EPERM: not root, so nothing of ours can be mounted there.
    if code not in (errno.EINVAL, errno.ENOENT, errno.EPERM):
        log.warning("cannot unmount the agent's tmpfs on %s: %s", leaf, os.strerror(code))
        return  # never rmtree through a mount we could not remove
    shutil.rmtree(leaf, ignore_errors=True)


def _remove_sandbox_dirs(run_dir: Path, sandbox_id: str) -> None:
    if not _valid_name(sandbox_id):
        return
    try:
        namespaces = [entry.path for entry in os.scandir(run_dir) if entry.is_dir(follow_symlinks=False)]
    except OSError:  # none made (missing, or not ours to read)
        return
    for namespace in namespaces:
        leaf = os.path.join(namespace, sandbox_id)
        if os.path.lexists(leaf) or os.path.lexists(leaf + OWNER_SUFFIX):
            _remove_leaf(leaf)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leaf + OWNER_SUFFIX)
            with contextlib.suppress(OSError):
                os.rmdir(namespace)  # only when empty: nothing is left behind


def _remove_orphans(namespace_dir: Path, live: set[str]) -> list[str]:
    try:
        entries = list(os.scandir(namespace_dir))
    except FileNotFoundError:
        return []
    removed: list[str] = []
    for entry in entries:
        name = entry.name.removesuffix(OWNER_SUFFIX)
        if name in live or name in removed:
            continue
        owner_file = namespace_dir / (name + OWNER_SUFFIX)
        try:
            owner = OwnerIdentity.decode(owner_file.read_text())
        except (FileNotFoundError, UnicodeDecodeError):
            owner = None
        if owner is not None and owner.is_alive():
            continue
        if owner is None and time.time() - entry.stat(follow_symlinks=False).st_mtime < UNOWNED_GRACE_S:
            continue
        _remove_leaf(namespace_dir / name)
        with contextlib.suppress(FileNotFoundError):
            owner_file.unlink()
        removed.append(name)
    with contextlib.suppress(OSError):
        namespace_dir.rmdir()
    return removed
