"""The server's open-file limit: every command in flight, forwarded connection and engine call holds
a descriptor, so the soft limit (often 1024) is raised to the hard one when a server starts."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# Used when the hard limit is unlimited: the kernel caps descriptors per process anyway (fs.nr_open).
UNLIMITED_TARGET = 1 << 20


def raise_open_files_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` up to the hard limit (never past it); returns the soft limit now
    in force. A refusal by the kernel is logged, not fatal: the per-program caps still bound the server."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
        return soft
    return target
