"""Sandbox images built locally, without a registry, from the recipes under ``images/``.

``await ensure_images(docker)`` builds what is missing or stale and skips the rest; the CLI is
``python -m thunder_env.images build|status``.
"""

from thunder_env.images.builder import (
    BuildOptions,
    BuildResult,
    ImageState,
    ImageStatus,
    ensure_image,
    ensure_images,
    image_status,
    plan_recipe,
)
from thunder_env.images.engine import HASH_LABEL, RECIPE_LABEL
from thunder_env.images.errors import (
    AptSourceError,
    ImageBuildError,
    ImageError,
    RecipeError,
    RecipeNotFoundError,
    RootRequiredError,
    ToolMissingError,
)
from thunder_env.images.recipes import Recipe, default_recipes_dir, load_recipes

BASE_IMAGE = "thunder/base:latest"
PYTHON_IMAGE = "thunder/python:latest"

__all__ = [
    "BASE_IMAGE",
    "HASH_LABEL",
    "PYTHON_IMAGE",
    "RECIPE_LABEL",
    "AptSourceError",
    "BuildOptions",
    "BuildResult",
    "ImageBuildError",
    "ImageError",
    "ImageState",
    "ImageStatus",
    "Recipe",
    "RecipeError",
    "RecipeNotFoundError",
    "RootRequiredError",
    "ToolMissingError",
    "default_recipes_dir",
    "ensure_image",
    "ensure_images",
    "image_status",
    "load_recipes",
    "plan_recipe",
]
