"""Scratch state of one :func:`helpdeskd.parse.parse` call, shared by the parsing modules.

Contract: one :class:`ParseState` per parse, created by :mod:`helpdeskd.parse` and passed down to
:mod:`helpdeskd.mailheaders`, :mod:`helpdeskd.charsets` and :mod:`helpdeskd.mimewalk`, which
report into it. It holds the defects found (an ordered set of short human-readable strings,
deduplicated and capped so hostile mail cannot grow it without bound), the attachments met so
far, and the number of MIME parts admitted (checked against ``Limits.max_parts``). Pure data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from helpdeskd.message import Attachment
from helpdeskd.settings import Limits

__all__ = ["ParseState"]

# Hostile mail can produce one defect per header; a bounded list keeps the value small.
_MAX_DEFECTS = 50
_MORE_DEFECTS = "more defects omitted"


@dataclass
class ParseState:
    """Mutable scratch space of one parse: collected defects, attachments and counters."""

    limits: Limits
    defects: dict[str, None] = field(default_factory=dict)  # ordered set: dedup in O(1)
    attachments: list[Attachment] = field(default_factory=list)
    embedded_ids: list[str] = field(default_factory=list)  # Message-IDs of embedded mail (bounces, forwards)
    parts: int = 0

    def defect(self, text: str) -> None:
        """Record a defect once; after _MAX_DEFECTS only a final marker is added."""
        if len(self.defects) < _MAX_DEFECTS:
            self.defects[text] = None
        else:
            self.defects[_MORE_DEFECTS] = None
