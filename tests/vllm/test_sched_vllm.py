"""The scheduler in front of the real CPU vLLM (helper fixture `cpu_vllm`): identical outputs, capacity,
pause/restore under oversubscription, release, a replica that dies, and a client that disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from thunder_common.serving import serving
from thunder_sched.app import create_app
from thunder_sched.config import PolicyConfig, SchedulerConfig
from thunder_sched.vllm_metrics import gauge_value

pytestmark = pytest.mark.vllm

TIMEOUT = httpx.Timeout(120.0, connect=5.0)


@asynccontextmanager
async def scheduler(
    backends: list[str], on_end: Callable[[str], Awaitable[None]] | None = None, **overrides: Any
) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    config = SchedulerConfig(backends=tuple(backends), interval_s=0.2, backend_refresh_s=1.0, **overrides)
    async with serving(create_app(config, on_program_end=on_end)) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client:
            yield running.url, client


class Relay:
    """A TCP relay to the real vLLM: a second 'replica' that can be killed (same engine, own address)."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def kill(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in self._writers:
                w.transport.abort()
            await self._server.wait_closed()
            self._server = None


def chat_body(model: str, content: str, **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0, **kw}


def words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    vocab = ["alpha", "build", "cache", "delta", "error", "fix", "green", "heap", "index", "join", "kernel"]
    return " ".join(rng.choice(vocab) for _ in range(n))


