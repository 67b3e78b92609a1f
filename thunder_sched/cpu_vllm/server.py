"""Start, watch and stop one vLLM OpenAI server on CPU, as an async context manager.

    async with CpuVllmServer(venv.python, model_dir, log_path=path) as server:
        ...  # server.url, server.model, await server.capacity_tokens()

The server runs under `_launch.py`, a supervisor that leads its own process group and takes the whole
group down when stopped or when this process dies, so no engine process is ever left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from ._proc import Progress, file_size, read_from, stderr_progress, tail
from ._procgroup import killpg, wait_group_gone
from .errors import ServerConfigError, ServerError, ServerStartTimeout
from .metrics import VllmMetrics, parse_metrics

LAUNCHER = Path(__file__).with_name("_launch.py")
CPU_BLOCK_SIZE = 128  # vLLM's default KV block size on CPU
_PORT_IN_USE = "address already in use"


@dataclass(frozen=True)
class VllmServerConfig:
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port, retried if another process takes it first
    kv_cache_memory_bytes: int = 32_000_000  # about 15.6k tokens for the default ModelSpec
    max_model_len: int | None = None  # None: min(model's max positions, estimated KV pool)
    served_model_name: str = "thunder-tiny"
    dtype: str = "bfloat16"
    omp_threads: int = 2
    enforce_eager: bool = False
    startup_timeout: float = 240.0
    stop_timeout: float = 30.0
    # Tool calling for clients that send tools with tool_choice "auto" (Claude Code, OpenHands): vLLM refuses
    # such requests (400) unless started with --enable-auto-tool-choice and a parser; None: neither flag.
    tool_call_parser: str | None = "pythonic"  # needs no special token (llama3_json needs <|python_tag|>)
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)  # overrides for the server's environment

    def __post_init__(self) -> None:
        checks = {
            "kv_cache_memory_bytes": self.kv_cache_memory_bytes > 0,
            "max_model_len": self.max_model_len is None or self.max_model_len > 0,
            "omp_threads": self.omp_threads > 0,
            "startup_timeout": self.startup_timeout > 0,
            "stop_timeout": self.stop_timeout > 0,
            "port": self.port is None or 0 < self.port < 65536,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ServerConfigError(f"invalid VllmServerConfig value(s) for {', '.join(bad)}: {self!r}")


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def estimate_pool_tokens(model_config: Mapping[str, object], kv_cache_memory_bytes: int, dtype: str) -> int:
    """KV pool size vLLM will report, from the model's config.json (whole CPU blocks only)."""
    layers = int(model_config["num_hidden_layers"])  # type: ignore[call-overload]
    kv_heads = int(model_config.get("num_key_value_heads") or model_config["num_attention_heads"])  # type: ignore[call-overload]
    head_dim = int(
        model_config.get("head_dim")  # type: ignore[call-overload]
        or int(model_config["hidden_size"]) // int(model_config["num_attention_heads"])  # type: ignore[call-overload]
    )
    per_token = 2 * layers * kv_heads * head_dim * (4 if dtype in ("float32", "float") else 2)
    return kv_cache_memory_bytes // (per_token * CPU_BLOCK_SIZE) * CPU_BLOCK_SIZE


