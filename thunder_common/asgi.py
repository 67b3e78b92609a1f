"""The one raw-ASGI JSON reply, for middleware that answers before any framework sees the request."""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.types import Send


async def send_json(send: Send, status: int, payload: object, headers: Mapping[str, str] | None = None) -> None:
    """Send ``payload`` as a complete JSON response with ``status`` and any extra ``headers``."""
    body = json.dumps(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
