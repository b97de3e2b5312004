"""The process's open-file limit, raised at start as far as its hard limit allows.

Every gRPC and HTTP connection, worker pipe and log file is a descriptor. Distributions often start services with
a soft limit of 1024 under a hard limit of hundreds of thousands; at the soft limit new connections fail to be
accepted and gRPC calls fail with DEADLINE_EXCEEDED. `raise_open_file_limit()` sets the soft limit to the hard one
(at most `MAX_OPEN_FILES`, the kernel's usual ceiling) and returns the limit in force; the HTTP connection cap is
then kept under half of it (`openai_api/connections.py`).
"""

from __future__ import annotations

import logging
import resource

logger = logging.getLogger(__name__)

MAX_OPEN_FILES = 1 << 20  # Linux's default fs.nr_open: setrlimit refuses more


def open_file_limit() -> int:
    """The soft limit on open descriptors now (`MAX_OPEN_FILES` when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_OPEN_FILES if soft == resource.RLIM_INFINITY else soft


def raise_open_file_limit() -> int:
    """Raise the soft limit to the hard one (at most `MAX_OPEN_FILES`); return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, target, error)
            return soft
        logger.info("open-file limit raised from %d to %d", soft, target)
    return open_file_limit()
