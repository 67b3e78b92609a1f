"""Disk: N forks of one thunder/python snapshot, each writing its own data, vs naive full copies.

Dedup: one snapshot of a thunder/python sandbox, N forks of it, each writing ``--write-mb`` of random
data; its bytes are the image (counted once), the snapshot's own layer and every fork's writable layer.
Naive: each sandbox from its own full copy of the image (the filesystem exported and imported as a
one-layer image, with a per-copy marker so the engine cannot deduplicate the copies), writing the same
data. The naive way is measured for real on a smaller count and scaled per sandbox to N.
All figures come from the engine's own size data (/system/df). Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from collections.abc import AsyncIterator

from .. import EnvManager, ManagerConfig, SandboxSpec
from ..backend import ExecRequest
from ..backend_config import DockerBackendConfig
from ..docker import DockerBackend
from ..docker.lifecycle import container_name
from ..errors import BackendError

NAIVE_REPOSITORY = "thunder/naive-copy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--forks", type=int, default=100)
    parser.add_argument("--naive", type=int, default=3, help="naive full copies measured for real")
    parser.add_argument("--write-mb", type=int, default=10)
    parser.add_argument("--image", default="thunder/python:latest")


def write_command(megabytes: int) -> str:
    return f"dd if=/dev/urandom of=/workspace/own-data bs=1M count={megabytes} status=none"


async def run(args: argparse.Namespace) -> dict[str, object]:
    forks = 20 if args.quick else args.forks
    naive = 2 if args.quick else args.naive
    namespace = "bench-disk-" + secrets.token_hex(4)
    spec = SandboxSpec(image=args.image, memory_bytes=256 << 20, pids_limit=64)
    # No health check: the naive copies are made behind the manager's back with its labels, and the check
    # would remove them as containers nothing in the manager holds.
    config = ManagerConfig(namespace=namespace, idle_ttl_s=None, fork_concurrency=4, health_interval_s=None)
    # The Docker backend itself: its naive copies go through the raw client.
    async with DockerBackend.from_config(DockerBackendConfig()) as backend:
        manager = EnvManager(backend, config)
        await manager.start()
        naive_images: list[str] = []
        naive_sandboxes: list[str] = []
        try:
            dedup, fork_s, write_s = await measure_dedup(manager, spec, forks, args.write_mb)
            naive_each = await measure_naive(
                manager, backend, spec, naive, args.write_mb, naive_images, naive_sandboxes
            )
        finally:
            for sandbox_id in naive_sandboxes:
                await backend.destroy(sandbox_id)
            for image in naive_images:
                await backend.remove_image(image)
            await manager.close()
        leaked = await backend.list_managed({"thunder.namespace": namespace})
    dedup_bytes = dedup["image"] + dedup["snapshot"] + dedup["forks"]
    naive_bytes = naive_each * forks
    print(
        f"disk: {forks} forks x {args.write_mb} MB: {dedup_bytes / 1e6:.0f} MB shared-layer vs "
        f"{naive_bytes / 1e6:.0f} MB as full copies ({naive_each / 1e6:.0f} MB each, measured on {naive}); "
        f"forks started in {fork_s:.1f} s",
        file=sys.stderr,
    )
    return {
        "benchmark": "disk",
        "image": args.image,
        "forks": forks,
        "write_mb": args.write_mb,
        "dedup_disk_bytes": dedup_bytes,
        "naive_disk_bytes": naive_bytes,
        "dedup_ratio": round(naive_bytes / dedup_bytes, 2),
        "dedup_bytes_per_sandbox": dedup_bytes // forks,
        "naive_bytes_per_sandbox": naive_each,
        "naive_measured_copies": naive,
        "image_bytes": dedup["image"],
        "snapshot_unique_bytes": dedup["snapshot"],
        "forks_writable_bytes": dedup["forks"],
        "fork_start_s": round(fork_s, 2),
        "fork_write_s": round(write_s, 2),
        "leaked": len(leaked),
    }


async def measure_dedup(
    manager: EnvManager, spec: SandboxSpec, forks: int, write_mb: int
) -> tuple[dict[str, int], float, float]:
    source = await manager.acquire("bench-source", spec)
    await manager.exec(source, "echo 'prepared repository state' > /workspace/STATE")
    snap = await manager.snapshot(source)
    await manager.release(source)  # the snapshot stays: its program holds it

    started = time.perf_counter()
    leases = await manager.fork("bench-forks", snap.snapshot_id, forks)
    fork_s = time.perf_counter() - started
    limit = asyncio.Semaphore(4)

    async def write(lease: object) -> None:
        async with limit:
            result = await manager.exec(lease, write_command(write_mb))  # type: ignore[arg-type]
            assert result.ok, result

    started = time.perf_counter()
    await asyncio.gather(*(write(lease) for lease in leases))
    write_s = time.perf_counter() - started

    report = await manager.provisioner.disk_usage(max_age_s=0)
    fork_ids = {lease.sandbox_id for lease in leases}
    (snapshot_usage,) = [u for u in report.snapshots if u.resource_id == snap.snapshot_id]
    figures = {
        # Everything under the snapshot's own layer: the image's layers, counted once for all forks.
        "image": snapshot_usage.shared_bytes,
        "snapshot": snapshot_usage.unique_bytes,
        "forks": sum(u.unique_bytes for u in report.sandboxes if u.resource_id in fork_ids),
    }
    await manager.end_program("bench-forks")
    return figures, fork_s, write_s


async def measure_naive(
    manager: EnvManager,
    backend: DockerBackend,
    spec: SandboxSpec,
    copies: int,
    write_mb: int,
    images: list[str],
    sandboxes: list[str],
) -> int:
    """Bytes per sandbox the naive way: its own flattened copy of the image plus its own writes."""
    for index in range(copies):
        image = await flattened_copy(manager, backend, spec, index)
        images.append(image)
        sandbox_id = "sb-naive-" + secrets.token_hex(4)
        sandboxes.append(sandbox_id)
        naive_spec = spec.model_copy(update={"image": image})
        await backend.create(sandbox_id, naive_spec, manager.labels("bench-naive", sandbox_id))
        await run_in(backend, sandbox_id, write_command(write_mb))
    usage = await backend.disk_usage()
    image_ids = {(await backend.client.images.inspect(ref))["Id"] for ref in images}
    image_bytes = sum(i.size - i.shared_size for i in usage.images if i.image_id in image_ids)
    writable = sum(c.size_rw for c in usage.containers if c.labels.get("thunder.sandbox") in set(sandboxes))
    return (image_bytes + writable) // copies


async def flattened_copy(manager: EnvManager, backend: DockerBackend, spec: SandboxSpec, index: int) -> str:
    """A one-layer copy of ``spec.image``: a container's filesystem exported and imported as an image."""
    helper = "sb-export-" + secrets.token_hex(4)
    await backend.create(helper, spec, manager.labels("bench-naive", helper))
    try:
        await run_in(backend, helper, f"echo copy-{index}-{secrets.token_hex(8)} > /etc/thunder-copy-id")
        tag = f"{manager.config.namespace}-{index}"
        labels = " ".join(f"{k}={json.dumps(v)}" for k, v in manager.labels("bench-naive", helper).items())
        docker = backend.client
        async with docker._query(f"containers/{container_name(helper)}/export", "GET", timeout=None) as export:

            async def body() -> AsyncIterator[bytes]:
                async for chunk in export.content.iter_chunked(1 << 20):
                    yield chunk

            async with docker._query(
                "images/create",
                "POST",
                params={"fromSrc": "-", "repo": NAIVE_REPOSITORY, "tag": tag, "changes": f"LABEL {labels}"},
                data=body(),
                headers={"Content-Type": "application/x-tar"},
                timeout=None,
            ) as response:
                progress = await response.read()
        if b"errorDetail" in progress:
            raise BackendError(f"image import failed: {progress[-500:]!r}")
        return f"{NAIVE_REPOSITORY}:{tag}"
    finally:
        await backend.destroy(helper)


async def run_in(backend: DockerBackend, sandbox_id: str, command: str) -> None:
    """A command in a sandbox the manager does not own (the naive baseline's)."""
    result = await backend.exec(sandbox_id, ExecRequest(argv=["/bin/sh", "-c", command], marker=secrets.token_hex(8)))
    if not result.ok:
        raise BackendError(f"{command!r} failed in {sandbox_id}: {result.stderr.text}")
