"""Internal networks (issue 11, item 7): a program's sandboxes reach each other, never another program's;
a program's network goes with its last sandbox."""

from __future__ import annotations

import asyncio
import secrets

from thunder_env import EnvManager, Lease, ManagerConfig, SandboxSpec
from thunder_env.docker import DockerBackend
from thunder_env.docker.lifecycle import container_name

from ._helpers import crash_after_first_line, eventually, start_background
from .conftest import BASE_IMAGE, ManagerFactory, leftovers

SPEC = SandboxSpec(image=BASE_IMAGE, network="internal", memory_bytes=256 << 20)


async def _address(backend: DockerBackend, lease: Lease) -> str:
    info = await backend.client.containers.container(container_name(lease.sandbox_id)).show()
    (network,) = info["NetworkSettings"]["Networks"].values()
    return str(network["IPAddress"])


async def _fetch(manager: EnvManager, lease: Lease, address: str) -> str:
    """What a sandbox gets from http://address:8080/index.html (busybox nc: the image's wget crashes)."""
    request = "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n'"
    result = await manager.exec(lease, f"{request} | nc -w 3 {address} 8080", timeout_s=30)
    return result.stdout.text + result.stderr.text


async def _networks(backend: DockerBackend, namespace: str) -> list[str]:
    found = await backend.list_managed({"thunder.namespace": namespace})
    return [r.resource_id for r in found if r.kind == "network"]


async def test_programs_do_not_reach_each_other(manager: EnvManager, backend: DockerBackend) -> None:
    server = await manager.acquire("prog-a", SPEC)
    neighbour = await manager.acquire("prog-a", SPEC)
    stranger = await manager.acquire("prog-b", SPEC)
    await manager.write_file(server, "/www/index.html", b"secret of program a")
    httpd = start_background(manager, server, "httpd -f -p 8080 -h /www")
    address = await _address(backend, server)

    async def neighbour_reaches() -> bool:  # httpd may need a moment to listen
        return "secret of program a" in await _fetch(manager, neighbour, address)

    await eventually(neighbour_reaches, what="a sandbox of the same program reaches the service")
    answer = await _fetch(manager, stranger, address)
    assert "secret" not in answer, answer  # another program's sandbox cannot
    assert httpd.running

    namespace = manager.config.namespace
    assert len(await _networks(backend, namespace)) == 2  # one per program
    await manager.end_program("prog-a")
    assert len(await _networks(backend, namespace)) == 1
    await manager.end_program("prog-b")
    assert await _networks(backend, namespace) == []  # gone once both programs ended


async def test_warm_sandboxes_reach_no_other_sandbox(manager: EnvManager, backend: DockerBackend) -> None:
    """Warm pool sandboxes (and template builds) belong to no program when they start: they share one
    network with inter-container traffic off. The host still reaches them (port_expose)."""
    await manager.provisioner.configure_pool(SPEC, min_size=2, max_size=2)
    await manager.provisioner.wait_for_pool(SPEC, at_least=2, timeout_s=60)
    first = await manager.acquire("prog-a", SPEC)
    second = await manager.acquire("prog-b", SPEC)
    assert manager.sandbox_info(first).origin == manager.sandbox_info(second).origin == "warm"
    await manager.provisioner.configure_pool(SPEC, min_size=0, max_size=0)
    await manager.write_file(first, "/www/index.html", b"secret of program a")
    httpd = start_background(manager, first, "httpd -f -p 8080 -h /www")
    binding = await manager.expose_port(first, 8080)

    async def host_reaches() -> bool:
        try:
            reader, writer = await asyncio.open_connection(binding.host, binding.host_port)
        except OSError:
            return False
        writer.write(b"GET /index.html HTTP/1.0\r\n\r\n")
        body = await reader.read()
        writer.close()
        return b"secret of program a" in body

    await eventually(host_reaches, what="the host reaches the warm sandbox's service")
    answer = await _fetch(manager, second, await _address(backend, first))
    assert "secret" not in answer, answer
    assert httpd.running


HOLDER = """
import asyncio, sys
from thunder_env import EnvManager, ManagerConfig, SandboxSpec
from thunder_env.docker import DockerBackend

async def main():
    manager = EnvManager(DockerBackend(), ManagerConfig(namespace=sys.argv[1]))
    await manager.start()
    await manager.acquire("crashy", SandboxSpec(image=sys.argv[2], network="internal"))
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_reconcile_removes_a_killed_managers_networks(backend: DockerBackend) -> None:
    namespace = "test-netcrash-" + secrets.token_hex(4)
    assert await crash_after_first_line(HOLDER, namespace, BASE_IMAGE) == b"ready\n"
    assert len(await _networks(backend, namespace)) == 1  # the crash left its program's network...
    async with EnvManager(backend, ManagerConfig(namespace=namespace)):  # ...the next start removes it
        assert await _networks(backend, namespace) == []
        assert await leftovers(backend, namespace) == []


async def test_a_network_whose_removal_failed_is_removed_later_by_its_live_manager(
    make_manager: ManagerFactory, backend: DockerBackend
) -> None:
    # Found by the chaos benchmark: a removal refused by the engine (endpoints still active, dockerd
    # restarting) left the network until a reconcile, that is for the whole life of the manager.
    manager = await make_manager(health_interval_s=None)
    lease = await manager.acquire("p", SPEC)
    [network] = await _networks(backend, manager.config.namespace)
    # Something else on the program's network: the engine refuses to remove it (active endpoints).
    blocker = await backend.client.containers.run(
        {"Image": BASE_IMAGE, "Cmd": ["sleep", "300"], "HostConfig": {"NetworkMode": network}},
        name="thunder-test-blocker-" + secrets.token_hex(4),
    )
    try:
        await manager.release(lease)
        assert await _networks(backend, manager.config.namespace) == [network]
    finally:
        await blocker.delete(force=True)
    await manager.check_health()  # retries the removal
    assert await _networks(backend, manager.config.namespace) == []


async def test_close_removes_a_network_whose_removal_failed(
    make_manager: ManagerFactory, backend: DockerBackend
) -> None:
    manager = await make_manager(health_interval_s=None)
    lease = await manager.acquire("p", SPEC)
    [network] = await _networks(backend, manager.config.namespace)
    blocker = await backend.client.containers.run(
        {"Image": BASE_IMAGE, "Cmd": ["sleep", "300"], "HostConfig": {"NetworkMode": network}},
        name="thunder-test-blocker-" + secrets.token_hex(4),
    )
    try:
        await manager.release(lease)
    finally:
        await blocker.delete(force=True)
    await manager.close()
    assert await _networks(backend, manager.config.namespace) == []
