"""Logging with structlog: JSON lines when stderr is not a terminal (the journal), readable lines on one.

Every line carries ``event``, ``level``, ``timestamp`` and the ``component`` of the logger that wrote
it (``daemon``, ``intake``, ``pop3``, ``sender``, …); lines about one mailbox add ``mailbox``, lines
about one message add ``message_id`` and ``ticket``. Under systemd (stderr is the journal stream named
by ``$JOURNAL_STREAM``) each line starts with its syslog priority (``<3>`` for an error), which journald
strips and records, so ``journalctl -u helpdeskd -p warning`` shows warnings and errors only.
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
    renderer: Any = structlog.processors.JSONRenderer(_json_line) if json else structlog.dev.ConsoleRenderer(
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
        logger_factory=_OUTPUT.logger,
        cache_logger_on_first_use=False,  # (ours cache themselves until the next setup: see get())
    )
    _OUTPUT.stream = stream
    global _generation
    _generation += 1


def _json_line(event_dict: dict, **_options: Any) -> str:
    """The JSON renderer's serializer: one encoder made once (``json.dumps`` makes one per line)."""
    return _LINE_JSON.encode(event_dict)


def _unjsonable(value: Any) -> Any:
    """What a value JSON has no form for is written as: its ``__structlog__()``, else its repr."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


_LINE_JSON = jsonlib.JSONEncoder(default=_unjsonable)
_generation = 0  # setup() calls so far: a logger made before the last one is made again


class _Output:
    """Where rendered lines go: to the stream, one write each — or, inside :func:`deferred` in this
    thread, into a list written in one go when the block ends. A warning or worse is written at
    once, after the lines held before it. One for the process: a reload (a new :func:`setup`) only
    changes its stream, so lines held across it keep their order."""

    def __init__(self) -> None:
        self.stream: TextIO = sys.stderr
        self.lock = threading.Lock()  # (lines from several threads never interleave)
        self.held = threading.local()

    def logger(self, *_args: Any) -> "_Logger":
        return _Logger(self)

    def emit(self, level: str, line: str) -> None:
        held = getattr(self.held, "lines", None)
        if held is not None and level in ("debug", "info"):
            held.append(line)
            return
        self.write([*(held or ()), line])
        if held:
            held.clear()

    def write(self, lines: list[str]) -> None:
        if lines:
            with self.lock:
                try:
                    self.stream.write("".join(line + "\n" for line in lines))
                    self.stream.flush()
                except (OSError, ValueError):  # the journal gone, a closed stream: a log line that
                    pass                          # cannot be written must not stop the mail's handling


class _Logger:
    """What structlog calls with each rendered line, by the name of its level."""

    def __init__(self, output: _Output) -> None:
        self._output = output

    def __getattr__(self, level: str) -> Any:
        return lambda line: self._output.emit(level, line)


_OUTPUT = _Output()


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block (this thread), info and debug lines are written together when it ends: one
    write for a batch of mail instead of one per message, for us and for the journal reading them.
    They come out when the block ends (and a crash inside it loses them, not the work they tell of)."""
    output = _OUTPUT
    if getattr(output.held, "lines", None) is not None:  # nested: the outer block writes them
        yield
        return
    output.held.lines = []
    try:
        yield
    finally:
        lines, output.held.lines = output.held.lines, None
        output.write(lines)


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
    """A lazy logger: safe at import time, it takes the configuration in force when it first logs,
    and again after each :func:`setup` (a reload's level). structlog's own lazy logger makes a new
    logger for every line, a tenth of what a line costs; this one keeps it until the next setup."""
    return _Component(component)  # type: ignore[return-value]


class _Component:
    """See :func:`get`. (Configuring structlog other than through :func:`setup` would not reach a
    logger made already.)"""

    __slots__ = ("_component", "_made", "_logger")

    def __init__(self, component: str) -> None:
        self._component = component
        self._made = -1
        self._logger: Any = None

    def __getattr__(self, name: str) -> Any:
        made = _generation  # (read first: a reload meanwhile makes the next line build it again)
        if self._made != made:
            self._logger = structlog.get_logger().bind(component=self._component)
            self._made = made
        return getattr(self._logger, name)
