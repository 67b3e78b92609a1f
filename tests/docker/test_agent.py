"""The exec agent inside every sandbox, on both images: every exec feature goes through it, it falls
back to the Engine API safely, it is restarted when killed, and it leaves nothing on the host."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from thunder_env import EnvManager, ExecResult, ManagerConfig, OutputChunk, SandboxSpec, ToolEvent
from thunder_env.docker import DockerBackend
from thunder_env.docker.agent_client import agent_ping
from thunder_env.leases import Lease
from thunder_env.output import TRUNCATION_MARKER

from ._helpers import eventually, start_background, until_listed
from .conftest import BASE_IMAGE, PYTHON_IMAGE, ManagerFactory, leftovers

IMAGES = pytest.mark.parametrize("image", [BASE_IMAGE, PYTHON_IMAGE], ids=["base", "python"])
AGENT_LOG = "thunder_env.docker.agent_support"


def spec_for(image: str, **overrides: object) -> SandboxSpec:
    return SandboxSpec(image=image, memory_bytes=256 << 20, pids_limit=256, **overrides)  # type: ignore[arg-type]


@contextmanager
def through_agent(backend: DockerBackend, at_least: int = 1) -> Iterator[None]:
    """Asserts the block's commands went through the agent, none through the Engine API."""
    agent, fallback = backend.agent_execs, backend.fallback_execs
    yield
    assert backend.fallback_execs == fallback, "a command fell back to the Engine API"
    assert backend.agent_execs - agent >= at_least, "the agent was not used"


async def ps(manager: EnvManager, lease: Lease) -> str:
    return (await manager.exec(lease, "ps -o pid,args 2>/dev/null || ps -eo pid,args")).stdout.text


@pytest.fixture
async def lease(manager: EnvManager, backend: DockerBackend, image: str) -> Lease:
    lease = await manager.acquire("prog-agent", spec_for(image))
    assert backend.agent_socket(lease.sandbox_id) is not None, "the sandbox got no exec agent"
    return lease


@IMAGES
async def test_exit_codes_streams_env_workdir_stdin(manager: EnvManager, backend: DockerBackend, lease) -> None:
    with through_agent(backend, at_least=6):
        result = await manager.exec(lease, "echo out; echo err >&2; exit 3")
        assert (result.exit_code, result.stdout.text, result.stderr.text) == (3, "out\n", "err\n")
        result = await manager.exec(
            lease, "echo $FOO; pwd", env={"FOO": "bar baz", "PATH": "/bin:/usr/bin"}, workdir="/tmp"
        )
        assert result.stdout.text == "bar baz\n/tmp\n"
        result = await manager.exec(lease, "pwd; echo $HOME")
        assert result.stdout.text == "/workspace\n/root\n"  # the sandbox's workdir and environment
        result = await manager.exec(lease, ["cat"], stdin=b"line1\nline2")
        assert result.stdout.data == b"line1\nline2"
        big = secrets.token_bytes(5 << 20)
        result = await manager.exec(lease, "cat | wc -c", stdin=big)
        assert result.stdout.text.strip() == str(len(big))
        result = await manager.exec(lease, ["echo", "$HOME; rm -rf /"])  # argv: no shell
        assert result.stdout.text == "$HOME; rm -rf /\n"
        result = await manager.exec(lease, "kill -9 $$")
        assert result.exit_code == 137 and not result.timed_out
    # A command that cannot start is reported like the Engine API reports it: exit code 126.
    missing = await manager.exec(lease, ["no-such-command"])
    assert missing.exit_code == 126 and "executable file not found" in missing.stderr.text
    bad_dir = await manager.exec(lease, "pwd", workdir="/no/such/dir")
    assert bad_dir.exit_code == 126 and "chdir" in bad_dir.stderr.text


@IMAGES
async def test_timeout_kills_the_group_and_children_that_left_it(
    manager: EnvManager, backend: DockerBackend, lease
) -> None:
    with through_agent(backend):
        started = time.monotonic()
        result = await manager.exec(lease, "sleep 300 & (setsid sleep 301 &); echo begun; sleep 302", timeout_s=1)
        assert result.timed_out and not result.ok and result.exit_code == 137
        assert result.stdout.text == "begun\n"
        assert time.monotonic() - started < 5
        assert "sleep 30" not in await ps(manager, lease)


