"""Typed errors of the environment manager.

Every error derives from :class:`EnvError`, this component's root below Thunder's ``ThunderError``
(thunder_common.errors); where a builtin fits, the subclass also inherits it
(``KeyError``, ``TimeoutError``...) so callers can catch either. Messages say what to do next.
"""

from __future__ import annotations

from thunder_common.errors import ThunderError


class EnvError(ThunderError):
    """Root of the environment manager's errors (sandboxes, leases, backends, images)."""


class SandboxNotFoundError(EnvError, LookupError):
    def __init__(self, sandbox_id: str, hint: str = "") -> None:
        self.sandbox_id = sandbox_id
        msg = f"unknown sandbox {sandbox_id!r}"
        super().__init__(f"{msg}: {hint}" if hint else f"{msg}: list sandboxes to see the live ones")


class LeaseReleasedError(EnvError):
    def __init__(self, lease_id: str, sandbox_id: str, reason: str) -> None:
        self.lease_id = lease_id
        self.sandbox_id = sandbox_id
        self.reason = reason
        super().__init__(
            f"lease {lease_id} on sandbox {sandbox_id} is no longer valid ({reason}); "
            "acquire a new lease to keep working"
        )


class ProgramEndedError(EnvError):
    def __init__(self, program_id: str) -> None:
        self.program_id = program_id
        super().__init__(f"program {program_id!r} has ended; start a new program id to continue")


class ManagerClosedError(EnvError):
    """The manager is closing or closed: it starts nothing more (a racing start is destroyed)."""

    def __init__(self) -> None:
        super().__init__("this environment manager is shutting down or closed; it starts no new sandboxes")


class InvalidSpecError(EnvError, ValueError):
    """A sandbox spec or an operation's argument is not acceptable."""


class ImageNotFoundError(EnvError, LookupError):
    def __init__(self, image: str) -> None:
        self.image = image
        super().__init__(
            f"image {image!r} is not present in the local Docker Engine and no registry is used; "
            "build it first (python -m thunder_env.images build) or pass an image that `docker images` lists"
        )


class ResourceExhaustedError(EnvError):
    """The host is too short of disk or memory to start another sandbox safely."""


class BackendError(EnvError):
    """The container engine failed in a way the caller cannot fix by changing arguments."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class BackendUnavailableError(BackendError):
    """The container engine does not answer."""


class EngineStuckError(BackendUnavailableError):
    """The container engine accepted a call but did not answer within its time limit (a hung dockerd)."""


class SandboxesNotDestroyedError(BackendError):
    """Sandboxes whose containers could not be removed; the manager still tracks them and retries."""

    def __init__(self, sandbox_ids: list[str], cause: str) -> None:
        self.sandbox_ids = sandbox_ids
        super().__init__(
            f"{len(sandbox_ids)} sandbox(es) could not be removed ({cause}): {', '.join(sandbox_ids)}; "
            "they stay tracked: check the Docker Engine (`docker ps`), then close again to retry"
        )


class CommandStartUnknownError(BackendError):
    """A command was handed over but its start was never confirmed: it may have run (partly). It was
    killed if it had started, and it is never run a second time behind the caller's back."""

    def __init__(self, sandbox_id: str, detail: str) -> None:
        self.sandbox_id = sandbox_id
        super().__init__(
            f"sandbox {sandbox_id}: the command may or may not have started ({detail}); it was stopped and "
            "not retried, so check its effects before running it again"
        )


class SandboxDeadError(EnvError):
    def __init__(self, sandbox_id: str, detail: str = "") -> None:
        self.sandbox_id = sandbox_id
        super().__init__(
            f"sandbox {sandbox_id} is not running{': ' + detail if detail else ''}; "
            "release it and acquire a new one"
        )


class FileOperationError(EnvError, OSError):
    """A file operation inside a sandbox failed (missing path, not a file, ...)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class FileTooLargeError(FileOperationError):
    """A file (or the archive of a path) is larger than the read limit: nothing past the limit was loaded."""

    def __init__(self, path: str, limit: int, size: int | None = None) -> None:
        self.limit = limit
        self.size = size
        what = f"is {size} bytes" if size is not None else "is larger than that"
        super().__init__(
            path,
            f"too large to read: the read limit is {limit} bytes and the file {what}; "
            "read a part of it with a command (head -c, tail -c, sed -n) instead",
        )


class PortExposeError(EnvError):
    """A port could not be exposed (sandbox without network, bad port number...)."""


class ProcessNotFoundError(EnvError, LookupError):
    def __init__(self, process_id: str) -> None:
        self.process_id = process_id
        super().__init__(f"unknown background process {process_id!r}; it may belong to a released sandbox")
