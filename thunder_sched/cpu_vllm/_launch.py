"""Supervise one vLLM server so that none of its processes outlive it or its parent.

Run as ``python _launch.py --parent-pid PID --grace SECONDS -- SERVER_ARGV...`` in a new session (so this
process leads a process group). vLLM's API server spawns an engine-core and a worker process that survive
a SIGKILL of the API server; this supervisor therefore owns the whole group:

- on SIGTERM/SIGINT, or when the parent dies (PR_SET_PDEATHSIG), it sends SIGTERM to the server, waits up
  to the grace period, then SIGKILLs every remaining process of its group;
- when the server exits on its own, it cleans up the group the same way and exits with the server's code.

Standard library only; ``server.py`` launches it with the vLLM venv's Python.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        print("launcher: prctl(PR_SET_PDEATHSIG) failed", file=sys.stderr)
    # The parent may have died before prctl took effect.
    if os.getppid() != parent_pid:
        sys.exit(f"launcher: parent {parent_pid} is gone; not starting the server")


def _group_members(pgid: int) -> list[int]:  # thunder_common.procfs.group_members: not importable here
    """Live (non-zombie) processes of a process group, this one excluded."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _kill_group(pgid: int, grace: float) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        members = _group_members(pgid)
        if not members:
            return
        for pid in members:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--grace", type=float, default=15.0)
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        parser.error("missing the server command after --")

    stop_requested: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    _die_with_parent(args.parent_pid)
    pgid = os.getpgid(0)

    server = subprocess.Popen(argv)
    print(f"launcher: server pid {server.pid}, process group {pgid}", file=sys.stderr, flush=True)
    while server.poll() is None and not stop_requested:
        time.sleep(0.2)

    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=args.grace)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    code = server.returncode
    # Engine-core and worker processes may remain (always after a kill); end them too.
    _kill_group(pgid, grace=min(args.grace, 10.0))
    print(f"launcher: server exited with {code}", file=sys.stderr, flush=True)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
