"""A real payments stack without the server: SqliteStore file + fake wallet + extension.

Used by the unit-level payment tests (gate, ledger, watcher); end-to-end tests use the
relay fixtures in ``tests/conftest.py`` instead.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from lightning.backends.fake import FakeBackend
from lightning.extension import PaymentsExtension, build_backend
from lightning.store.base import LedgerStore
from relay.config import Settings, load_settings
from relay.nostr import crypto
from relay.nostr.event import Event, sign_event
from relay.nostr.policy import WriteContext
from relay.session.server import Relay
from relay.store.sqlite import SqliteStore
from tests.conftest import _merge

DEFAULT_PAYMENTS: dict[str, Any] = {
    "enabled": True,
    "backend": "fake",
    "poll_interval_seconds": 0.2,
    "account_cache_seconds": 60,
}


def payment_settings(tmp_path: Path, **payments: Any) -> Settings:
    return load_settings(
        None,
        relay={"public_url": "wss://relay.example.com"},
        storage={"url": f"sqlite:///{tmp_path}/relay.db"},
        payments=_merge(DEFAULT_PAYMENTS, payments),
    )


@dataclass
class Stack:
    settings: Settings
    store: SqliteStore
    wallet: FakeBackend
    ext: PaymentsExtension

    @property
    def ledger(self) -> LedgerStore:
        """The payments tables (``lightning.store``) in the store's database."""
        return self.ext.store

    def ctx(self, now: int | None = None) -> WriteContext:
        return WriteContext(now=int(time.time()) if now is None else now, authed=frozenset(), ip="127.0.0.1")


@contextlib.asynccontextmanager
async def payment_stack(tmp_path: Path, *, start: bool = False, **payments: Any) -> AsyncIterator[Stack]:
    settings = payment_settings(tmp_path, **payments)
    store = SqliteStore(tmp_path / "relay.db")
    await store.open()
    wallet = build_backend(settings, None)  # type: ignore[arg-type]  # the fake wallet needs no HTTP
    assert isinstance(wallet, FakeBackend)
    ext = PaymentsExtension(settings, store, wallet)
    try:
        if start:
            await ext.start()
        else:
            await ext.store.open()  # the ledger's tables, as start() would make them
        yield Stack(settings, store, wallet, ext)
    finally:
        if start:
            await ext.stop()
        else:
            await wallet.close()
        await store.close()


def ledger_of(relay: Relay) -> LedgerStore:
    """The payments tables of a running relay with payments enabled (its extension's)."""
    assert isinstance(relay.hooks.owner("payments"), PaymentsExtension)
    return relay.hooks.owner("payments").store


def note(secret: bytes, kind: int = 1, tags: list[list[str]] | None = None) -> Event:
    """A fresh event (distinct id every call)."""
    return sign_event(secret, kind, f"hello {time.monotonic_ns()}", tags or [], created_at=int(time.time()))


def nip98_header(
    secret: bytes, url: str, method: str = "GET", created_at: int | None = None, body: bytes | None = None
) -> str:
    """``Authorization`` value signing ``method url`` as NIP-98 does (kind 27235, base64);
    with ``body``, its SHA-256 as the ``payload`` tag. A random ``nonce`` tag, as the
    console adds: the relay honours each header once, and two signings of one request in
    one second would otherwise be the same event."""
    when = int(time.time()) if created_at is None else created_at
    tags = [["u", url], ["method", method]]
    if body is not None:
        tags.append(["payload", hashlib.sha256(body).hexdigest()])
    tags.append(["nonce", os.urandom(8).hex()])
    event = sign_event(secret, 27235, "", tags, created_at=when)
    return "Nostr " + base64.b64encode(orjson.dumps(event.to_dict())).decode()


def pubkey_of(secret: bytes) -> str:
    return crypto.public_key(secret).hex()
