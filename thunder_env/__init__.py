"""Thunder's environment manager: sandboxes leased by programs, reclaimed when programs end."""

from .config import ManagerConfig
from .errors import (
    BackendError,
    BackendUnavailableError,
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
    SandboxNotFoundError,
    ThunderError,
)
from .events import EventBus, ToolEvent
from .leases import Lease
from .manager import DEFAULT, EnvManager
from .results import CapturedOutput, ExecResult, FileEntry, OutputChunk, PortBinding, ProcessOutput, SandboxInfo
from .spec import SandboxSpec

__all__ = [
    "DEFAULT",
    "BackendError",
    "BackendUnavailableError",
    "CapturedOutput",
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
    "ProcessOutput",
    "ResourceExhaustedError",
    "SandboxDeadError",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxSpec",
    "ThunderError",
    "ToolEvent",
]
