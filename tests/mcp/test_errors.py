"""Bad arguments get a clear error and change nothing."""

from __future__ import annotations

import time

import pytest
from mcp import Client
from pydantic import ValidationError

from mcp_server import ServerConfig
from mcp_server.tools.common import check_seconds
from thunder_env import InvalidSpecError

from .conftest import ServerFactory, call, call_error, create_sandbox, sh

UNKNOWN = "sb-000000000000"


async def test_unknown_sandbox_and_process(client: Client) -> None:
    for tool, extra in (("sandbox_exec", {"command": "true"}), ("file_read", {"path": "x"}),
                        ("sandbox_release", {}), ("port_expose", {"port": 80})):  # fmt: skip
        message = await call_error(client, tool, sandbox_id=UNKNOWN, **extra)
        assert f"unknown sandbox '{UNKNOWN}'" in message and "sandbox_list" in message, message
    assert "unknown background process" in await call_error(client, "process_output", process_id="proc-nope")
    assert "unknown background process" in await call_error(client, "process_kill", process_id="proc-nope")


async def test_another_programs_sandbox_is_refused(make_server: ServerFactory) -> None:
    owner_server = await make_server()
    other_server = await make_server(share_with=owner_server, default_program_id="prog-b")
    async with Client(owner_server) as owner, Client(other_server) as other:
        sandbox_id = await create_sandbox(owner)
        await call(owner, "file_write", sandbox_id=sandbox_id, path="secret.txt", content="mine")
        for tool, extra in (("sandbox_exec", {"command": "rm secret.txt"}), ("file_read", {"path": "secret.txt"}),
                            ("file_write", {"path": "secret.txt", "content": "theirs"}), ("sandbox_release", {}),
                            ("sandbox_snapshot", {}), ("port_expose", {"port": 80})):  # fmt: skip
            message = await call_error(other, tool, sandbox_id=sandbox_id, **extra)
            assert "held by another program" in message and "sandbox_share" in message, (tool, message)
        assert "prog-a" not in (await call(other, "sandbox_list"))["program_id"]
        assert (await call(other, "sandbox_list"))["sandboxes"] == []
        # Sharing is for holders only: prog-b cannot grant itself access.
        assert "held by another program" in await call_error(
            other, "sandbox_share", sandbox_id=sandbox_id, program_id="prog-b"
        )
        assert (await call(owner, "file_read", sandbox_id=sandbox_id, path="secret.txt"))["content"] == "mine"
        # Snapshots too: a program forks only the snapshots it holds.
        snapshot_id = (await call(owner, "sandbox_snapshot", sandbox_id=sandbox_id))["snapshot_id"]
        assert "has no snapshot" in await call_error(other, "sandbox_fork", snapshot_id=snapshot_id)
        assert "has no snapshot" in await call_error(other, "sandbox_create", snapshot_id=snapshot_id)
        assert len(owner_server.manager.sandboxes()) == 1


async def test_paths_escaping_the_file_area_are_refused(client: Client) -> None:
    sandbox_id = await create_sandbox(client)
    await sh(client, sandbox_id, "ln -s /etc etclink; ln -s /etc/created-by-agent dangling; ln -s ../.. up; "
                                 "mkdir -p /tmp/ok && echo fine > /tmp/ok/f && ln -s /tmp/ok inside")  # fmt: skip
    escapes = {
        "../../etc/passwd": "/etc/passwd",
        "/etc/passwd": "/etc/passwd",
        "etclink/passwd": "/etc/passwd",
        "up/etc/passwd": "/etc/passwd",
    }
    for path, resolved in escapes.items():
        message = await call_error(client, "file_read", sandbox_id=sandbox_id, path=path)
        assert "outside the sandbox's file area" in message and "/workspace" in message, message
        if path != resolved:
            assert f"resolves to '{resolved}'" in message
    for path in ("../../etc/evil", "etclink/evil", "dangling", "up/etc/evil"):
        message = await call_error(client, "file_write", sandbox_id=sandbox_id, path=path, content="x")
        assert "outside the sandbox's file area" in message, message
    message = await call_error(client, "file_edit", sandbox_id=sandbox_id, path="etclink/hostname", old_text="a",
                               new_text="b")  # fmt: skip
    assert "outside" in message
    assert "outside" in await call_error(client, "file_list", sandbox_id=sandbox_id, path="/")
    assert "outside" in await call_error(client, "file_list", sandbox_id=sandbox_id, path="etclink")
    nothing = await sh(client, sandbox_id, "ls /etc/evil /etc/created-by-agent 2>&1; true")
    assert nothing["stdout"].count("No such file") == 2
    # A symlink that stays inside is fine, and so is /tmp.
    assert (await call(client, "file_read", sandbox_id=sandbox_id, path="inside/f"))["content"] == "fine\n"
    assert (await call(client, "file_read", sandbox_id=sandbox_id, path="/tmp/ok/f"))["path"] == "/tmp/ok/f"


