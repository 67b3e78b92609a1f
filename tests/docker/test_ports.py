"""Ports exposed on loopback through the manager's forwarders."""

from __future__ import annotations

import asyncio

import pytest

from thunder_env import EnvManager, PortExposeError, SandboxSpec

from ._helpers import start_background
from .conftest import BASE_IMAGE


async def _fetch(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /index.html HTTP/1.0\r\n\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_expose_serves_traffic_and_is_freed_with_the_sandbox(manager: EnvManager) -> None:
    lease = await manager.acquire("prog-web", SandboxSpec(image=BASE_IMAGE, network="internal"))
    await manager.write_file(lease, "/www/index.html", b"hello from the sandbox")
    httpd = start_background(manager, lease, "httpd -f -p 8080 -h /www")
    binding = await manager.expose_port(lease, 8080)
    assert binding.host == "127.0.0.1" and binding.host_port > 0
    body = b""
    for _ in range(50):  # httpd may need a moment to listen
        body = await _fetch(binding.host, binding.host_port)
        if b"hello" in body:
            break
        await asyncio.sleep(0.1)
    assert b"hello from the sandbox" in body
    assert manager.sandbox_info(lease).ports == (binding,) and httpd.running
    await manager.release(lease)
    with pytest.raises(OSError):
        await _fetch(binding.host, binding.host_port)


async def test_fifty_concurrent_exposes_never_collide(manager: EnvManager) -> None:
    lease = await manager.acquire("prog-ports", SandboxSpec(image=BASE_IMAGE, network="internal"))
    bindings = await asyncio.gather(*(manager.expose_port(lease, 9000 + i) for i in range(50)))
    assert len({b.host_port for b in bindings}) == 50
    assert await manager.expose_port(lease, 9000) == bindings[0]  # idempotent per container port


async def test_expose_without_network_is_a_clear_error(manager: EnvManager, base_spec: SandboxSpec) -> None:
    lease = await manager.acquire("prog-nonet", base_spec)
    with pytest.raises(PortExposeError, match="network='internal'"):
        await manager.expose_port(lease, 80)
    with pytest.raises(PortExposeError, match="outside"):
        await manager.expose_port(lease, 70000)
