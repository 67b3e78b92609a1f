"""Thunder's environment manager: sandboxes leased by programs, reclaimed when programs end."""

from .config import ManagerConfig
from .errors import (
    BackendError,
    BackendUnavailableError,
    CommandStartUnknownError,
    EngineStuckError,
    FileOperationError,
    FileTooLargeError,
    ImageNotFoundError,
    InvalidSpecError,
    LeaseReleasedError,
    ManagerClosedError,
    PortExposeError,
    ProcessNotFoundError,
    ResourceExhaustedError,
    SandboxDeadError,
    SandboxesNotDestroyedError,
    SandboxNotFoundError,
    ThunderError,
)
from .events import EventBus, SandboxEvent, ToolEvent
from .leases import Lease
from .manager import DEFAULT, EnvManager
from .results import CapturedOutput, ExecResult, FileEntry, OutputChunk, PortBinding, SandboxInfo
from .spec import SandboxSpec

__all__ = [
    "DEFAULT",
    "BackendError",
    "BackendUnavailableError",
    "CapturedOutput",
    "CommandStartUnknownError",
    "EngineStuckError",
    "EnvManager",
    "EventBus",
    "ExecResult",
    "FileEntry",
    "FileOperationError",
    "FileTooLargeError",
    "ImageNotFoundError",
    "InvalidSpecError",
    "Lease",
    "LeaseReleasedError",
    "ManagerClosedError",
    "ManagerConfig",
    "OutputChunk",
    "PortBinding",
    "PortExposeError",
    "ProcessNotFoundError",
    "ResourceExhaustedError",
    "SandboxDeadError",
    "SandboxEvent",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxSpec",
    "SandboxesNotDestroyedError",
    "ThunderError",
    "ToolEvent",
]
