"""Image recipes: one folder per image under ``images/``, described by its ``recipe.toml``.

A recipe is data; the builder for its ``kind`` turns it into an image. Unknown keys are rejected so
a typo in a recipe fails loudly instead of being ignored.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from thunder_env.images.errors import RecipeError, RecipeNotFoundError

RECIPE_FILE = "recipe.toml"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_TAG_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_abs_path(value: str) -> str:
    p = PurePosixPath(value)
    if not p.is_absolute() or ".." in p.parts:
        raise ValueError(f"{value!r} must be an absolute path without '..'")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageConfig(_Strict):
    """What `docker import --change` sets on the image."""

    cmd: list[str] = Field(min_length=1)
    workdir: str = "/workspace"
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str) -> str:
        return _check_abs_path(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not _ENV_KEY_RE.match(key):
                raise ValueError(f"bad environment variable name {key!r}")
            if not value.isprintable():
                raise ValueError(f"environment value of {key} must be printable text on one line")
        return v


class UserSpec(_Strict):
    """The unprivileged account every image carries besides root."""

    name: str = Field(default="sandbox", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    uid: int = Field(default=1000, ge=1, le=65533)
    gid: int = Field(default=1000, ge=1, le=65533)
    home: str = "/home/sandbox"
    shell: str = "/bin/sh"

    @field_validator("home", "shell")
    @classmethod
    def _abs(cls, v: str) -> str:
        return _check_abs_path(v)


class _RecipeBase(_Strict):
    tag: str
    description: str = ""
    image: ImageConfig
    user: UserSpec = Field(default_factory=UserSpec)

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not _TAG_RE.match(v):
            raise ValueError(f"tag {v!r} must look like 'repo/name:tag' (lower-case repository)")
        return v


class BusyboxRecipe(_RecipeBase):
    """A root filesystem made of the host's static busybox and its applet links."""

    kind: Literal["busybox"]


class DebootstrapRecipe(_RecipeBase):
    """A Debian root filesystem made by debootstrap from the mirror the host's apt uses."""

    kind: Literal["debootstrap"]
    variant: str = "minbase"
    include: list[str] = Field(default_factory=list)
    components: list[str] = Field(default_factory=lambda: ["main"])
    # Empty: the suite is read from the machine's apt sources at build time.
    suite: str = ""
    # Paths (globs, relative to the root filesystem) whose matches are deleted after debootstrap.
    prune: list[str] = Field(default_factory=list)
    # Lines of a dpkg config file so packages installed later in a sandbox stay slim as well.
    dpkg_config: list[str] = Field(default_factory=list)

    @field_validator("include", "components")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for item in v:
            if not re.match(r"^[a-z0-9][a-z0-9+.-]*$", item):
                raise ValueError(f"{item!r} is not a Debian package or component name")
        return v

    @field_validator("prune")
    @classmethod
    def _prune(cls, v: list[str]) -> list[str]:
        for pattern in v:
            p = PurePosixPath(pattern)
            if p.is_absolute() or ".." in p.parts or not p.parts:
                raise ValueError(f"prune pattern {pattern!r} must be relative and stay inside the rootfs")
        return v


RecipeSpec = Annotated[BusyboxRecipe | DebootstrapRecipe, Field(discriminator="kind")]
_SPEC_ADAPTER: TypeAdapter[BusyboxRecipe | DebootstrapRecipe] = TypeAdapter(RecipeSpec)


@dataclass(frozen=True)
class Recipe:
    """A recipe as found on disk: its name (the folder's), folder and parsed spec."""

    name: str
    directory: Path
    spec: BusyboxRecipe | DebootstrapRecipe

    @property
    def tag(self) -> str:
        return self.spec.tag


def load_recipe(directory: Path) -> Recipe:
    """Parse ``directory/recipe.toml``. Blocking file I/O: call from a thread in async code."""
    name = directory.name
    if not _NAME_RE.match(name):
        raise RecipeError(f"{directory}: recipe folder names must match {_NAME_RE.pattern}")
    path = directory / RECIPE_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RecipeError(f"{directory}: missing {RECIPE_FILE}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from exc
    try:
        spec = _SPEC_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise RecipeError(f"{path}: invalid recipe:\n{exc}") from exc
    return Recipe(name=name, directory=directory, spec=spec)


def load_recipes(recipes_dir: Path) -> dict[str, Recipe]:
    """Every recipe under ``recipes_dir`` (folders holding a recipe.toml), sorted by name."""
    if not recipes_dir.is_dir():
        raise RecipeError(f"recipes folder {recipes_dir} does not exist; pass the images/ folder of a Thunder checkout")
    recipes = {d.name: load_recipe(d) for d in sorted(recipes_dir.iterdir()) if (d / RECIPE_FILE).is_file()}
    if not recipes:
        raise RecipeError(f"no recipe (*/{RECIPE_FILE}) under {recipes_dir}")
    tags: dict[str, str] = {}
    for recipe in recipes.values():
        if recipe.tag in tags:
            raise RecipeError(f"recipes {tags[recipe.tag]!r} and {recipe.name!r} both build {recipe.tag}")
        tags[recipe.tag] = recipe.name
    return recipes


def select_recipes(recipes: dict[str, Recipe], names: list[str] | None) -> list[Recipe]:
    """The recipes named (in the order given, duplicates dropped), or all of them."""
    if not names:
        return list(recipes.values())
    chosen: list[Recipe] = []
    for name in dict.fromkeys(names):
        if name not in recipes:
            raise RecipeNotFoundError(name, sorted(recipes))
        chosen.append(recipes[name])
    return chosen


def default_recipes_dir() -> Path:
    """The ``images/`` folder of the checkout this package runs from (editable installs)."""
    candidate = Path(__file__).resolve().parents[2] / "images"
    if not candidate.is_dir():
        raise RecipeError(
            f"no images/ folder next to the installed package (looked at {candidate}); "
            "pass --recipes PATH pointing at the images/ folder of a Thunder checkout"
        )
    return candidate
