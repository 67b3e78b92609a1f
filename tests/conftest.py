"""Shared test configuration: tiers by folder, so `-m` selects fast or integration tests."""

from __future__ import annotations

import pathlib

import pytest

_TIERS = {"docker": "docker", "mcp": "docker", "vllm": "vllm"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        folder = pathlib.Path(str(item.fspath)).parent.name
        marker = _TIERS.get(folder)
        if marker:
            item.add_marker(getattr(pytest.mark, marker))
