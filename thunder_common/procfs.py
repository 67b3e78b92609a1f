"""The one reader of Linux /proc/<pid>/stat, for the env manager's owner identity and the CPU vLLM helper's
process-group scans. (`thunder_sched/cpu_vllm/_launch.py` keeps a copy: it runs in the vLLM venv, where the
repository's packages are absent.)"""

from __future__ import annotations

from pathlib import Path

PROC = Path("/proc")


def stat_fields(pid: int | str, proc: Path = PROC) -> list[str] | None:
    """Fields 3 on of /proc/<pid>/stat (state, ppid, pgrp, ... : index i is field i + 3), or None when the
    process is gone. Counted after the command's last ')', since the command may hold spaces and ')'."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def group_members(pgid: int, proc: Path = PROC, *, exclude: int | None = None) -> list[int]:
    """Live (non-zombie) processes of a process group. Blocking (scans /proc): from async code, in a thread."""
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        fields = stat_fields(entry.name, proc)
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members
