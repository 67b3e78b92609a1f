"""File operations inside real sandboxes, including the awkward cases."""

from __future__ import annotations

import io
import resource
import tarfile
import time

import pytest

from thunder_env import EnvManager, FileOperationError, FileTooLargeError, SandboxSpec


@pytest.fixture
async def lease(manager: EnvManager, base_spec: SandboxSpec):
    return await manager.acquire("prog-files", base_spec)


async def test_write_creates_parents_and_read_roundtrips(manager: EnvManager, lease) -> None:
    path = await manager.write_file(lease, "deep/er/dir with spaces/f.txt", b"0123456789", mode=0o600)
    assert path == "/workspace/deep/er/dir with spaces/f.txt"
    assert await manager.read_file(lease, path) == b"0123456789"
    assert await manager.read_file(lease, path, offset=3, length=4) == b"3456"
    assert await manager.read_file(lease, path, offset=20) == b""
    stat = await manager.exec(lease, ["stat", "-c", "%a %s", path])
    assert stat.stdout.text == "600 10\n"


async def test_binary_and_empty_files(manager: EnvManager, lease) -> None:
    data = bytes(range(256)) * 100
    await manager.write_file(lease, "/tmp/bin", data)
    assert await manager.read_file(lease, "/tmp/bin") == data
    await manager.write_file(lease, "/tmp/empty", b"")
    assert await manager.read_file(lease, "/tmp/empty") == b""


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


async def test_huge_sparse_file_is_refused_without_being_loaded(manager: EnvManager, lease) -> None:
    # 50 GB that cost the sandbox no disk: the archive of it is 50 GB of zeros. Before the bound, the
    # manager read all of it into memory before looking at the size.
    assert (await manager.exec(lease, ["truncate", "-s", "50G", "/tmp/big"])).exit_code == 0
    limit = manager.config.max_read_bytes
    rss_before, started = _peak_rss_bytes(), time.monotonic()
    expected = f"read limit is {limit} bytes and the file is {50 << 30} bytes"
    with pytest.raises(FileTooLargeError, match=expected) as info:
        await manager.read_file(lease, "/tmp/big")
    assert info.value.limit == limit and info.value.size == 50 << 30
    assert time.monotonic() - started < 10, "the size is known from the engine's stat: nothing to stream"
    assert _peak_rss_bytes() - rss_before < 256 << 20
    # Through a symlink, and with a smaller per-call limit: the same.
    await manager.exec(lease, ["ln", "-s", "/tmp/big", "/tmp/link"])
    with pytest.raises(FileTooLargeError, match="read limit is 4096 bytes"):
        await manager.read_file(lease, "/tmp/link", max_bytes=4096)


async def test_archive_stream_stops_past_the_bound_when_the_size_is_unknown(manager: EnvManager, lease) -> None:
    # A directory's size says nothing about its archive: the stream itself is cut once past the bound.
    assert (await manager.exec(lease, ["sh", "-c", "mkdir /tmp/d && truncate -s 50G /tmp/d/big"])).exit_code == 0
    rss_before, started = _peak_rss_bytes(), time.monotonic()
    with pytest.raises(FileTooLargeError, match=f"read limit is {1 << 20} bytes"):
        await manager.backend.get_archive(lease.sandbox_id, "/tmp/d", max_bytes=1 << 20)
    assert time.monotonic() - started < 10
    assert _peak_rss_bytes() - rss_before < 256 << 20
    # The engine connection was dropped, not left streaming: the sandbox still answers normally.
    await manager.write_file(lease, "/tmp/d/small", b"ok")
    assert await manager.read_file(lease, "/tmp/d/small", max_bytes=1 << 20) == b"ok"


async def test_missing_file_and_directory_errors(manager: EnvManager, lease) -> None:
    with pytest.raises(FileOperationError, match="no such file"):
        await manager.read_file(lease, "/nope/missing.txt")
    with pytest.raises(FileOperationError, match="is a directory"):
        await manager.read_file(lease, "/tmp")
    with pytest.raises(FileOperationError, match="directory path"):
        await manager.write_file(lease, "/tmp/dir/", b"x")
    with pytest.raises(FileOperationError, match="no such file"):
        await manager.list_dir(lease, "/nope")
    with pytest.raises(FileOperationError, match="not a directory"):
        await manager.list_dir(lease, "/etc/passwd")


async def test_dotdot_stays_inside_the_container(manager: EnvManager, lease) -> None:
    await manager.write_file(lease, "../../../../tmp/escaped.txt", b"inside")
    assert (await manager.exec(lease, "cat /tmp/escaped.txt")).stdout.text == "inside"


async def test_symlinks_are_followed_inside_the_container(manager: EnvManager, lease) -> None:
    await manager.write_file(lease, "/tmp/target.txt", b"via link")
    await manager.exec(lease, "ln -s /tmp/target.txt /workspace/link; ln -s /etc/hostname-nope /workspace/dangling")
    assert await manager.read_file(lease, "link") == b"via link"
    with pytest.raises(FileOperationError):
        await manager.read_file(lease, "dangling")


async def test_list_dir_kinds_and_sizes(manager: EnvManager, lease) -> None:
    await manager.write_file(lease, "proj/a.txt", b"abc")
    await manager.write_file(lease, "proj/sub dir/b.txt", b"")
    await manager.exec(lease, "ln -s a.txt /workspace/proj/link")
    entries = {e.name: e for e in await manager.list_dir(lease, "proj")}
    assert set(entries) == {"a.txt", "sub dir", "link"}
    assert (entries["a.txt"].kind, entries["a.txt"].size) == ("file", 3)
    assert entries["sub dir"].kind == "dir" and entries["link"].kind == "symlink"


async def test_upload_and_download_tar(manager: EnvManager, lease) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("pkg/mod.py")
        payload = b"print('hi')\n"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    await manager.exec(lease, "mkdir -p /workspace/up")
    await manager.upload_tar(lease, "/workspace/up", buffer.getvalue())
    assert await manager.read_file(lease, "up/pkg/mod.py") == payload
    archive = await manager.download_tar(lease, "up/pkg")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
        member = tar.extractfile("pkg/mod.py")
        assert member is not None and member.read() == payload
    assert "pkg/mod.py" in names
