"""Refuse a new sandbox when the host is short of disk or memory (psutil, no engine calls)."""

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
