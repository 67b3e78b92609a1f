"""The Docker Engine calls the image builder makes, all through one aiodocker client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Mapping, Sequence
from typing import Any

import aiodocker

from thunder_env.errors import BackendUnavailableError
from thunder_env.images.errors import ImageBuildError

HASH_LABEL = "thunder.recipe-hash"
RECIPE_LABEL = "thunder.recipe"


async def ping(docker: aiodocker.Docker) -> None:
    """Fail early, with the fix, when no engine answers."""
    try:
        await docker.version()
    except aiodocker.DockerError as exc:
        raise BackendUnavailableError(
            f"the Docker Engine is not answering ({exc.message}); start it with "
            "`scripts/ensure-system.sh` (as root) or `dockerd &`, or set DOCKER_HOST",
            status=exc.status,
        ) from exc


async def inspect_image(docker: aiodocker.Docker, ref: str) -> dict[str, Any] | None:
    """The image's inspect data, or None when the engine does not have it."""
    try:
        return await docker.images.inspect(ref)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        raise


def image_labels(info: Mapping[str, Any] | None) -> dict[str, str]:
    if not info:
        return {}
    return dict((info.get("Config") or {}).get("Labels") or {})


def import_changes(cmd: Sequence[str], workdir: str, env: Mapping[str, str], labels: Mapping[str, str]) -> list[str]:
    """Dockerfile instructions for `docker import --change` (JSON strings are valid quoting there)."""
    changes = [f"CMD {json.dumps(list(cmd))}", f"WORKDIR {workdir}"]
    changes += [f"ENV {key}={json.dumps(value, ensure_ascii=False)}" for key, value in env.items()]
    if labels:
        changes.append("LABEL " + " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in labels.items()))
    return changes


async def import_rootfs(
    docker: aiodocker.Docker,
    recipe: str,
    data: bytes | AsyncIterable[bytes],
    changes: Sequence[str],
) -> str:
    """`docker import` a root filesystem tar as an untagged image; returns its id.

    aiodocker's ``images.import_image`` is `docker load` (images/load), not `docker import`
    (images/create?fromSrc=-), so this goes through the client's own chunked-upload helper.
    The engine joins the change lines into one Dockerfile, hence a single newline-joined value.
    """
    params = {"fromSrc": "-", "changes": "\n".join(changes), "message": import_message(recipe)}
    try:
        async with docker._query_chunked_post(
            "images/create",
            params=params,
            data=data,
            headers={"Content-Type": "application/x-tar"},
            timeout=None,
        ) as response:
            body = await response.read()
    except aiodocker.DockerError as exc:
        raise ImageBuildError(recipe, "docker import", exc.message) from exc
    image_id = ""
    for line in body.decode(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if item.get("error") or item.get("errorDetail"):
            detail = item.get("error") or item["errorDetail"].get("message", "unknown error")
            raise ImageBuildError(recipe, "docker import", str(detail))
        status = str(item.get("status", ""))
        if status.startswith("sha256:"):
            image_id = status
    if not image_id:
        raise ImageBuildError(recipe, "docker import", f"the engine returned no image id: {body[:500]!r}")
    return image_id


async def remove_image(docker: aiodocker.Docker, image_id: str) -> bool:
    """Remove an image no tag points to any more; False when containers still use it."""
    try:
        await docker.images.delete(image_id, noprune=False)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return True
        if exc.status == 409:  # still used by a container: it goes when they do (docker image prune)
            return False
        raise
    return True


def import_message(recipe: str) -> str:
    """The commit message `docker import` records; marks images this builder made."""
    return f"thunder recipe {recipe}"


async def sweep_old_images(docker: aiodocker.Docker, recipe: str, keep: str) -> list[str]:
    """Remove untagged images an earlier build of ``recipe`` left because a container still used
    them then. Only imported images with this builder's message go: an image committed from a
    container inherits the labels but not the message, and is not ours to delete."""
    removed = []
    found = await docker.images.list(filters={"dangling": ["true"], "label": [f"{RECIPE_LABEL}={recipe}"]})
    for item in found:
        image_id = item.get("Id", "")
        if not image_id or image_id == keep:
            continue
        info = await inspect_image(docker, image_id)
        if info and info.get("Comment") == import_message(recipe) and not info.get("Parent"):
            if await remove_image(docker, image_id):
                removed.append(image_id)
    return removed
