"""Resource limits hold: fork bombs and memory hogs stay inside their sandbox."""

from __future__ import annotations

from thunder_env import EnvManager, SandboxSpec

from .conftest import BASE_IMAGE


async def test_fork_bomb_is_stopped_by_the_pids_limit(manager: EnvManager) -> None:
    lease = await manager.acquire("prog-bomb", SandboxSpec(image=BASE_IMAGE, pids_limit=64))
    result = await manager.exec(lease, "bomb() { bomb | bomb & }; bomb; sleep 3; ps | wc -l", timeout_s=8)
    # The sandbox never exceeds its limit, and it still answers afterwards.
    count = await manager.exec(lease, "ls -d /proc/[0-9]* | wc -l", timeout_s=30)
    assert "fork" in result.stderr.text  # the shell hit the limit: "can't fork"
    assert count.exit_code == 0 and int(count.stdout.text.strip()) <= 64
    await manager.release(lease)


async def test_out_of_memory_is_reported(manager: EnvManager) -> None:
    lease = await manager.acquire("prog-oom", SandboxSpec(image=BASE_IMAGE, memory_bytes=32 << 20))
    # dd fills a 256 MB block buffer: it cannot fit in 32 MB.
    result = await manager.exec(lease, "dd if=/dev/zero of=/dev/null bs=256M count=1", timeout_s=60)
    assert result.exit_code == 137 and result.oom_killed
    ok = await manager.exec(lease, "echo alive")
    assert ok.stdout.text == "alive\n" and not ok.oom_killed
