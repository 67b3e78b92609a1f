"""Build the images whose recipe changed, skip the others: ``ensure_images`` and ``image_status``.

An image is up to date when the image under the recipe's tag carries the recipe's hash in its
``thunder.recipe-hash`` label. A build imports an untagged image, checks it, then moves the tag
and removes the image the tag pointed to before, so a failed build never leaves a half image
under the tag and a successful one leaves no dangling image behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import aiodocker

from thunder_common.locks import file_lock
from thunder_env.images import busybox, debootstrap, finish, tarball, treetar
from thunder_env.images.apt_sources import DebianSource
from thunder_env.images.engine import (
    HASH_LABEL,
    RECIPE_LABEL,
    image_labels,
    import_changes,
    import_rootfs,
    inspect_image,
    ping,
    remove_image,
    sweep_old_images,
)
from thunder_env.images.errors import ImageBuildError, ImageError
from thunder_env.images.hashing import file_sha256, recipe_hash
from thunder_env.images.recipes import (
    BusyboxRecipe,
    Recipe,
    default_recipes_dir,
    load_recipes,
    select_recipes,
)

log = logging.getLogger(__name__)

# The code that shapes each kind's root filesystem is a build input too.
_BUILDER_MODULES: dict[str, tuple[ModuleType, ...]] = {
    "busybox": (busybox, tarball),
    "debootstrap": (debootstrap, finish, treetar),
}

ImageState = Literal["present", "stale", "missing", "unknown"]


@dataclass(frozen=True)
class BuildOptions:
    """Machine-specific knobs; the CLI fills them from its flags. Defaults suit a root build host."""

    work_dir: Path = Path("/var/tmp/thunder-images")
    busybox: Path | None = None  # default: busybox on PATH, else /bin/busybox
    mirror: str | None = None  # default: read from the apt sources
    suite: str | None = None  # default: the recipe's, else read from the apt sources
    cache_debs: bool = True  # keep downloaded .debs in work_dir/debs for faster rebuilds
    debootstrap_timeout_s: float | None = 1800.0


@dataclass(frozen=True)
class BuildResult:
    name: str
    tag: str
    action: Literal["built", "skipped"]
    image_id: str
    recipe_hash: str
    seconds: float
    size_bytes: int
    # The image the tag pointed to before a rebuild, and whether it could be removed.
    previous_image_id: str | None = None
    previous_removed: bool = False


@dataclass(frozen=True)
class ImageStatus:
    name: str
    tag: str
    state: ImageState
    expected_hash: str | None
    found_hash: str | None
    image_id: str | None
    size_bytes: int | None
    detail: str = ""


@dataclass(frozen=True)
class _Plan:
    recipe: Recipe
    recipe_hash: str
    params: dict[str, str]
    busybox: Path | None = None
    source: DebianSource | None = None
    labels: dict[str, str] = field(default_factory=dict)


async def _builder_digest(kind: str) -> str:
    digests = await asyncio.gather(
        *(asyncio.to_thread(file_sha256, Path(m.__file__ or "")) for m in _BUILDER_MODULES[kind])
    )
    return ":".join(digests)


async def plan_recipe(recipe: Recipe, options: BuildOptions) -> _Plan:
    """Resolve the build inputs of ``recipe`` on this machine and hash them."""
    spec = recipe.spec
    bb: Path | None = None
    source: DebianSource | None = None
    if isinstance(spec, BusyboxRecipe):
        bb = await asyncio.to_thread(busybox.find_busybox, options.busybox)
        params = await busybox.busybox_params(bb)
    else:
        source = await asyncio.to_thread(debootstrap.resolve_source, spec, options.mirror, options.suite)
        params = debootstrap.debootstrap_params(source, await debootstrap.host_arch())
    params["builder_sha256"] = await _builder_digest(spec.kind)
    digest = await asyncio.to_thread(recipe_hash, recipe.directory, params)
    labels = {RECIPE_LABEL: recipe.name, HASH_LABEL: digest}
    return _Plan(recipe, digest, params, bb, source, labels)


def _split_tag(tag: str) -> tuple[str, str]:
    repo, _, name = tag.rpartition(":")
    return repo, name


async def _build(docker: aiodocker.Docker, plan: _Plan, options: BuildOptions) -> str:
    recipe, spec = plan.recipe, plan.recipe.spec
    changes = import_changes(spec.image.cmd, spec.image.workdir, spec.image.env, plan.labels)
    if isinstance(spec, BusyboxRecipe):
        assert plan.busybox is not None
        data = await busybox.build_busybox_rootfs(spec, plan.busybox)
        return await import_rootfs(docker, recipe.name, data, changes)
    assert plan.source is not None
    prefix = f"{recipe.name}-rootfs-"
    await debootstrap.remove_stale_trees(options.work_dir, prefix)
    target = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=prefix, dir=options.work_dir))
    try:
        # mkdtemp makes 0700 folders; this one becomes the image's "/".
        await asyncio.to_thread(os.chmod, target, 0o755)
        cache = options.work_dir / "debs" if options.cache_debs else None
        t0 = time.monotonic()
        await debootstrap.run_debootstrap(
            recipe.name, spec, plan.source, plan.params["arch"], target, cache, options.debootstrap_timeout_s
        )
        if cache is not None:
            await asyncio.to_thread(debootstrap.trim_deb_cache, cache, target)
        t1 = time.monotonic()
        log.info("%s: debootstrap took %.1f s; finishing the root filesystem", recipe.name, t1 - t0)
        await asyncio.to_thread(finish.finish_tree, target, spec, recipe.name)
        image_id = await treetar.import_tree(docker, recipe.name, target, changes)
        log.info("%s: finishing and docker import took %.1f s", recipe.name, time.monotonic() - t1)
        return image_id
    finally:
        await asyncio.shield(debootstrap.remove_tree(target))


def _lock_path(recipe: Recipe, options: BuildOptions) -> Path:
    return options.work_dir / "locks" / f"{recipe.name}.lock"


def _up_to_date(info: Mapping[str, Any] | None, digest: str) -> bool:
    return image_labels(info).get(HASH_LABEL) == digest


def _skipped(recipe: Recipe, plan: _Plan, info: Mapping[str, Any], started: float) -> BuildResult:
    return BuildResult(
        recipe.name, recipe.tag, "skipped", info["Id"], plan.recipe_hash,
        time.monotonic() - started, int(info.get("Size", 0)),
    )  # fmt: skip


async def _sweep_if_idle(docker: aiodocker.Docker, recipe: Recipe, keep: str, options: BuildOptions) -> None:
    # Sweeping while another process builds could delete its not yet tagged image; and a caller
    # who cannot write the lock folder (not root) still gets its answer, unswept.
    try:
        async with file_lock(_lock_path(recipe, options), wait=False) as held:
            if held:
                await sweep_old_images(docker, recipe.name, keep=keep)
    except OSError as exc:
        log.debug("%s: old images not swept: %s", recipe.name, exc)


async def ensure_image(
    docker: aiodocker.Docker, recipe: Recipe, *, force: bool = False, options: BuildOptions | None = None
) -> BuildResult:
    """Build ``recipe``'s image unless the tagged image already carries the recipe's hash."""
    options = options or BuildOptions()
    started = time.monotonic()
    plan = await plan_recipe(recipe, options)
    info = await inspect_image(docker, recipe.tag)
    if not force and _up_to_date(info, plan.recipe_hash):
        assert info is not None
        log.info("%s: %s is up to date", recipe.name, recipe.tag)
        await _sweep_if_idle(docker, recipe, info["Id"], options)
        return _skipped(recipe, plan, info, started)

    def waiting() -> None:
        log.info("%s: waiting for another build of it to finish", recipe.name)

    async with file_lock(_lock_path(recipe, options), on_wait=waiting):
        info = await inspect_image(docker, recipe.tag)
        if not force and _up_to_date(info, plan.recipe_hash):
            assert info is not None  # another process built it while we waited
            return _skipped(recipe, plan, info, started)
        log.info("%s: building %s (recipe hash %s)", recipe.name, recipe.tag, plan.recipe_hash[:12])
        image_id = await _build(docker, plan, options)
        try:
            built = await inspect_image(docker, image_id)
            if image_labels(built).get(HASH_LABEL) != plan.recipe_hash:
                raise ImageBuildError(recipe.name, "verify", "the engine did not keep the image labels")
            repo, tag = _split_tag(recipe.tag)
            await docker.images.tag(image_id, repo, tag=tag)
        except BaseException:
            await asyncio.shield(remove_image(docker, image_id))
            raise
        previous = info["Id"] if info and info["Id"] != image_id else None
        removed = await remove_image(docker, previous) if previous else False
        if previous and not removed:
            log.info("%s: previous image %s is still in use; a later run removes it", recipe.name, previous)
        await sweep_old_images(docker, recipe.name, keep=image_id)
    assert built is not None
    seconds = time.monotonic() - started
    log.info("%s: built %s in %.1f s", recipe.name, recipe.tag, seconds)
    return BuildResult(
        recipe.name, recipe.tag, "built", image_id, plan.recipe_hash, seconds,
        int(built.get("Size", 0)), previous, removed,
    )  # fmt: skip


async def _recipes(recipes: Mapping[str, Recipe] | Path | None) -> dict[str, Recipe]:
    if isinstance(recipes, Mapping):
        return dict(recipes)
    directory = recipes if recipes is not None else await asyncio.to_thread(default_recipes_dir)
    return await asyncio.to_thread(load_recipes, directory)


async def ensure_images(
    docker: aiodocker.Docker,
    names: list[str] | None = None,
    force: bool = False,
    *,
    recipes: Mapping[str, Recipe] | Path | None = None,
    options: BuildOptions | None = None,
) -> list[BuildResult]:
    """Make sure the named images (default: every recipe) exist and match their recipes.

    ``recipes`` is a loaded recipe set or a recipes folder (default: the checkout's images/).
    Images are built one after the other: a build is CPU- and disk-bound.
    """
    await ping(docker)
    chosen = select_recipes(await _recipes(recipes), names)
    return [await ensure_image(docker, r, force=force, options=options) for r in chosen]


async def image_status(
    docker: aiodocker.Docker,
    names: list[str] | None = None,
    *,
    recipes: Mapping[str, Recipe] | Path | None = None,
    options: BuildOptions | None = None,
) -> list[ImageStatus]:
    """Whether each image is present and current, stale (recipe changed) or missing."""
    options = options or BuildOptions()
    await ping(docker)
    out = []
    for recipe in select_recipes(await _recipes(recipes), names):
        info = await inspect_image(docker, recipe.tag)
        found = image_labels(info).get(HASH_LABEL)
        image_id = info["Id"] if info else None
        size = int(info.get("Size", 0)) if info else None
        try:
            expected: str | None = (await plan_recipe(recipe, options)).recipe_hash
            detail = ""
        except ImageError as exc:  # e.g. a build tool is missing: the hash cannot be known
            expected, detail = None, str(exc)
        if info is None:
            state: ImageState = "missing"
        elif expected is None:
            state = "unknown"
        else:
            state = "present" if found == expected else "stale"
        out.append(ImageStatus(recipe.name, recipe.tag, state, expected, found, image_id, size, detail))
    return out