async def test_invalid_timeouts_and_environments_are_refused(client: Client) -> None:
    sandbox_id = await create_sandbox(client)
    for bad in (-1, 0, 10_000, 1e308):
        message = await call_error(client, "sandbox_exec", sandbox_id=sandbox_id, command="touch ran", timeout_s=bad)
        assert "timeout_s must be a number of seconds in (0, 3600]" in message, message
    assert "timeout_s" in await call_error(
        client, "sandbox_exec", sandbox_id=sandbox_id, command="touch ran", timeout_s="soon"
    )
    for env in ({"A=B": "x"}, {"": "x"}):
        assert "invalid environment variable" in await call_error(
            client, "sandbox_exec", sandbox_id=sandbox_id, command="touch ran", env=env
        )
    started = await sh(client, sandbox_id, "sleep 30", background=True)
    assert "wait_s must be" in await call_error(client, "process_output", process_id=started["process_id"], wait_s=-2)
    assert (await sh(client, sandbox_id, "ls ran 2>&1; true"))["stdout"].endswith("No such file or directory\n")


async def test_snapshot_images_and_image_ids_are_refused_as_images(make_server: ServerFactory) -> None:
    # The image of prog-a's snapshot is a local image like any other: by name or by id (prefix) it used to
    # start a sandbox for prog-b, past the snapshot ownership check.
    owner_server = await make_server()
    other_server = await make_server(share_with=owner_server, default_program_id="prog-b")
    async with Client(owner_server) as owner, Client(other_server) as other:
        sandbox_id = await create_sandbox(owner)
        await call(owner, "file_write", sandbox_id=sandbox_id, path="secret.txt", content="mine")
        snapshot_id = (await call(owner, "sandbox_snapshot", sandbox_id=sandbox_id))["snapshot_id"]
        (info,) = [i for i in owner_server.manager.provisioner.snapshots() if i.snapshot_id == snapshot_id]
        hex_id = info.image_id.removeprefix("sha256:")
        for image in (f"thunder/snapshot:{snapshot_id}", "thunder/snapshot", info.image_id, hex_id, hex_id[:12]):
            message = await call_error(other, "sandbox_create", image=image)
            assert "is a snapshot" in message or "is not offered by this server" in message, (image, message)
            assert "sandbox_create(snapshot_id=" in message or "thunder/python:latest" in message, message
        # Even its owner starts it by snapshot id only; other local images are not offered either.
        message = await call_error(owner, "sandbox_create", image=f"thunder/snapshot:{snapshot_id}")
        assert "is a snapshot" in message and "snapshot_id" in message
        assert "has no snapshot" in await call_error(other, "sandbox_create", snapshot_id=snapshot_id)
        assert len(owner_server.manager.sandboxes()) == 1
        # The configured images are offered, with or without their tag.
        await create_sandbox(other, template=None, image="thunder/base")
        assert len(owner_server.manager.sandboxes()) == 2


