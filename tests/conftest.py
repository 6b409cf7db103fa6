"""Shared fixtures: a real config in a temporary directory, using the repository's templates."""

from __future__ import annotations

import shutil
import tempfile
import tomllib
from pathlib import Path

import pytest

from helpdeskd.config import build_config
from helpdeskd.cycle import Services
from helpdeskd.settings import Config
from helpdeskd.templates import load_templates

ROOT = Path(__file__).resolve().parent.parent


def default_config_data() -> dict:
    return tomllib.loads((ROOT / "config" / "helpdeskd.toml").read_text(encoding="utf-8"))


def make_config(tmp_path: Path, **helpdesk: object) -> Config:
    """The shipped default config with state and inbox under ``tmp_path``; ``helpdesk`` overrides keys."""
    data = default_config_data()
    data["helpdesk"].update({"state_dir": str(tmp_path / "state"), "templates_dir": str(ROOT / "templates"),
                             **helpdesk})
    for box in data.get("mailboxes", []):
        box["path"] = str(tmp_path / "inbox")
    return build_config(data, tmp_path)


def write_config(tmp_path: Path, text_edit=None, **helpdesk: object) -> Path:
    """Write a TOML config file under ``tmp_path`` (same content as :func:`make_config`)."""
    import tomli_w

    data = default_config_data()
    data["helpdesk"].update({"state_dir": str(tmp_path / "state"), "templates_dir": str(ROOT / "templates"),
                             **helpdesk})
    for box in data.get("mailboxes", []):
        box["path"] = str(tmp_path / "inbox")
        box["interval"] = 0.2
    path = tmp_path / "helpdeskd.toml"
    text = tomli_w.dumps(data)
    path.write_text(text_edit(text) if text_edit else text, encoding="utf-8")
    return path


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
def svc(config: Config) -> Services:
    return Services.open(config, load_templates(config))


def mail(
    subject: str = "Mi sitio no carga",
    body: str = "Hola, desde esta mañana mi sitio web no carga. Gracias por la ayuda.",
    sender: str = "Ana García <ana@cliente.es>",
    message_id: str | None = "<m1@cliente.es>",
    extra: str = "",
) -> bytes:
    """A small, well-formed message; ``extra`` is inserted verbatim as more header lines."""
    lines = [f"From: {sender}", "To: support@helpdesk.localhost", f"Subject: {subject}"]
    if message_id:
        lines.append(f"Message-ID: {message_id}")
    lines += [line for line in extra.splitlines() if line]
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit", "", body]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def server_dir() -> Path:
    """A directory for a Dovecot instance. Not pytest's tmp_path: its parent is mode 0700, and Dovecot's
    mail processes run as another user."""
    base = Path(tempfile.mkdtemp(prefix="hd-dovecot-"))
    base.chmod(0o755)
    return base


def running_dovecot():
    """A real Dovecot (POP3/IMAP, plain and TLS, a throwaway CA), stopped and removed afterwards."""
    from dovecot import Dovecot, make_pki

    base = server_dir()
    server = Dovecot(base, make_pki(base)).start()
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot():
    """One Dovecot shared by the whole session (tests that stop the server use their own)."""
    yield from running_dovecot()
