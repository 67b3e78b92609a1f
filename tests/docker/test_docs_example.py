"""The documented example runs, prints what the doc promises, and stays identical to the doc."""

from __future__ import annotations

import asyncio
import pathlib
import re
import sys

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def test_example_file_matches_the_doc() -> None:
    block = re.search(r"```python\n(.*?)```", (DOCS / "env.md").read_text(), re.S)
    assert block is not None
    assert block.group(1) in (DOCS / "env_example.py").read_text()


async def test_example_runs(backend) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(DOCS / "env_example.py"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith("0 hello from ")
    assert lines[1] == "echo hello from $(hostname)"
    assert lines[2] == "sandboxes left: 0"