@IMAGES
async def test_ten_megabytes_truncated_and_binary_exact(manager: EnvManager, backend: DockerBackend, lease) -> None:
    with through_agent(backend, at_least=2):
        result = await manager.exec(
            lease, "echo START; head -c 10485760 /dev/zero | tr '\\0' x; echo; echo END", output_limit=1 << 20
        )
        out = result.stdout
        assert out.truncated and out.total_bytes == 10485760 + len("START\n") + 1 + len("END\n")
        assert out.data.startswith(b"START\nxxx") and out.data.endswith(b"xxx\nEND\n")
        assert len(out.data) == (1 << 20) + len(TRUNCATION_MARKER)
        result = await manager.exec(lease, r"printf '\377\000\001abc'")
        assert result.stdout.data == b"\xff\x00\x01abc"


@IMAGES
async def test_stream_background_processes_and_tool_events(manager: EnvManager, backend: DockerBackend, lease) -> None:
    events: list[ToolEvent] = []

    async def listener(event: ToolEvent) -> None:
        events.append(event)

    manager.add_listener(listener)
    with through_agent(backend, at_least=4):
        started = time.monotonic()
        seen: list[tuple[float, OutputChunk | ExecResult]] = []
        async for item in manager.exec_stream(lease, "echo first; sleep 1.5; echo second"):
            seen.append((time.monotonic() - started, item))
        first_at, first = seen[0]
        assert isinstance(first, OutputChunk) and first.data == b"first\n" and first_at < 1.2
        assert isinstance(seen[-1][1], ExecResult) and seen[-1][1].exit_code == 0

        counter = start_background(manager, lease, "for i in 1 2 3; do echo $i; sleep 0.3; done")
        assert counter.task is not None
        await asyncio.wait_for(asyncio.shield(counter.task), 10)
        assert counter.status == "exited" and counter.stdout.read_from(0) == (b"1\n2\n3\n", 0)
        sleeper = start_background(manager, lease, "sleep 304")
        await until_listed(manager, lease, "sleep 304")
        await sleeper.kill()
        assert not sleeper.running and sleeper.status == "killed"
        assert "sleep 304" not in await ps(manager, lease)
    kinds = [(e.kind, e.tool) for e in events]
    assert ("tool_start", "exec") in kinds and ("tool_end", "exec") in kinds
    end = next(e for e in events if e.kind == "tool_end" and e.tool == "exec")
    assert end.exit_code == 0 and end.duration_s >= 1.5


@IMAGES
async def test_cancelled_exec_kills_its_tree(manager: EnvManager, backend: DockerBackend, lease) -> None:
    task = asyncio.create_task(manager.exec(lease, "(setsid sleep 305 &); sleep 306"))
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # Under load the cancel can land while the agent is still starting the command (no process to kill
    # yet): the agent then kills the tree as soon as it sees the dropped connection, moments later.
    async def tree_gone() -> bool:
        text = await ps(manager, lease)
        return "sleep 305" not in text and "sleep 306" not in text

    await eventually(tree_gone, timeout_s=10, what="the cancelled command's tree is killed")


@IMAGES
async def test_unprivileged_user_and_own_command(manager: EnvManager, backend: DockerBackend, image: str) -> None:
    nobody = await manager.acquire("prog-user", spec_for(image, user="65534:65534", workdir="/tmp"))
    own = await manager.acquire("prog-cmd", spec_for(image, command=("sleep", "3600")))
    with through_agent(backend, at_least=2):
        result = await manager.exec(nobody, "id -u; touch /owned-by-root 2>/dev/null || echo denied")
        assert result.stdout.text == "65534\ndenied\n"
        # The agent runs as the sandbox's user too: no root process serves an unprivileged sandbox.
        assert "65534" in (await manager.exec(nobody, "stat -c %u /.thunder/run/agent.sock")).stdout.text
        # A spec's own main command keeps running beside the agent.
        assert "sleep 3600" in await ps(manager, own)
    # Another user than the sandbox's takes the Engine API (the agent cannot act for it).
    assert (await manager.exec(nobody, "id -u", user="0")).stdout.text == "0\n"


