"""Refuse a new sandbox, snapshot or template build when the host is short of disk or memory (psutil,
no engine calls)."""

from __future__ import annotations

import os

import psutil

from .errors import ResourceExhaustedError


def check_host_reserves(storage_path: str | None, min_free_disk: int, min_free_memory: int) -> None:
    memory = psutil.virtual_memory().available
    if memory < min_free_memory:
        raise ResourceExhaustedError(
            f"only {memory >> 20} MiB of memory available (reserve: {min_free_memory >> 20} MiB); "
            "release sandboxes or end programs before creating more"
        )
    path = storage_path if storage_path and os.path.exists(storage_path) else None
    if path is not None:
        free = psutil.disk_usage(path).free
        if free < min_free_disk:
            raise ResourceExhaustedError(
                f"only {free >> 20} MiB free under {path} (reserve: {min_free_disk >> 20} MiB); "
                "remove snapshots or unused images, or end programs"
            )


class DiskReserveError(ResourceExhaustedError):
    """Too little free disk under the engine's storage for a snapshot or a template build."""

    def __init__(self, action: str, path: str, free_bytes: int, reserve_bytes: int) -> None:
        self.free_bytes = free_bytes
        self.reserve_bytes = reserve_bytes
        super().__init__(
            f"refusing {action}: only {free_bytes >> 20} MiB free under {path} (reserve: {reserve_bytes >> 20} "
            "MiB); release snapshots, end programs or remove unused images first"
        )


def check_disk_reserve(storage_path: str | None, reserve_bytes: int, action: str) -> None:
    """Raise DiskReserveError when the engine's storage has less than ``reserve_bytes`` free."""
    if storage_path is None or not os.path.exists(storage_path):
        return
    free = psutil.disk_usage(storage_path).free
    if free < reserve_bytes:
        raise DiskReserveError(action, storage_path, free, reserve_bytes)
