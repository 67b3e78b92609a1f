"""Typed errors of the image builder; each message says what to do next."""

from __future__ import annotations

from collections.abc import Sequence

from thunder_env.errors import EnvError


class ImageError(EnvError):
    """Root of every error raised while loading recipes or building images."""


class RecipeError(ImageError, ValueError):
    """A recipe directory or its recipe.toml is malformed."""


class RecipeNotFoundError(ImageError, LookupError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(f"no image recipe named {name!r}; known recipes: {', '.join(self.known) or '(none)'}")


class ToolMissingError(ImageError, FileNotFoundError):
    """A host program the build needs is not installed."""

    def __init__(self, tool: str, package: str, detail: str = "") -> None:
        self.tool = tool
        self.package = package
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"{tool} is not usable{extra}: install it with `apt-get install {package}` "
            "(or run scripts/ensure-system.sh as root)"
        )


class AptSourceError(ImageError, LookupError):
    """No Debian mirror and suite could be read from the machine's apt sources."""


class RootRequiredError(ImageError, PermissionError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs root (it creates device nodes and chroots); run the build as root")


class ImageBuildError(ImageError):
    """A build step failed; ``output_tail`` holds the last lines the failing step printed."""

    def __init__(self, recipe: str, step: str, detail: str, output_tail: Sequence[str] = ()) -> None:
        self.recipe = recipe
        self.step = step
        self.detail = detail
        self.output_tail = tuple(output_tail)
        msg = f"building image {recipe!r} failed at {step}: {detail}"
        if self.output_tail:
            msg += "\n--- last output ---\n" + "\n".join(self.output_tail)
        super().__init__(msg)
