"""The one way helpdeskd makes TLS client contexts: the certificate chain and the host name verified
(``ssl.create_default_context``, which poplib and smtplib do not use by default), TLS 1.2 or newer.

Contexts are kept and shared: loading a trust store costs ~40 ms, and one is needed for every POP3
and SMTP session. A kept context is used for at most ten minutes, and one built from ``ca_file`` no
longer than that file stays unchanged, so a renewed CA is picked up without a restart.
"""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

from .errors import PermanentError

_KEEP_SECONDS = 600.0
_kept: dict[tuple[str, int], tuple[float, ssl.SSLContext]] = {}
_lock = threading.Lock()


def verified_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context: the system's CAs, or only ``ca_file`` when given.

    Raises PermanentError naming ``ca_file`` when it cannot be read or holds no certificate.
    """
    try:
        key = (str(ca_file), ca_file.stat().st_mtime_ns) if ca_file else ("", 0)
        with _lock:
            kept = _kept.get(key)
            if kept is not None and time.monotonic() - kept[0] < _KEEP_SECONDS:
                return kept[1]
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise PermanentError(f"ca_file {ca_file}: {getattr(exc, 'strerror', None) or exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with _lock:
        _kept[key] = (time.monotonic(), context)
    return context
