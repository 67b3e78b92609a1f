"""Host ports for sandbox services: a loopback TCP forwarder per exposed port.

The kernel picks each host port (bind to port 0), so concurrent exposes can never collide, and a
forwarder dies with its process, so a crash cannot leave a port published behind.
"""

from __future__ import annotations

import asyncio
import contextlib

from .results import PortBinding


class PortForwarder:
    def __init__(self, binding: PortBinding, server: asyncio.Server, target: tuple[str, int]) -> None:
        self.binding = binding
        self._server = server
        self._target = target
        self._pipes: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, sandbox_id: str, host: str, target_host: str, container_port: int) -> PortForwarder:
        holder: list[PortForwarder] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await holder[0]._serve(reader, writer)

        server = await asyncio.start_server(handle, host=host, port=0)
        port = server.sockets[0].getsockname()[1]
        forwarder = cls(PortBinding(sandbox_id, container_port, host, port), server, (target_host, container_port))
        holder.append(forwarder)
        return forwarder

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.close()
            return
        tasks = {
            asyncio.create_task(_pipe(client_reader, upstream_writer)),
            asyncio.create_task(_pipe(upstream_reader, client_writer)),
        }
        self._pipes |= tasks
        try:
            await asyncio.gather(*tasks)
        finally:
            self._pipes -= tasks
            for writer in (client_writer, upstream_writer):
                with contextlib.suppress(Exception):
                    writer.close()

    async def close(self) -> None:
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass  # either side went away; _serve closes both
