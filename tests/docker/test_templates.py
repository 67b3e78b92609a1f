"""Templates on the real engine: setup runs once, failures are typed and leave nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from thunder_env import EnvManager, SandboxSpec
from thunder_env.docker import DockerBackend
from thunder_env.templates import TemplateBuildError

from ._helpers import containers_labelled, eventually, image_exists, with_setup
from .conftest import ManagerFactory, leftovers


async def test_setup_runs_once_for_many_sandboxes(manager: EnvManager, base_spec: SandboxSpec) -> None:
    spec = with_setup(base_spec, "echo built >> /etc/setup.log", "mkdir -p /opt/app && echo v1 > /opt/app/version")
    leases = await asyncio.gather(*(manager.acquire(f"p{i}", spec) for i in range(6)))
    assert manager.provisioner.template_builds() == 1
    assert len({lease.sandbox_id for lease in leases}) == 6
    for lease in leases:
        result = await manager.exec(lease, "cat /etc/setup.log /opt/app/version")
        assert result.stdout.text == "built\nv1\n"
    # The template outlives its sandboxes: a later acquire starts from the same snapshot.
    for lease in leases:
        await manager.release(lease)
    later = await manager.acquire("later", spec)
    assert (await manager.exec(later, "cat /etc/setup.log")).stdout.text == "built\n"
    assert manager.provisioner.template_builds() == 1
    templates = [s for s in manager.provisioner.snapshots() if s.kind == "template"]
    assert len(templates) == 1
    assert manager.sandbox_info(later).image == base_spec.image  # the info shows what was asked for


async def test_other_steps_make_another_template(manager: EnvManager, base_spec: SandboxSpec) -> None:
    one = await manager.acquire("p", with_setup(base_spec, "echo one > /etc/which"))
    two = await manager.acquire("p", with_setup(base_spec, "echo two > /etc/which"))
    plain = await manager.acquire("p", base_spec)
    assert (await manager.exec(one, "cat /etc/which")).stdout.text == "one\n"
    assert (await manager.exec(two, "cat /etc/which")).stdout.text == "two\n"
    assert not (await manager.exec(plain, "cat /etc/which")).ok
    assert manager.provisioner.template_builds() == 2


async def test_failing_step_is_a_typed_error_and_leaves_nothing(
    manager: EnvManager, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    spec = with_setup(base_spec, "echo step one", "echo going wrong >&2; exit 7", "echo never runs > /etc/never")
    # Concurrent requests share the one failing build and all see its error.
    results = await asyncio.gather(*(manager.acquire(f"p{i}", spec) for i in range(3)), return_exceptions=True)
    assert manager.provisioner.template_builds() == 1
    for error in results:
        assert isinstance(error, TemplateBuildError)
        assert error.step_index == 1 and error.exit_code == 7
        assert "going wrong" in error.stderr and "going wrong" in str(error)
    assert await leftovers(backend, manager.config.namespace) == []
    assert manager.sandboxes() == [] and manager.provisioner.snapshots() == []
    # Fixed steps build fine: a failure is not cached.
    fixed = with_setup(base_spec, "echo step one", "echo fine > /etc/fine")
    lease = await manager.acquire("p", fixed)
    assert (await manager.exec(lease, "cat /etc/fine")).stdout.text == "fine\n"


async def test_step_timeout(make_manager: ManagerFactory, backend: DockerBackend, base_spec: SandboxSpec) -> None:
    manager = await make_manager(template_step_timeout_s=1.0)
    with pytest.raises(TemplateBuildError, match="timed out after 1 s"):
        await manager.acquire("p", with_setup(base_spec, "sleep 30"))
    assert await leftovers(backend, manager.config.namespace) == []


async def test_template_snapshot_goes_with_the_manager(
    make_manager: ManagerFactory, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_manager()
    await manager.acquire("p", with_setup(base_spec, "touch /etc/x"))
    (template,) = manager.provisioner.snapshots()
    assert await image_exists(backend, template.image_id)
    await manager.close()
    assert not await image_exists(backend, template.image_id)


async def test_cancelled_callers_leave_no_build_running(
    make_manager: ManagerFactory, backend: DockerBackend, base_spec: SandboxSpec
) -> None:
    manager = await make_manager(template_build_concurrency=1)
    namespace = manager.config.namespace

    async def builds() -> list[str]:
        return await containers_labelled(backend, thunder__namespace=namespace, thunder__program="template")

    most = 0
    for i in range(5):  # a create/cancel loop, each on a template of its own with a long step
        caller = asyncio.create_task(manager.acquire(f"p{i}", with_setup(base_spec, f"sleep 60 # {i}")))
        if i == 0:
            await eventually(lambda: _nonempty(builds()), what="the first build's container")
        else:
            await asyncio.sleep(0.5)
        most = max(most, len(await builds()))
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        most = max(most, len(await builds()))
    assert most == 1  # the bound, and the builds did not pile up
    assert await builds() == []  # each build went with its last caller, container and all
    assert manager.provisioner.snapshots() == []


async def test_a_shared_build_outlives_one_cancelled_caller(manager: EnvManager, base_spec: SandboxSpec) -> None:
    spec = with_setup(base_spec, "sleep 2", "echo built > /etc/built")
    first = asyncio.create_task(manager.acquire("p1", spec))
    second = asyncio.create_task(manager.acquire("p2", spec))
    await asyncio.sleep(1.0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    lease = await second  # the build it shared went on for it
    assert (await manager.exec(lease, "cat /etc/built")).stdout.text == "built\n"
    assert manager.provisioner.template_builds() == 1


async def _nonempty(found: Awaitable[list[str]]) -> bool:
    return bool(await found)