@IMAGES
async def test_broken_agent_falls_back_with_a_warning_then_heals(
    manager: EnvManager, backend: DockerBackend, lease, caplog: pytest.LogCaptureFixture
) -> None:
    # Rename the socket from inside the sandbox and put a directory where it was.
    await manager.exec(lease, "mv /.thunder/run/agent.sock /.thunder/run/moved.sock && mkdir /.thunder/run/agent.sock")
    fallback = backend.fallback_execs
    with caplog.at_level(logging.WARNING, logger=AGENT_LOG):
        result = await asyncio.wait_for(manager.exec(lease, "echo still here"), 30)
    assert result.ok and result.stdout.text == "still here\n"
    assert backend.fallback_execs == fallback + 1
    assert any("Engine API" in r.getMessage() for r in caplog.records if r.name == AGENT_LOG)
    # Once the path is free again, the agent listens there again by itself.
    await manager.exec(lease, "rmdir /.thunder/run/agent.sock")
    await _until_agent_answers(backend, lease.sandbox_id)
    with through_agent(backend):
        assert (await manager.exec(lease, "echo back")).stdout.text == "back\n"


@IMAGES
async def test_killed_agent_is_restarted(manager: EnvManager, backend: DockerBackend, lease) -> None:
    before = await _until_agent_answers(backend, lease.sandbox_id)  # create does not wait for it
    await manager.exec(lease, f"kill -9 {before}")  # its own server, from a command it runs
    after = await _until_agent_answers(backend, lease.sandbox_id, not_pid=before)
    assert after != before
    with through_agent(backend):
        assert (await manager.exec(lease, "echo again")).stdout.text == "again\n"


async def _until_agent_answers(backend: DockerBackend, sandbox_id: str, not_pid: int = -1) -> int:
    endpoint = backend.agent_socket(sandbox_id)
    assert endpoint is not None
    deadline = time.monotonic() + 10
    while True:
        try:
            pid = (await agent_ping(endpoint)).pid
            if pid != not_pid:
                return pid
        except Exception:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


@IMAGES
async def test_fifty_parallel_commands_in_one_sandbox(manager: EnvManager, backend: DockerBackend, lease) -> None:
    with through_agent(backend, at_least=50):
        results = await asyncio.gather(*(manager.exec(lease, f"echo {i}; echo e{i} >&2") for i in range(50)))
    assert [(r.exit_code, r.stdout.text, r.stderr.text) for r in results] == [
        (0, f"{i}\n", f"e{i}\n") for i in range(50)
    ]


@IMAGES
async def test_two_hundred_commands_across_twenty_sandboxes(
    manager: EnvManager, backend: DockerBackend, image: str
) -> None:
    leases = await asyncio.gather(*(manager.acquire(f"prog-{i}", spec_for(image)) for i in range(20)))
    assert all(backend.agent_socket(lease.sandbox_id) is not None for lease in leases)

    async def run(index: int) -> tuple[int, str]:
        lease = leases[index % 20]
        result = await manager.exec(lease, f"echo {index} $HOSTNAME")
        return index, result.stdout.text

    with through_agent(backend, at_least=200):
        results = await asyncio.gather(*(run(i) for i in range(200)))
    hostnames = {}
    for index, text in results:
        number, hostname = text.split()
        assert int(number) == index
        hostnames.setdefault(index % 20, set()).add(hostname)
    # Each command ran in its own lease's sandbox, never in another's.
    assert all(len(names) == 1 for names in hostnames.values())
    assert len({next(iter(names)) for names in hostnames.values()}) == 20
    # A sandbox sees its own socket and nothing of the others'.
    assert (await manager.exec(leases[0], "ls -A /.thunder/run")).stdout.text == "agent.sock\n"


