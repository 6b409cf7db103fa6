"""The error tree. Adapters translate library errors into these at their edge."""

from __future__ import annotations


class HelpdeskError(Exception):
    """Base of every error helpdeskd raises on purpose."""


class ConfigError(HelpdeskError):
    """The configuration (TOML or templates) is invalid.

    ``problems`` holds every problem found, each prefixed with its key path,
    so an admin sees all of them at once.
    """

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(self.problems))


class TransientError(HelpdeskError):
    """Worth retrying later: a server is down, a disk is full, a lock is busy."""


class PermanentError(HelpdeskError):
    """Retrying will not help: the input or the peer's answer is final."""


class StoreLocked(TransientError):
    """Another process holds the state directory's lock."""
