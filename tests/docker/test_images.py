"""The image builder against the real Docker Engine: build, skip, run, rebuild, clean up."""

from __future__ import annotations

import asyncio
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest

from thunder_env.images import (
    HASH_LABEL,
    RECIPE_LABEL,
    BuildOptions,
    ToolMissingError,
    ensure_images,
    image_status,
    load_recipes,
)

REPO = Path(__file__).resolve().parents[2]
# A dynamically linked program, which the base recipe must refuse as its busybox.
DYNAMIC_BINARY = Path(sys.executable).resolve()
IMAGES = REPO / "images"
# A cold build of thunder/python runs debootstrap (a minute or two); afterwards builds are no-ops.
COLD_BUILD_TIMEOUT = pytest.mark.timeout(1800)


@pytest.fixture
async def docker() -> AsyncIterator[aiodocker.Docker]:
    client = aiodocker.Docker()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def built(docker: aiodocker.Docker) -> dict[str, str]:
    """Both images present (built when missing); recipe name -> image id."""
    results = await ensure_images(docker, ["base", "python"], recipes=IMAGES)
    return {r.name: r.image_id for r in results}


async def run_container(docker: aiodocker.Docker, image: str, cmd: list[str], user: str = "") -> tuple[int, str]:
    """Run ``cmd`` to completion in a fresh container without network; exit code and output."""
    container = await docker.containers.create(
        {"Image": image, "Cmd": cmd, "User": user, "HostConfig": {"NetworkMode": "none"}}
    )
    try:
        await container.start()
        async with asyncio.timeout(60):
            status = await container.wait()
        logs = await container.log(stdout=True, stderr=True)
        return status["StatusCode"], "".join(logs)
    finally:
        await container.delete(force=True)


@COLD_BUILD_TIMEOUT
async def test_both_images_exist_with_their_recipe_hash(docker: aiodocker.Docker) -> None:
    results = await ensure_images(docker, recipes=IMAGES)
    assert {r.tag for r in results} >= {"thunder/base:latest", "thunder/python:latest"}
    for result in results:
        info = await docker.images.inspect(result.tag)
        labels = info["Config"]["Labels"]
        assert info["Id"] == result.image_id
        assert labels[HASH_LABEL] == result.recipe_hash
        assert labels[RECIPE_LABEL] == result.name
        assert info["Config"]["WorkingDir"] == "/workspace"
        assert info["Config"]["Cmd"] == ["sleep", "infinity"]
    statuses = await image_status(docker, recipes=IMAGES)
    assert {s.name: s.state for s in statuses} == {r.name: "present" for r in results}


@COLD_BUILD_TIMEOUT
async def test_second_build_is_a_noop(docker: aiodocker.Docker, built: dict[str, str]) -> None:
    again = await ensure_images(docker, recipes=IMAGES)
    assert {r.name: r.action for r in again} == {name: "skipped" for name in built}
    assert {r.name: r.image_id for r in again} == built
    # The command the Makefile runs says the same and changes nothing.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "thunder_env.images", "build", cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    assert out.decode().count("up to date") >= 2
    assert "built" not in out.decode().replace("up to date", "")
    for name, image_id in built.items():
        assert (await docker.images.inspect(f"thunder/{name}:latest"))["Id"] == image_id


async def test_base_runs_a_shell_without_network(docker: aiodocker.Docker, built: dict[str, str]) -> None:
    code, out = await run_container(docker, "thunder/base:latest", ["sh", "-c", "echo hi"])
    assert (code, out) == (0, "hi\n")
    code, out = await run_container(
        docker,
        "thunder/base:latest",
        ["sh", "-c", "pwd; stat -c %a /tmp; ls /sys/class/net; id -u; echo $HOME; touch /workspace/f"],
        user="sandbox",
    )
    assert code == 0, out
    assert out.split() == ["/workspace", "1777", "lo", "1000", "/home/sandbox"]


async def test_base_has_the_applets_sandboxes_use(docker: aiodocker.Docker, built: dict[str, str]) -> None:
    applets = "sh ls cat grep find stat kill tr sleep head tail dd mkdir env timeout setsid nc"
    script = f"for a in {applets}; do command -v $a >/dev/null || echo missing $a; done; echo done"
    code, out = await run_container(docker, "thunder/base:latest", ["sh", "-c", script])
    assert (code, out) == (0, "done\n")


async def test_python_image_runs_python_and_git(docker: aiodocker.Docker, built: dict[str, str]) -> None:
    script = (
        "python3 -c 'import ssl, sqlite3, venv; print(42)' && python -c 'print(43)' && "
        "git --version >/dev/null && bash -c 'echo $BASH_VERSION' >/dev/null && ps -o pid= -p 1 && "
        "cd /workspace && git init -q repo && echo $HOME && id -u && ls /usr/share/man | wc -l"
    )
    code, out = await run_container(docker, "thunder/python:latest", ["bash", "-c", script], user="sandbox")
    assert code == 0, out
    assert out.split() == ["42", "43", "1", "/home/sandbox", "1000", "0"]


