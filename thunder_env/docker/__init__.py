"""The Docker Engine backend (through aiodocker, never the docker CLI)."""

from .backend import DockerBackend

__all__ = ["DockerBackend"]