async def test_bad_sandbox_requests_create_nothing(make_server: ServerFactory) -> None:
    server = await make_server(allowed_images=("thunder/base:latest",), max_sandboxes_per_program=1)
    async with Client(server) as client:
        cases = {
            "unknown template 'gpu'": {"template": "gpu"},
            "not offered": {"image": "thunder/python:latest"},
            "memory_mb must be at most": {"template": "base", "memory_mb": 1 << 20},
            "cpus must be at most": {"template": "base", "cpus": 64},
            "'bridge' (internet access) is disabled": {"template": "base", "network": "bridge"},
            "workdir must be an absolute path": {"template": "base", "workdir": "relative"},
            "at most one of": {"template": "base", "image": "thunder/base:latest"},
        }
        for expected, arguments in cases.items():
            assert expected in await call_error(client, "sandbox_create", **arguments), expected
        assert server.manager.sandboxes() == []
        await create_sandbox(client)
        assert "at most 1 are allowed" in await call_error(client, "sandbox_create", template="base")
        assert len(server.manager.sandboxes()) == 1


async def test_missing_image_is_explained(make_server: ServerFactory) -> None:
    server = await make_server(allowed_images=("thunder/does-not-exist:1",))
    async with Client(server) as client:
        message = await call_error(client, "sandbox_create", image="thunder/does-not-exist:1")
    assert "not present in the local Docker Engine" in message
    assert server.manager.sandboxes() == []


async def test_file_errors(client: Client) -> None:
    sandbox_id = await create_sandbox(client)
    assert "no such file" in await call_error(client, "file_read", sandbox_id=sandbox_id, path="missing.txt")
    assert "is a directory" in await call_error(client, "file_read", sandbox_id=sandbox_id, path="/tmp")
    await call(client, "file_write", sandbox_id=sandbox_id, path="two.txt", content="1\n2\n")
    assert "past the end" in await call_error(client, "file_read", sandbox_id=sandbox_id, path="two.txt", offset=9)
    assert "not a directory" in await call_error(client, "file_list", sandbox_id=sandbox_id, path="two.txt")
    assert "not a regular file" in await call_error(
        client, "file_write", sandbox_id=sandbox_id, path="/tmp", content="x"
    )
    assert "identical" in await call_error(
        client, "file_edit", sandbox_id=sandbox_id, path="two.txt", old_text="1", new_text="1"
    )


async def test_huge_files_are_refused_by_file_read_and_file_edit(client: Client) -> None:
    # A sparse 50 GB file costs the sandbox nothing; reading it used to load all of it into the server.
    sandbox_id = await create_sandbox(client)
    await sh(client, sandbox_id, "truncate -s 50G big && echo small > small")
    limit = ServerConfig.model_fields["file_max_bytes"].default
    started = time.monotonic()
    for tool, extra in (("file_read", {}), ("file_edit", {"old_text": "a", "new_text": "b"})):
        message = await call_error(client, tool, sandbox_id=sandbox_id, path="big", **extra)
        assert f"read limit is {limit} bytes and the file is {50 << 30} bytes" in message, (tool, message)
        assert "head -c" in message
    assert time.monotonic() - started < 20
    assert (await call(client, "file_read", sandbox_id=sandbox_id, path="small"))["content"] == "small\n"


def test_non_finite_seconds_are_refused() -> None:
    # JSON cannot carry NaN or infinity (clients send null), but a direct caller could.
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(InvalidSpecError, match="timeout_s must be a number of seconds"):
            check_seconds("timeout_s", bad, 60)
    assert check_seconds("timeout_s", 60, 60) == 60


def test_configs_reject_bad_values() -> None:
    with pytest.raises(ValidationError, match="invalid program id"):
        ServerConfig(default_program_id="has space")
    with pytest.raises(ValidationError, match="default_wait_s must not exceed"):
        ServerConfig(default_wait_s=10, max_wait_s=5)
    with pytest.raises(ValidationError, match="absolute"):
        ServerConfig(extra_file_roots=("tmp",))
