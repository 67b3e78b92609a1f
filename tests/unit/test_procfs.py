"""The one /proc/<pid>/stat reader (thunder_common.procfs), on a made-up /proc and on this process."""

from __future__ import annotations

import os
from pathlib import Path

from thunder_common.procfs import group_members, stat_fields


def _proc(root: Path, pid: int, command: str, state: str, pgrp: int) -> None:
    (root / str(pid)).mkdir()
    # pid (comm) state ppid pgrp session ... : 20 fields after the command, field 22 (start ticks) = 4242
    rest = [state, "1", str(pgrp), *["0"] * 16, "4242"]
    (root / str(pid) / "stat").write_text(f"{pid} ({command}) " + " ".join(rest) + "\n")


def test_fields_are_counted_after_the_commands_last_parenthesis(tmp_path: Path) -> None:
    _proc(tmp_path, 10, "evil) Z 1 77 (name", "S", 5)
    fields = stat_fields(10, tmp_path)
    assert fields is not None and fields[:3] == ["S", "1", "5"] and fields[19] == "4242"
    assert stat_fields(11, tmp_path) is None  # gone


def test_group_members_are_live_processes_of_the_group(tmp_path: Path) -> None:
    _proc(tmp_path, 10, "server", "S", 5)
    _proc(tmp_path, 11, "worker) R 1 5", "R", 6)  # a command that mimics group 5
    _proc(tmp_path, 12, "zombie", "Z", 5)
    _proc(tmp_path, 13, "self", "S", 5)
    (tmp_path / "self").mkdir()
    assert sorted(group_members(5, tmp_path)) == [10, 13]
    assert group_members(5, tmp_path, exclude=13) == [10]


def test_this_process_is_in_its_own_group() -> None:
    assert os.getpid() in group_members(os.getpgid(0))
    fields = stat_fields(os.getpid())
    assert fields is not None and int(fields[1]) == os.getppid()
