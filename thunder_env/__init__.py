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
from .events import (
    EventBus,
    LifecycleEvent,
    ProgramEnded,
    SandboxAcquired,
    SandboxEvent,
    SandboxReleased,
    ToolEvent,
)
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
    "LifecycleEvent",
    "ManagerClosedError",
    "ManagerConfig",
    "OutputChunk",
    "PortBinding",
    "PortExposeError",
    "ProcessNotFoundError",
    "ProgramEnded",
    "ResourceExhaustedError",
    "SandboxAcquired",
    "SandboxDeadError",
    "SandboxEvent",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxReleased",
    "SandboxSpec",
    "SandboxesNotDestroyedError",
    "ThunderError",
    "ToolEvent",
]
