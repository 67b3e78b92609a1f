"""Tells the environment manager that a program ended, so its sandboxes are reclaimed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import httpx

log = logging.getLogger(__name__)

ProgramEndCallback = Callable[[str], Awaitable[None]]


def end_url(template: str, program_id: str) -> str:
    pid = quote(program_id, safe="")
    if "{program_id}" in template:
        return template.replace("{program_id}", pid)
    return f"{template.rstrip('/')}/programs/{pid}/end"


class ProgramEndNotifier:
    """Runs the injected callback (in-process) or POSTs to the env manager; failures are logged, never lost
    silently, and never block the scheduler. `close()` waits for notifications still under way."""

    def __init__(self, callback: ProgramEndCallback | None, url_template: str | None, token: str | None = None) -> None:
        self._callback = callback
        self._url = url_template
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.failures = 0

    @property
    def enabled(self) -> bool:
        return self._callback is not None or self._url is not None

    def bind(self, client: httpx.AsyncClient) -> None:
        self._client = client

    def notify(self, program_id: str) -> None:
        if not self.enabled:
            return
        task = asyncio.get_running_loop().create_task(self._send(program_id), name=f"program-end:{program_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, program_id: str) -> None:
        try:
            if self._callback is not None:
                await self._callback(program_id)
            elif self._url is not None and self._client is not None:
                resp = await self._client.post(end_url(self._url, program_id), headers=self._headers, timeout=30.0)
                resp.raise_for_status()
        except Exception:  # reported, counted; the program is gone either way
            self.failures += 1
            log.exception("on_program_end failed for program %r; its sandboxes may need reconciliation", program_id)

    async def close(self, timeout_s: float = 30.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
        for task in list(self._tasks):
            task.cancel()