@pytest.fixture
async def scratch_recipe(docker: aiodocker.Docker, tmp_path: Path) -> AsyncIterator[tuple[Path, str, str]]:
    """A copy of the base recipe under a throwaway name and tag; its images are removed after."""
    name = f"test-base-{uuid.uuid4().hex[:8]}"
    tag = f"thunder-test/{name}:latest"
    recipes = tmp_path / "recipes"
    shutil.copytree(IMAGES / "base", recipes / name)
    toml = recipes / name / "recipe.toml"
    toml.write_text(toml.read_text().replace('tag = "thunder/base:latest"', f'tag = "{tag}"'))
    try:
        yield recipes, name, tag
    finally:
        for image in await docker.images.list(filters={"label": [f"{RECIPE_LABEL}={name}"]}):
            await docker.images.delete(image["Id"], force=True)


async def _ids_with_label(docker: aiodocker.Docker, name: str) -> set[str]:
    return {i["Id"] for i in await docker.images.list(filters={"label": [f"{RECIPE_LABEL}={name}"]})}


async def test_recipe_change_rebuilds_and_leaves_no_old_image(
    docker: aiodocker.Docker, scratch_recipe: tuple[Path, str, str], tmp_path: Path
) -> None:
    recipes, name, tag = scratch_recipe
    options = BuildOptions(work_dir=tmp_path / "work")

    async def state() -> str:
        [status] = await image_status(docker, [name], recipes=recipes, options=options)
        return status.state

    assert await state() == "missing"
    [first] = await ensure_images(docker, [name], recipes=recipes, options=options)
    assert first.action == "built" and await state() == "present"
    [same] = await ensure_images(docker, [name], recipes=recipes, options=options)
    assert (same.action, same.image_id) == ("skipped", first.image_id)

    toml = recipes / name / "recipe.toml"
    toml.write_text(toml.read_text().replace("[image.env]", '[image.env]\nTHUNDER_TEST = "1"'))
    assert await state() == "stale"
    [second] = await ensure_images(docker, [name], recipes=load_recipes(recipes), options=options)
    assert second.action == "built" and second.recipe_hash != first.recipe_hash
    assert (second.previous_image_id, second.previous_removed) == (first.image_id, True)
    assert await _ids_with_label(docker, name) == {second.image_id}
    info = await docker.images.inspect(tag)
    assert "THUNDER_TEST=1" in info["Config"]["Env"]

    [forced] = await ensure_images(docker, [name], force=True, recipes=recipes, options=options)
    assert forced.action == "built" and forced.recipe_hash == second.recipe_hash
    assert await _ids_with_label(docker, name) == {forced.image_id}


async def test_old_image_in_use_is_kept_then_swept(
    docker: aiodocker.Docker, scratch_recipe: tuple[Path, str, str], tmp_path: Path
) -> None:
    recipes, name, tag = scratch_recipe
    options = BuildOptions(work_dir=tmp_path / "work")
    [first] = await ensure_images(docker, [name], recipes=recipes, options=options)
    user = await docker.containers.create({"Image": tag, "HostConfig": {"NetworkMode": "none"}})
    try:
        [second] = await ensure_images(docker, [name], force=True, recipes=recipes, options=options)
        assert (second.previous_image_id, second.previous_removed) == (first.image_id, False)
        assert await _ids_with_label(docker, name) == {first.image_id, second.image_id}
    finally:
        await user.delete(force=True)
    [skipped] = await ensure_images(docker, [name], recipes=recipes, options=options)
    assert skipped.action == "skipped"
    assert await _ids_with_label(docker, name) == {second.image_id}


async def test_failed_build_keeps_the_current_image(
    docker: aiodocker.Docker, scratch_recipe: tuple[Path, str, str], tmp_path: Path
) -> None:
    recipes, name, tag = scratch_recipe
    options = BuildOptions(work_dir=tmp_path / "work")
    [first] = await ensure_images(docker, [name], recipes=recipes, options=options)
    # A dynamically linked program cannot be the image's busybox.
    dynamic = BuildOptions(work_dir=tmp_path / "work", busybox=DYNAMIC_BINARY)
    with pytest.raises(ToolMissingError, match="busybox-static"):
        await ensure_images(docker, [name], force=True, recipes=recipes, options=dynamic)
    assert (await docker.images.inspect(tag))["Id"] == first.image_id
    assert await _ids_with_label(docker, name) == {first.image_id}