async def stream_text(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[str, list[dict]]:
    text, chunks = [], []
    async with client.stream("POST", url, json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                chunks.append(chunk)
                for choice in chunk.get("choices", []):
                    text.append(choice.get("delta", {}).get("content") or choice.get("text") or "")
    return "".join(text), chunks


async def program(client: httpx.AsyncClient, pid: str) -> dict[str, Any]:
    r = await client.get(f"/programs/{pid}")
    assert r.status_code == 200, r.text
    return r.json()


async def wait_for(check: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    for _ in range(int(within_s / 0.1)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {within_s}s waiting for {what}")


async def test_capacity_is_read_from_vllm_metrics(cpu_vllm) -> None:
    capacity = await cpu_vllm.capacity_tokens()
    async with scheduler([cpu_vllm.url]) as (_, client):
        health = (await client.get("/health")).json()
        assert health["backends"][0]["capacity_tokens"] == capacity > 0
        metrics = (await client.get("/metrics")).text
        assert f'thunder_backend_capacity_tokens{{backend="{cpu_vllm.url}"}} {float(capacity)}' in metrics
        models = (await client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == [cpu_vllm.model]


async def test_proxied_outputs_equal_direct_outputs(cpu_vllm) -> None:
    m = cpu_vllm.model
    async with (
        scheduler([cpu_vllm.url]) as (_, proxied),
        httpx.AsyncClient(base_url=cpu_vllm.url, timeout=TIMEOUT) as direct,
    ):
        body = chat_body(m, words(60, 1), max_tokens=24)
        d = (await direct.post("/v1/chat/completions", json=body)).json()
        p = (await proxied.post("/v1/chat/completions", json={**body, "program_id": "eq"})).json()
        assert p["choices"][0]["message"] == d["choices"][0]["message"]
        assert p["usage"] == d["usage"]
        info = await program(proxied, "eq")
        assert info["tokens"] == d["usage"]["prompt_tokens"] + d["usage"]["completion_tokens"]
        assert info["tokens_exact"]

        comp = {"model": m, "prompt": words(40, 2), "max_tokens": 16, "temperature": 0}
        d = (await direct.post("/v1/completions", json=comp)).json()
        p = (await proxied.post("/v1/completions", json=comp, headers={"X-Program-Id": "eq-c"})).json()
        assert p["choices"][0]["text"] == d["choices"][0]["text"] and p["usage"] == d["usage"]

        stream = {**body, "stream": True}
        d_text, d_chunks = await stream_text(direct, "/v1/chat/completions", stream)
        p_text, p_chunks = await stream_text(proxied, "/v1/chat/completions", {**stream, "program_id": "eq-s"})
        assert p_text == d_text and len(p_chunks) == len(d_chunks)
        assert not any("usage" in c for c in p_chunks)  # the usage chunk we asked for is not leaked
        info = await program(proxied, "eq-s")
        assert info["tokens_exact"] and info["tokens"] == (await program(proxied, "eq"))["tokens"]

        with_usage = {**stream, "stream_options": {"include_usage": True}}
        _, d_chunks = await stream_text(direct, "/v1/chat/completions", with_usage)
        _, p_chunks = await stream_text(proxied, "/v1/chat/completions", with_usage)
        assert p_chunks[-1]["usage"] == d_chunks[-1]["usage"]

        comp_stream = {**comp, "stream": True}
        d_text, _ = await stream_text(direct, "/v1/completions", comp_stream)
        p_text, _ = await stream_text(proxied, "/v1/completions", comp_stream)
        assert p_text == d_text


async def test_oversubscription_pauses_and_restores_programs(cpu_vllm) -> None:
    """Three ~4.5k-token programs fill the 15.6k pool; a fourth is held until one is released; a
    program returning with a longer context makes the shortest acting one pause; it is restored later."""
    m = cpu_vllm.model
    capacity = await cpu_vllm.capacity_tokens()
    ends: list[str] = []

    async def on_end(pid: str) -> None:
        ends.append(pid)

    # Keep acting programs' caches (deterministic pressure), memory admission alone (no work-conservation floor:
    # with nothing running, the floor would serve p4 at once; test_an_idle_engine_serves_... covers that).
    policy = PolicyConfig(time_decay=False, min_running=0)
    async with scheduler([cpu_vllm.url], on_end, policy=policy) as (_, client):
        size = capacity // 3 - 300  # three fit, four do not
        tokens_per_word = await client.post("/v1/chat/completions", json=chat_body(m, words(500, 9), max_tokens=1))
        per_word = tokens_per_word.json()["usage"]["prompt_tokens"] / 500
        n_words = int(size / per_word)
        for i, pid in enumerate(["p1", "p2", "p3"]):
            r = await client.post(
                "/v1/chat/completions", json=chat_body(m, words(n_words - 40 * i, i), max_tokens=4, program_id=pid)
            )
            assert r.status_code == 200, r.text
        infos = {pid: await program(client, pid) for pid in ["p1", "p2", "p3"]}
        assert all(i["status"] == "active" and i["phase"] == "acting" for i in infos.values())

        held = asyncio.create_task(
            client.post("/v1/chat/completions", json=chat_body(m, words(n_words, 4), max_tokens=4, program_id="p4"))
        )
        try:

            async def p4_held() -> bool:
                r = await client.get("/programs/p4")
                return r.status_code == 200 and r.json()["held"] == 1

            await wait_for(p4_held, 30, "p4 to be held")
            assert (await program(client, "p4"))["status"] == "paused" and not held.done()
            metrics = (await client.get("/metrics")).text
            assert "thunder_programs_waiting 1.0" in metrics

            # A held request whose client gives up is dropped from the queue, not forwarded later.
            body = chat_body(m, words(n_words, 5), max_tokens=4, program_id="p5")
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/v1/chat/completions", json=body, timeout=httpx.Timeout(2.0, connect=5.0))

            async def p5_dropped() -> bool:
                info = await program(client, "p5")
                return info["held"] == 0 and info["status"] == "paused"

            await wait_for(p5_dropped, 10, "p5's abandoned request to leave the queue")

            # p1 returns with a longer context: over capacity, the shortest acting program is paused.
            sizes = {pid: (await program(client, pid))["tokens"] for pid in ("p2", "p3")}
            shortest, other = sorted(sizes, key=sizes.__getitem__)
            grown = n_words + int(1200 / per_word)
            r = await client.post(
                "/v1/chat/completions", json=chat_body(m, words(grown, 0), max_tokens=4, program_id="p1")
            )
            assert r.status_code == 200
            assert (await program(client, shortest))["status"] == "paused"
            assert (await program(client, other))["status"] == "active"
            metrics = (await client.get("/metrics")).text
            assert 'thunder_pauses_total{reason="thrashing"} 1.0' in metrics

            # Releasing p1 and the other active program makes room: p4's held request completes, then the
            # paused program is restored on its next request.
            released = (await client.post("/programs/p1/release")).json()
            assert released["status"] == "terminated"
            await client.post(f"/programs/{other}/release")
            r = await asyncio.wait_for(held, 60)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
            seed = int(shortest[1]) - 1
            r = await client.post(
                "/v1/chat/completions",
                json=chat_body(m, words(n_words, seed), max_tokens=4, program_id=shortest),
            )
            assert r.status_code == 200
            restored = await program(client, shortest)
            assert restored["status"] == "active" and restored["restores"] == 1
            metrics = (await client.get("/metrics")).text
            assert "thunder_restores_total 1.0" in metrics
            assert "thunder_programs_waiting 0.0" in metrics
            listed = {p["program_id"] for p in (await client.get("/programs")).json()}
            assert {shortest, "p4"} <= listed and not {"p1", other} & listed
        finally:
            if not held.done():  # a failed assertion must not leave the request behind
                held.cancel()
    assert sorted(ends) == sorted(["p1", other])


async def test_an_idle_engine_serves_a_waiting_program_at_once_by_default(cpu_vllm) -> None:
    """Work conservation on the real engine: two programs hold most of the pool and are acting (nothing
    runs); a third that does not fit by memory is served at once (floor restore), and the next round brings
    the held load back under the pool by pausing an acting program."""
    m = cpu_vllm.model
    capacity = await cpu_vllm.capacity_tokens()
    policy = PolicyConfig(time_decay=False)  # default floor: min_running 1
    assert policy.min_running == 1
    async with scheduler([cpu_vllm.url], policy=policy) as (_, client):
        probe = await client.post("/v1/chat/completions", json=chat_body(m, words(500, 19), max_tokens=1))
        per_word = probe.json()["usage"]["prompt_tokens"] / 500
        n_words = int((capacity // 2 - 500) / per_word)
        for i, pid in enumerate(["a", "b"]):
            r = await client.post(
                "/v1/chat/completions", json=chat_body(m, words(n_words, 20 + i), max_tokens=4, program_id=pid)
            )
            assert r.status_code == 200, r.text
        body = chat_body(m, words(n_words // 2, 22), max_tokens=4, program_id="c")
        r = await asyncio.wait_for(client.post("/v1/chat/completions", json=body), 60)
        assert r.status_code == 200
        assert "thunder_floor_restores_total 1.0" in (await client.get("/metrics")).text

        async def one_paused() -> bool:
            statuses = [(await program(client, pid))["status"] for pid in ("a", "b")]
            return "paused" in statuses

        await wait_for(one_paused, 10, "an acting program to give way")


async def test_killed_replica_marks_backend_down_and_program_moves(cpu_vllm) -> None:
    """Second replica = a relay to the same engine on its own port; killing the relay kills that replica."""
    relay = Relay(int(cpu_vllm.url.rsplit(":", 1)[1]))
    await relay.start()
    relay_url = f"http://127.0.0.1:{relay.port}"
    m = cpu_vllm.model
    try:
        async with scheduler([cpu_vllm.url, relay_url]) as (_, client):
            await wait_for(lambda: _all_healthy(client), 15, "both replicas to be up")
            # Two programs land on the two replicas (each goes where there is most free room).
            for pid in ("a", "b"):
                body = chat_body(m, words(100, 6), max_tokens=2, program_id=pid)
                assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
            placed = {(await program(client, pid))["backend"]: pid for pid in ("a", "b")}
            assert set(placed) == {cpu_vllm.url, relay_url}
            victim = placed[relay_url]

            # A stream is running on the relay when it dies: the client gets an error event, state ends.
            body = chat_body(m, words(100, 6), max_tokens=3000, ignore_eos=True, stream=True, program_id=victim)
            got_error = False
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                n = 0
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        n += 1
                        if n == 3:
                            await relay.kill()
                        if '"error"' in line:
                            got_error = True
            assert got_error
            info = await program(client, victim)
            assert info["in_flight"] == 0 and info["phase"] == "acting"

            # The next request is served by the surviving replica, with the KV counted lost.
            r = await client.post(
                "/v1/chat/completions", json=chat_body(m, words(120, 6), max_tokens=2, program_id=victim)
            )
            assert r.status_code == 200, r.text
            info = await program(client, victim)
            assert info["backend"] == cpu_vllm.url and info["kv_lost"] >= 1
            health = {b["url"]: b["healthy"] for b in (await client.get("/health")).json()["backends"]}
            assert health == {cpu_vllm.url: True, relay_url: False}
            metrics = (await client.get("/metrics")).text
            assert f'thunder_backend_healthy{{backend="{relay_url}"}} 0.0' in metrics
    finally:
        await relay.kill()


async def _all_healthy(client: httpx.AsyncClient) -> bool:
    health = (await client.get("/health")).json()
    return all(b["healthy"] and b["capacity_tokens"] > 0 for b in health["backends"])


async def _running_on_vllm(url: str) -> float:
    async with httpx.AsyncClient(timeout=10) as c:
        return gauge_value((await c.get(f"{url}/metrics")).text, "vllm:num_requests_running") or 0.0


async def test_client_disconnect_mid_stream_finalizes_state_and_aborts_upstream(cpu_vllm) -> None:
    m = cpu_vllm.model
    async with scheduler([cpu_vllm.url]) as (url, _), httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        body = chat_body(m, words(50, 7), max_tokens=3000, ignore_eos=True, stream=True, program_id="gone")
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            n = 0
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    n += 1
                if n >= 3:
                    break  # leaving the block closes the connection mid-stream

        async def finalized() -> bool:
            async with httpx.AsyncClient(base_url=url, timeout=10) as c:
                info = (await c.get("/programs/gone")).json()
            return info["in_flight"] == 0 and info["phase"] == "acting" and info["status"] == "active"

        await wait_for(finalized, 15, "the program to be finalized after the disconnect")
        info = (await client.get("/programs/gone")).json()
        assert not info["tokens_exact"] and info["steps"] == 0  # estimated: the usage chunk never came

        async def aborted() -> bool:
            return await _running_on_vllm(cpu_vllm.url) == 0

        await wait_for(aborted, 15, "vLLM to abort the abandoned request")
