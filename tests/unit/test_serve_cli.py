"""`thunder` without a server: bad input gets a clear error (and never echoes a token), the status table, the
demo's configuration and sizing, and the demo's scripted commands checked against a real shell."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mcp_server import HttpConfig, ServerConfig
from thunder_sched.config import SchedulerConfig
from thunder_serve.cli import app
from thunder_serve.clients.demo_agent import as_text, script_command, words
from thunder_serve.config import CombinedConfig
from thunder_serve.demo import DemoConfig, make_plan
from thunder_serve.errors import CombinedError
from thunder_serve.render import human_bytes, render_status
from thunder_serve.status import BackendStatus, Counters, ProgramStatus, Resources, StatusReport

runner = CliRunner()
TOKEN = "do-not-echo-" + "0123456789abcdef"


def test_the_cli_starts_without_loading_the_cpu_vllm_launcher() -> None:
    """`thunder serve` / `status` must not import the CPU vLLM launcher (only `demo` does, in the command)."""
    repo = Path(__file__).resolve().parents[2]
    probe = "import sys, thunder_serve.cli; print(sorted(m for m in sys.modules if 'cpu_vllm' in m))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    help_text = subprocess.run(
        [sys.executable, "-m", "thunder_serve", "serve", "--help"], cwd=repo, capture_output=True, text=True
    )
    assert help_text.returncode == 0 and "--backend" in help_text.stdout


def test_serve_refuses_a_bad_configuration_without_echoing_the_token() -> None:
    result = runner.invoke(app, ["serve", "--backend", "ftp://nowhere", "--token", TOKEN])
    assert result.exit_code == 2
    assert "must start with http:// or https://" in result.output and TOKEN not in result.output
    result = runner.invoke(app, ["serve", "--backend", "http://127.0.0.1:1", "--token", "tiny-secret"])
    assert result.exit_code == 2 and "token: String should have at least 16 characters" in result.output
    assert "tiny-secret" not in result.output
    assert runner.invoke(app, ["serve"]).exit_code == 2  # --backend is required
    result = runner.invoke(app, ["serve", "--backend", "http://127.0.0.1:1", "--model-alias", "claude"])
    assert result.exit_code == 2 and "--model-alias wants NAME=SERVED" in result.output
    result = runner.invoke(app, ["serve", "--backend", "http://127.0.0.1:1", "--program-id-from", "session"])
    assert result.exit_code == 2 and "--program-id-from wants" in result.output
    result = runner.invoke(app, ["serve", "--backend", "http://127.0.0.1:1", "--program-id-from", "user-id:x"])
    assert result.exit_code == 2 and "needs a group" in result.output


def test_status_of_a_server_that_is_not_there_says_so() -> None:
    result = runner.invoke(app, ["status", "--url", "http://127.0.0.1:1"])
    assert result.exit_code == 1 and "cannot read the status of http://127.0.0.1:1" in result.output


def test_demo_against_a_running_server_needs_its_token() -> None:
    result = runner.invoke(app, ["demo", "--server", "http://127.0.0.1:1"], env={"THUNDER_TOKEN": ""})
    assert result.exit_code == 2 and "--server needs --token" in result.output
    result = runner.invoke(app, ["demo", "--programs", "0"])  # refused while parsing: nothing starts
    assert result.exit_code == 2 and "--programs" in result.output
    with pytest.raises(CombinedError, match="at least one program"):
        DemoConfig(programs=0)


def test_the_combined_config_refuses_a_fixed_program() -> None:
    with pytest.raises(ValueError, match="default_program_id must be None"):
        CombinedConfig(
            scheduler=SchedulerConfig(backends=("http://a",)),
            http=HttpConfig(token=TOKEN),
            server=ServerConfig(default_program_id="p1"),
        )


def test_status_table_shows_each_program() -> None:
    report = StatusReport(
        uptime_s=12.0,
        namespace="ns",
        backends=[
            BackendStatus(url="http://v", healthy=True, capacity_tokens=15616, used_tokens=9000.0),
            BackendStatus(
                url="http://gpu",
                healthy=True,
                capacity_tokens=100_000,
                used_tokens=0.0,
                host_tier_tokens=400_000,
                host_tier_used_tokens=4146,
            ),
        ],
        counters=Counters(
            pauses=3,
            restores=2,
            admissions=4,
            kv_lost=0,
            terminated={},
            prepared_requested=2,
            prepared_ready_at_acquire=2,
            prepared_waited_at_acquire=0,
            prepared_failed=0,
            prepared_expired=0,
            prepares_on_restore=2,
            ended_by_scheduler=0,
            ended_by_env=1,
        ),
        resources=Resources(programs=2, sandboxes=1, containers=1, snapshots=0, ports=0),
        programs=[
            ProgramStatus(
                program_id="agent-1",
                status="paused",
                phase="reasoning",
                tokens=4146,
                backend=None,
                steps=2,
                pauses=1,
                restores=0,
                tools_running=0,
                sandboxes=["sb-1"],
                disk_bytes=1536,
                mcp=True,
            ),
            ProgramStatus(
                program_id="agent-2",
                status="env-only",
                phase="-",
                tokens=0,
                backend=None,
                steps=0,
                pauses=0,
                restores=0,
                tools_running=0,
                sandboxes=[],
                disk_bytes=None,
                mcp=True,
            ),
        ],
    )
    console = Console(record=True, width=160)
    render_status(console, report)
    text = console.export_text()
    assert "9,000 / 15,616 KV tokens" in text and "prepared ahead 2" in text
    assert "host KV tier 4,146 / 400,000 tokens" in text and text.count("host KV tier") == 1
    for cell in ("agent-1", "paused", "reasoning", "4,146", "sb-1", "1.5 KiB", "1/0", "agent-2", "env-only"):
        assert cell in text
    assert human_bytes(None) == "?" and human_bytes(3 << 30) == "3.0 GiB"


def test_demo_sizing_oversubscribes_the_pool_or_says_why_it_cannot() -> None:
    config = DemoConfig.quick()
    assert (config.programs, config.steps, config.oversubscription) == (6, 4, 1.8)
    assert DemoConfig.quick(3, steps=2).steps == 2
    plan = make_plan(config, "m", capacity=15616, max_model_len=8192)
    final = 1.5 * (config.system_words + config.task_words) + config.steps * plan.growth_tokens
    assert config.programs * final > 1.5 * 15616  # the programs' contexts outgrow the pool
    with pytest.raises(CombinedError, match="use fewer programs or steps"):
        make_plan(DemoConfig(programs=400, steps=6), "m", capacity=15616, max_model_len=8192)


@pytest.mark.parametrize("seed", range(6))
def test_the_scripted_commands_expect_what_a_shell_prints(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    items = words(rng, 50 + 10 * seed)
    path = "notes/step-0.txt"
    (tmp_path / "notes").mkdir()
    (tmp_path / path).write_text(as_text(items))
    command, expected = script_command(rng, path, items)
    ran = subprocess.run(["/bin/sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == expected
