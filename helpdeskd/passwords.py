"""Reading a password from where the config says it lives: a file, an environment variable, or a
systemd credential (a file under ``$CREDENTIALS_DIRECTORY``, from ``LoadCredential=``).

The TOML never holds a secret. Callers read the password at each connection, so a rotated secret is
picked up without a reload.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .errors import PermanentError

SOURCES = ("password_file", "password_env", "password_credential")


def read_password(file: Path | None, env: str | None, credential: str | None, *, what: str,
                  environ: Mapping[str, str] = os.environ) -> str | None:
    """The password from whichever source is set (None when none is), one trailing line break dropped.

    Raises PermanentError naming the source (``what``, e.g. "smtp" or "mailboxes.support") when it is
    unusable: a missing variable, an unreadable file, no ``$CREDENTIALS_DIRECTORY``, or not one line.
    """
    if env:
        if env not in environ:
            raise PermanentError(f"{what}.password_env: environment variable {env} is not set")
        return _one_line(environ[env], f"{what}.password_env ({env})")
    if credential:
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise PermanentError(f"{what}.password_credential: $CREDENTIALS_DIRECTORY is not set "
                                 "(use LoadCredential= in the systemd unit)")
        file = Path(directory) / credential
    if not file:
        return None
    try:
        return _one_line(file.read_text(encoding="utf-8"), f"{what}: {file}")
    except (OSError, UnicodeDecodeError) as exc:
        raise PermanentError(f"{what}: cannot read {file}: {getattr(exc, 'strerror', None) or exc}") from exc


def _one_line(value: str, where: str) -> str:
    value = value.removesuffix("\n").removesuffix("\r")
    if not value or "\n" in value or "\r" in value:
        raise PermanentError(f"{where} must hold exactly one non-empty line")
    return value
