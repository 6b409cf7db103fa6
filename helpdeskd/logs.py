"""Logging with structlog: JSON lines when stderr is not a terminal (the journal), readable lines on one.

Every line carries ``event``, ``level``, ``timestamp`` and the ``component`` of the logger that wrote
it (``daemon``, ``intake``, ``pop3``, ``sender``, …); lines about one mailbox add ``mailbox``, lines
about one message add ``message_id`` and ``ticket``. Under systemd (stderr is the journal stream named
by ``$JOURNAL_STREAM``) each line starts with its syslog priority (``<3>`` for an error), which journald
strips and records, so ``journalctl -u helpdeskd -p warning`` shows warnings and errors only.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
SYSLOG_PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "info": 6, "debug": 7}


def setup(level: str = "info", *, json: bool | None = None, stream: TextIO | None = None,
          journal: bool | None = None) -> None:
    """Configure structlog once per process; safe to call again (reload changes the level)."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(
        colors=stream.isatty())
    if json and (journal if journal is not None else is_journal(stream)):
        renderer = _with_priority(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def is_journal(stream: TextIO) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM`` = device:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # a StringIO in tests, or a closed stream
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def _with_priority(render: Any) -> Any:
    """Wrap a renderer so each line starts with ``<N>``, its syslog priority (sd-daemon(3))."""

    def render_prefixed(logger: Any, method_name: str, event_dict: dict) -> str:
        priority = SYSLOG_PRIORITY.get(str(event_dict.get("level")), 6)
        return f"<{priority}>{render(logger, method_name, event_dict)}"

    return render_prefixed


def get(component: str) -> structlog.typing.FilteringBoundLogger:
    """A lazy logger: safe at import time, it takes the configuration in force when it first logs."""
    return structlog.get_logger(component=component)
