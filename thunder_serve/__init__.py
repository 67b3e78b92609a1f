"""The product above the three components: the scheduler, the MCP server and one env manager in one process.

The only package that imports all of `thunder_env`, `mcp_server` and `thunder_sched` (`thunder serve`,
`thunder status`, `thunder demo`, the program link, status rendering); agent-side code is in `clients/`.

`open_combined(config)` gives a `CombinedServer` whose `app` serves `/v1`, `/mcp`, `/p/{program_id}/mcp`,
`/metrics` and `/thunder/status`; `thunder demo` runs real agent programs against it.
"""

from thunder_common.serving import serving  # re-exported: how the product serves its app

from .app import CombinedServer, build_combined, open_combined
from .config import CombinedConfig
from .errors import AdapterError, CombinedError, DemoError, StatusUnavailableError
from .link import ProgramLink
from .status import StatusReport

__all__ = [
    "AdapterError",
    "CombinedConfig",
    "CombinedError",
    "CombinedServer",
    "DemoError",
    "ProgramLink",
    "StatusReport",
    "StatusUnavailableError",
    "build_combined",
    "open_combined",
    "serving",
]