def _server_env(config: VllmServerConfig) -> dict[str, str]:
    env = dict(os.environ)
    # The legacy VLLM_CPU_KVCACHE_SPACE (GiB) would silently override --kv-cache-memory-bytes.
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    env.update(
        {
            "OMP_NUM_THREADS": str(config.omp_threads),
            # Do not pin to cores: the machine's cores are shared with other processes.
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(config.env)
    return env


class CpuVllmServer:
    """One vLLM OpenAI-compatible server on loopback; `start()`/`stop()` or `async with`."""

    def __init__(
        self,
        python: Path,
        model_dir: Path,
        config: VllmServerConfig | None = None,
        *,
        log_path: Path | None = None,
        progress: Progress = stderr_progress,
    ) -> None:
        self.python = python
        self.model_dir = model_dir
        self.config = config or VllmServerConfig()
        self._log_path = log_path
        self._progress = progress
        self._proc: asyncio.subprocess.Process | None = None
        self._port: int | None = None
        self._max_model_len: int | None = None
        self.startup_seconds: float | None = None

    # -- addresses ---------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL without /v1 (so /metrics, /tokenize and /health sit right under it)."""
        return f"http://{self.config.host}:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def model(self) -> str:
        return self.config.served_model_name

    @property
    def max_model_len(self) -> int:
        if self._max_model_len is None:
            raise ServerError("the server has not been started")
        return self._max_model_len

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            raise ServerError("the server has not been started")
        return self._log_path

    @property
    def pid(self) -> int | None:
        """Process id of the supervisor, which is also the process group id of every server process."""
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def __aenter__(self) -> CpuVllmServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Launch the server and wait until /v1/models answers; raises `ServerError` on failure."""
        if self._proc is not None:
            raise ServerError(f"server already started (pid {self._proc.pid})")
        self._max_model_len = await self._resolve_max_model_len()
        if self._log_path is None:
            fd, name = await asyncio.to_thread(tempfile.mkstemp, prefix="thunder-vllm-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        attempts = 1 if self.config.port is not None else 3
        for attempt in range(1, attempts + 1):
            self._port = self.config.port or free_port(self.config.host)
            log_offset = await asyncio.to_thread(file_size, self.log_path)
            try:
                await self._start_once()
                return
            except ServerError as exc:
                log = await asyncio.to_thread(read_from, self.log_path, log_offset)
                if attempt < attempts and _PORT_IN_USE in log.lower() and not isinstance(exc, ServerStartTimeout):
                    self._progress(f"port {self._port} was taken meanwhile; retrying on another port")
                    continue
                raise

    async def _resolve_max_model_len(self) -> int:
        if self.config.max_model_len is not None:
            return self.config.max_model_len
        config_path = self.model_dir / "config.json"
        try:
            model_config = json.loads(await asyncio.to_thread(config_path.read_text))
        except (OSError, ValueError) as exc:
            raise ServerError(f"cannot read the model's {config_path}: {exc}") from exc
        pool = estimate_pool_tokens(model_config, self.config.kv_cache_memory_bytes, self.config.dtype)
        if pool < CPU_BLOCK_SIZE:
            raise ServerError(
                f"--kv-cache-memory-bytes {self.config.kv_cache_memory_bytes} holds less than one "
                f"{CPU_BLOCK_SIZE}-token block of this model; give it more bytes"
            )
        return min(int(model_config.get("max_position_embeddings", pool)), pool)

    def _argv(self) -> list[str]:
        cfg = self.config
        argv = [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",  # the `vllm` script fails on package metadata here
            "--model",
            str(self.model_dir),
            "--host",
            cfg.host,
            "--port",
            str(self.port),
            "--served-model-name",
            cfg.served_model_name,
            "--dtype",
            cfg.dtype,
            "--enable-prefix-caching",
            "--kv-cache-memory-bytes",
            str(cfg.kv_cache_memory_bytes),
            "--max-model-len",
            str(self.max_model_len),
            "--uvicorn-log-level",
            "warning",
        ]
        if cfg.enforce_eager:
            argv.append("--enforce-eager")
        if cfg.tool_call_parser is not None:
            argv += ["--enable-auto-tool-choice", "--tool-call-parser", cfg.tool_call_parser]
        return argv + list(cfg.extra_args)

    async def _start_once(self) -> None:
        started = time.monotonic()
        # The supervisor gets a third of the stop budget per phase (server, then leftovers) before SIGKILL.
        grace = self.config.stop_timeout / 3
        log = await asyncio.to_thread(self.log_path.open, "ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                str(self.python),
                str(LAUNCHER),
                "--parent-pid",
                str(os.getpid()),
                "--grace",
                str(grace),
                "--",
                *self._argv(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=_server_env(self.config),
                start_new_session=True,  # own process group, so stop() can reach every descendant
            )
        finally:
            log.close()
        self._progress(f"starting vLLM on {self.url} (pid {self._proc.pid}, log: {self.log_path})")
        try:
            await self._wait_ready(started)
        except BaseException:
            await self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self._progress(f"vLLM ready on {self.url} after {self.startup_seconds:.0f} s")

    async def _wait_ready(self, started: float) -> None:
        assert self._proc is not None
        deadline = started + self.config.startup_timeout
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                if self._proc.returncode is not None:
                    raise ServerError(
                        f"vLLM exited with code {self._proc.returncode} during startup; "
                        f"{self.log_path} ends with:\n{await tail(self.log_path)}"
                    )
                with contextlib.suppress(httpx.HTTPError, ValueError):  # not listening yet, or not JSON
                    response = await client.get(f"{self.openai_url}/models")
                    if response.status_code == 200 and any(
                        m.get("id") == self.model for m in response.json().get("data", [])
                    ):
                        return
                if time.monotonic() > deadline:
                    raise ServerStartTimeout(
                        f"vLLM did not answer on {self.url} within {self.config.startup_timeout:.0f} s; "
                        f"{self.log_path} ends with:\n{await tail(self.log_path)}"
                    )
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Stop the server and every process of its group. Idempotent; safe under cancellation."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)  # the supervisor stops the server, then its group
                try:
                    await asyncio.wait_for(proc.wait(), self.config.stop_timeout)
                except TimeoutError:
                    self._progress(f"vLLM (pid {proc.pid}) ignored SIGTERM for {self.config.stop_timeout} s; killing")
            killpg(proc.pid, signal.SIGKILL)
            if proc.returncode is None:
                await proc.wait()
            if not await wait_group_gone(proc.pid, within=10.0):
                raise ServerError(f"processes of group {proc.pid} survived SIGKILL; see `ps -g {proc.pid}`")
        except BaseException:
            killpg(proc.pid, signal.SIGKILL)  # cancelled or failed midway: never leave a process behind
            raise
        finally:
            self._proc = None

    # -- observation -------------------------------------------------------------------------------------
    async def metrics(self, client: httpx.AsyncClient | None = None) -> VllmMetrics:
        """Scrape /metrics (with `client` if given, else a short-lived one)."""
        return await fetch_metrics(self.url, client=client, model=self.model)

    async def capacity_tokens(self, client: httpx.AsyncClient | None = None) -> int:
        """KV pool size in tokens: `num_gpu_blocks` x `block_size` from vllm:cache_config_info."""
        return (await self.metrics(client)).capacity_tokens

    async def log_tail(self, lines: int = 40) -> str:
        return await tail(self.log_path, lines)


async def fetch_metrics(
    base_url: str, *, client: httpx.AsyncClient | None = None, model: str | None = None
) -> VllmMetrics:
    """Scrape and parse a vLLM server's /metrics; `base_url` has no /v1 suffix."""
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient(timeout=10.0))
        try:
            response = await client.get(f"{base_url.rstrip('/')}/metrics")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot read {base_url}/metrics: {exc!r}") from exc
        return parse_metrics(response.text, model=model)
