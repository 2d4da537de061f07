"""The relay's own Nostr key: NIP-11 ``self``, the author of its kind-0 profile and of
whatever it signs (zap receipts for zaps to the relay).

The key comes from ``[relay] secret_key`` (64 hex; or env ``SATSRELAY_RELAY__SECRET_KEY``),
else from the key file (``[relay] key_file``, default ``relay.key`` beside the SQLite
database, or ``data/relay.key`` with PostgreSQL). A missing file is generated on first
start: written with mode 0600 to a temporary file, then linked into place (never
world-readable, never seen half-written by a worker starting at the same moment).
Several nodes sharing one PostgreSQL must be given the same key (config or env): each
would otherwise make its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import orjson

from relay import crypto
from relay.config import ConfigError, Settings
from relay.event import Event, is_hex64, sign_event

log = logging.getLogger(__name__)

KEY_FILE_NAME = "relay.key"


@dataclass(frozen=True, slots=True)
class RelayIdentity:
    secret: bytes
    pubkey: str

    def __repr__(self) -> str:  # the secret never reaches a log line
        return f"RelayIdentity(pubkey={self.pubkey!r})"

    @classmethod
    def from_secret(cls, secret: bytes) -> RelayIdentity:
        return cls(secret, crypto.public_key(secret).hex())


def key_file_path(settings: Settings) -> Path:
    if settings.relay.key_file:
        return Path(settings.relay.key_file)
    url = settings.storage.url
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return Path(url[len("sqlite:///") :]).parent / KEY_FILE_NAME
    return Path("data") / KEY_FILE_NAME


def _parse_secret(text: str, where: str) -> bytes:
    text = text.strip().lower()
    if not is_hex64(text):
        raise ConfigError(f"{where}: the relay's secret key must be 64 hex characters")
    try:
        crypto.public_key(bytes.fromhex(text))
    except ValueError:
        raise ConfigError(f"{where}: not a valid secp256k1 secret key") from None
    return bytes.fromhex(text)


def load_identity(settings: Settings) -> RelayIdentity:
    """The configured key, else the key file's, else a new key saved to the key file.

    ``ConfigError`` (one line, no traceback) for a malformed key or an unusable file."""
    configured = settings.relay.secret_key
    if configured is not None and configured.get_secret_value():
        return RelayIdentity.from_secret(_parse_secret(configured.get_secret_value(), "relay.secret_key"))
    path = key_file_path(settings)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return _create(path)
    except OSError as exc:
        raise ConfigError(f"relay key file {path}: {exc.strerror or exc}") from None
    identity = RelayIdentity.from_secret(_parse_secret(text, f"relay key file {path}"))
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("relay key file %s is readable by others (mode %o); chmod 600 it", path, mode & 0o777)
    return identity


def _create(path: Path) -> RelayIdentity:
    """Write a new key to a private temporary file, then link it into place: a process
    starting at the same moment (``--workers``) either wins the link or reads the
    complete file the winner linked, never a half-written one."""
    secret = crypto.generate_secret()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with contextlib.closing(os.fdopen(fd, "w")) as out:
            out.write(secret.hex() + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return RelayIdentity.from_secret(_parse_secret(path.read_text(), f"relay key file {path}"))
    except OSError as exc:
        raise ConfigError(f"relay key file {path}: cannot create it ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    identity = RelayIdentity.from_secret(secret)
    log.info("generated the relay's key in %s (pubkey %s)", path, identity.pubkey)
    return identity


def profile_content(settings: Settings, lud16: str | None) -> str:
    """The relay's kind-0 metadata (NIP-01): name, about, picture, and the lightning
    address zaps reach (NIP-57) when payments are on."""
    info = settings.relay
    profile: dict[str, str] = {"name": info.name, "about": info.description}
    if info.icon:
        profile["picture"] = info.icon
    if lud16:
        profile["lud16"] = lud16
    return orjson.dumps(profile).decode()


def profile_event(identity: RelayIdentity, content: str, now: int) -> Event:
    return sign_event(identity.secret, 0, content, [], created_at=now)