@IMAGES
async def test_no_host_directories_left_after_release(
    make_manager: ManagerFactory, backend: DockerBackend, image: str
) -> None:
    manager = await make_manager()
    namespace = manager.config.namespace
    leases = [await manager.acquire("prog-dirs", spec_for(image)) for _ in range(2)]
    dirs = [backend.agent_run_dir / namespace / lease.sandbox_id for lease in leases]
    for lease in leases:
        await _until_agent_answers(backend, lease.sandbox_id)
    assert all(d.is_dir() and (d / "agent.sock").is_socket() for d in dirs)
    await manager.release(leases[0])
    assert not dirs[0].exists() and dirs[1].is_dir()
    await manager.end_program("prog-dirs")
    assert not dirs[1].exists()
    assert not (backend.agent_run_dir / namespace).exists()


HOLDER = """
import asyncio, json, sys
from thunder_env import EnvManager, ManagerConfig, SandboxSpec
from thunder_env.docker import DockerBackend

async def main():
    manager = EnvManager(DockerBackend(), ManagerConfig(namespace=sys.argv[1]))
    await manager.start()
    leases = [await manager.acquire("crashy", SandboxSpec(image=sys.argv[2])) for _ in range(2)]
    print(json.dumps([l.sandbox_id for l in leases]), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@IMAGES
async def test_no_host_directories_left_after_reconcile(backend: DockerBackend, image: str) -> None:
    namespace = "test-agent-crash-" + secrets.token_hex(4)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, namespace, image, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        sandbox_ids = json.loads(await asyncio.wait_for(proc.stdout.readline(), 120))
        namespace_dir = backend.agent_run_dir / namespace
        assert sorted(os.listdir(namespace_dir)) == sorted([*sandbox_ids, *(s + ".owner" for s in sandbox_ids)])
        # A live maker's directories are never touched.
        assert await backend.remove_orphan_dirs(namespace, live_sandbox_ids=()) == []
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert await asyncio.to_thread(namespace_dir.is_dir)  # the crash left them behind...
    manager = EnvManager(backend, ManagerConfig(namespace=namespace))
    report = await manager.start()  # ...and the next start reclaims them
    try:
        assert report is not None and sorted(report.removed_dirs) == sorted(sandbox_ids)
        assert not namespace_dir.exists()
        assert await leftovers(backend, namespace) == []
    finally:
        await manager.close()


async def test_a_sandbox_cannot_fill_the_host_through_its_agent_directory(
    manager: EnvManager, backend: DockerBackend
) -> None:
    lease = await manager.acquire("prog-fill", spec_for(BASE_IMAGE))
    await _until_agent_answers(backend, lease.sandbox_id)
    host = os.statvfs(backend.agent_run_dir)
    # 200 MiB of data and 20000 files, as the sandbox's user, into the only host directory it sees.
    fill = (
        "dd if=/dev/zero of=/.thunder/run/big bs=1M count=200 2>/dev/null; echo dd=$?; "
        "i=0; while [ $i -lt 20000 ] && touch /.thunder/run/f$i 2>/dev/null; do i=$((i+1)); done; echo files=$i; "
        "du -sk /.thunder/run | cut -f1"
    )
    result = await manager.exec(lease, fill, timeout_s=300)
    dd_status, files, kib = result.stdout.text.split()
    assert dd_status != "dd=0", "200 MiB fitted in the agent directory"
    assert int(files.removeprefix("files=")) < 64 and int(kib) <= 128, result.stdout.text
    after = os.statvfs(backend.agent_run_dir)
    # The host filesystem under the agent directories lost at most the noise of a shared machine.
    assert (host.f_bavail - after.f_bavail) * host.f_frsize < 100 << 20
    assert host.f_favail - after.f_favail < 10000
    # The agent still serves the sandbox once the sandbox removes what it wrote.
    with through_agent(backend, at_least=2):
        assert (await manager.exec(lease, "rm -f /.thunder/run/big /.thunder/run/f*")).ok
        assert (await manager.exec(lease, "echo ok")).stdout.text == "ok\n"
