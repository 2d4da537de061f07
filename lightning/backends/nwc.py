"""Nostr Wallet Connect (NIP-47): the wallet is reached through a Nostr relay.

The connection URI ``nostr+walletconnect://<wallet pubkey>?relay=...&secret=...`` names
the wallet service, its relay(s) and our client secret. One websocket to the first relay
that answers carries everything: at connect we read the wallet's info event (kind 13194)
to pick the encryption (NIP-44 v2 when its ``encryption`` tag offers ``nip44_v2``;
NIP-04 when the tag is absent, as NIP-47 requires), subscribe to responses (23195) and
``payment_received`` notifications (23197 for NIP-44, 23196 for NIP-04) addressed to us,
and wait for EOSE so no response can arrive before the subscription exists.

Requests (23194) are matched to responses by the response's ``e`` tag. Every event from
the relay is signature-checked and must come from the wallet's key before it is decrypted
(NIP-44: validate the outer signature first). When the socket drops, pending requests and
``settlements`` iterators fail with ``BackendError`` and the next call reconnects.

Notifications instead of polling (issue 20 item 6): a wallet whose info event lists
``payment_received`` in its ``notifications`` tag promises one notification per payment
received, so while ``settlements`` is read on a live connection ``notifications_live`` is
true and the watcher stops polling young invoices (each poll is a request and a response
through the wallet's relay); when the connection drops, or the wallet makes no such
promise, the watcher polls as before. A notification is as authenticated as a response
(signed by the wallet's key, encrypted to ours), and one whose preimage hashes to its
payment hash proves the payment: it answers the watcher's confirming ``lookup_invoice``
for that hash, so a payment costs no request at all. Any other notification is a hint,
confirmed by asking the wallet.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from lightning import nip04, nip44
from lightning.backend import (
    PROBE_PAYMENT_HASH,
    BackendError,
    CreatedInvoice,
    InvoiceStatus,
    PaymentState,
    check_description_hash,
    description_hash,
    fit_memo,
)
from lightning.backends import as_unix_time
from relay.nostr import crypto
from relay.nostr.errors import Invalid
from relay.nostr.event import is_hex64, parse_event, sign_event, verify_signature

log = logging.getLogger(__name__)

INFO_KIND, REQUEST_KIND, RESPONSE_KIND = 13194, 23194, 23195
NOTIFY_NIP04_KIND, NOTIFY_NIP44_KIND = 23196, 23197
_SUB = "nwc"
MAX_MEMO = 639  # BOLT11's cap on a ``d`` tag
MAX_NOTIFIED = 1000  # proven payments kept until the watcher's lookup takes them
_STATES = {
    "settled": PaymentState.PAID,
    "pending": PaymentState.PENDING,
    "accepted": PaymentState.PENDING,  # hold invoice locked in, not settled
    "expired": PaymentState.FAILED,
    "failed": PaymentState.FAILED,
}


@dataclass(frozen=True, slots=True)
class NwcConnection:
    """A parsed ``nostr+walletconnect://`` URI."""

    wallet_pubkey: str
    relays: tuple[str, ...]
    secret: bytes
    lud16: str | None = None

    def __repr__(self) -> str:
        return f"NwcConnection(wallet_pubkey={self.wallet_pubkey!r}, relays={self.relays!r}, secret='***')"

    @classmethod
    def parse(cls, uri: str) -> NwcConnection:
        """Refuse a malformed URI with a reason that never quotes the secret."""
        parts = urlsplit(uri.strip())
        if parts.scheme != "nostr+walletconnect":
            raise BackendError("nwc: the URI must start with nostr+walletconnect://")
        wallet = (parts.netloc or parts.path.lstrip("/")).lower()
        if not is_hex64(wallet):
            raise BackendError("nwc: the wallet public key must be 64 hex characters")
        query = parse_qs(parts.query)
        relays = tuple(r for r in query.get("relay", []) if r.startswith(("ws://", "wss://")))
        if not relays:
            raise BackendError("nwc: the URI names no ws:// or wss:// relay")
        secrets = query.get("secret", [])
        secret = secrets[0].lower() if len(secrets) == 1 else ""
        if not is_hex64(secret):
            raise BackendError("nwc: the secret must be 64 hex characters")
        try:
            crypto.public_key(bytes.fromhex(secret))
        except ValueError:
            raise BackendError("nwc: the secret is not a valid key") from None
        lud16 = query.get("lud16", [None])[0]
        return cls(wallet, relays, bytes.fromhex(secret), lud16)


@dataclass(frozen=True, slots=True)
class NwcConfig:
    uri: str
    request_timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 10.0
    # A URI someone else handed us (a member's, for renewals) names the relay we dial: then
    # only public addresses, and the checked address itself is dialled (no DNS rebinding).
    public_only: bool = False

    def __repr__(self) -> str:
        return f"NwcConfig(uri='***', request_timeout_seconds={self.request_timeout_seconds})"


@dataclass(slots=True)
class _Session:
    """One live relay connection and what waits on it (mutable, owned by the backend)."""

    ws: ClientConnection
    nip44_key: bytes | None  # None: the wallet speaks NIP-04 only
    relay_url: str
    notifies: bool = False  # the info event promises ``payment_received`` notifications
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    listeners: set[asyncio.Queue[str | BackendError]] = field(default_factory=set)
    reader: asyncio.Task[None] | None = None
    dead: bool = False

    def fail(self, error: BackendError) -> None:
        self.dead = True
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()
        for queue in self.listeners:
            queue.put_nowait(error)


class NwcBackend:
    name = "nwc"

    def __init__(self, config: NwcConfig, client: httpx.AsyncClient | None = None) -> None:
        """``client`` is accepted for the common constructor shape; NWC needs no HTTP."""
        self._config = config
        self._conn = NwcConnection.parse(config.uri)
        self._me = crypto.public_key(self._conn.secret).hex()
        self._wallet_x = bytes.fromhex(self._conn.wallet_pubkey)
        self._session: _Session | None = None
        self._lock = asyncio.Lock()
        # payment hash -> the status a notification proved (its preimage hashes to it)
        self._notified: OrderedDict[str, InvoiceStatus] = OrderedDict()

    # -- the WalletBackend seam -------------------------------------------------------

    async def create_invoice(
        self, amount_msat: int, memo: str, expiry_seconds: int, *, hashed_description: str | None = None
    ) -> CreatedInvoice:
        requested_at = int(time.time())
        params: dict[str, Any] = {"amount": amount_msat, "expiry": expiry_seconds}
        if hashed_description is None:
            params["description"] = fit_memo(memo, MAX_MEMO)
        else:
            # NIP-47 leaves honouring it to the wallet: the returned invoice is checked.
            params["description_hash"] = description_hash(hashed_description).hex()
        result = _result(await self._request("make_invoice", params), "make_invoice")
        payment_hash, bolt11 = result.get("payment_hash"), result.get("invoice")
        if not isinstance(payment_hash, str) or not isinstance(bolt11, str):
            raise BackendError("nwc make_invoice: the wallet returned no invoice or payment_hash")
        if hashed_description is not None:
            check_description_hash(bolt11, hashed_description, "nwc make_invoice")
        amount = result.get("amount")
        expires_at = result.get("expires_at")
        return CreatedInvoice(
            payment_hash=payment_hash,
            bolt11=bolt11,
            amount_msat=amount if isinstance(amount, int) and amount > 0 else amount_msat,
            expires_at=expires_at if isinstance(expires_at, int) else requested_at + expiry_seconds,
        )

    async def lookup_invoice(self, payment_hash: str) -> InvoiceStatus:
        proven = self._notified.pop(payment_hash, None)
        if proven is not None:
            return proven  # a notification with the preimage already answered it
        reply = await self._request("lookup_invoice", {"payment_hash": payment_hash})
        error = reply.get("error")
        if isinstance(error, dict) and error.get("code") == "NOT_FOUND":
            return InvoiceStatus(payment_hash, PaymentState.UNKNOWN)
        result = _result(reply, "lookup_invoice")
        if result.get("payment_hash", payment_hash) != payment_hash:
            raise BackendError("nwc lookup_invoice: the wallet answered about another payment")
        state_name = result.get("state")
        if isinstance(state_name, str) and state_name in _STATES:
            state = _STATES[state_name]
        else:  # wallets predating the state field: settled_at/preimage mark a paid invoice
            state = PaymentState.PAID if result.get("settled_at") else PaymentState.PENDING
        amount = result.get("amount")
        received = amount if state is PaymentState.PAID and isinstance(amount, int) else None
        preimage = result.get("preimage") if state is PaymentState.PAID else None
        if not (isinstance(preimage, str) and len(preimage) == 64):
            preimage = None
        paid_at = as_unix_time(result.get("settled_at")) if state is PaymentState.PAID else None
        return InvoiceStatus(payment_hash, state, received, preimage=preimage, paid_at=paid_at)

    async def check(self) -> None:
        """An unknown hash is answered "unknown" only past the credential check."""
        await self.lookup_invoice(PROBE_PAYMENT_HASH)

    def notifications_live(self) -> bool:
        session = self._session
        return session is not None and not session.dead and session.notifies and bool(session.listeners)

    async def settlements(self) -> AsyncIterator[str]:
        session = await self._live_session()
        queue: asyncio.Queue[str | BackendError] = asyncio.Queue()
        session.listeners.add(queue)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BackendError):
                    raise item
                yield item
        finally:
            session.listeners.discard(queue)

    async def pay_invoice(self, bolt11: str) -> str:
        """Pay ``bolt11`` from the wallet (NIP-47 ``pay_invoice``); its preimage, or
        ``BackendError`` (refused, timed out, connection lost). Used to pay the relay's own
        renewal invoices from a member's wallet (``lightning.renewal``)."""
        result = _result(await self._request("pay_invoice", {"invoice": bolt11}), "pay_invoice")
        preimage = result.get("preimage")
        if not isinstance(preimage, str):
            raise BackendError("nwc pay_invoice: the wallet returned no preimage")
        return preimage

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.fail(BackendError("nwc: backend closed"))
            if session.reader is not None:
                session.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await session.reader
            await session.ws.close()

    # -- requests -----------------------------------------------------------------------

    async def _request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        session = await self._live_session()
        plaintext = orjson.dumps({"method": method, "params": params}).decode()
        now = int(time.time())
        timeout = self._config.request_timeout_seconds
        tags = [["p", self._conn.wallet_pubkey], ["expiration", str(now + int(timeout) + 1)]]
        if session.nip44_key is not None:
            content = nip44.encrypt(plaintext, session.nip44_key)
            tags.append(["encryption", "nip44_v2"])
        else:
            content = nip04.encrypt(plaintext, self._conn.secret, self._wallet_x)
        event = sign_event(self._conn.secret, REQUEST_KIND, content, tags, created_at=now)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        session.pending[event.id] = future
        try:
            await session.ws.send(orjson.dumps(["EVENT", event.to_dict()]).decode())
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BackendError(f"nwc {method}: no answer from the wallet within {timeout:g} s") from None
        except (OSError, WebSocketException) as exc:
            session.fail(BackendError(f"nwc: relay connection lost ({type(exc).__name__})"))
            raise BackendError(f"nwc {method}: relay connection lost ({type(exc).__name__})") from None
        finally:
            session.pending.pop(event.id, None)

    # -- the relay connection -----------------------------------------------------------

    async def _live_session(self) -> _Session:
        async with self._lock:
            if self._session is None or self._session.dead:
                self._session = await self._open()
            return self._session

    async def _open(self) -> _Session:
        reasons = []
        for relay_url in self._conn.relays:
            try:
                return await asyncio.wait_for(self._open_one(relay_url), self._config.connect_timeout_seconds)
            except (OSError, TimeoutError, WebSocketException) as exc:
                reasons.append(f"{relay_url}: {type(exc).__name__}")
            except BackendError as exc:
                reasons.append(f"{relay_url}: {exc}")
        raise BackendError("nwc: no relay usable (" + "; ".join(reasons) + ")")

    async def _open_one(self, relay_url: str) -> _Session:
        pinned: dict[str, Any] = {}
        if self._config.public_only:
            from lightning.zap import public_address

            address = await asyncio.to_thread(public_address, relay_url)
            if address is None:
                raise BackendError("not a public address")
            pinned = {"host": address, "proxy": None}  # TLS still checks the host name
        ws = await connect(relay_url, open_timeout=self._config.connect_timeout_seconds, **pinned)
        try:
            info = await self._fetch_info(ws, relay_url)
            offered = " ".join(t[1] for t in info.tags if len(t) > 1 and t[0] == "encryption") if info else ""
            use_nip44 = "nip44_v2" in offered.split()
            notifications = " ".join(t[1] for t in info.tags if len(t) > 1 and t[0] == "notifications") if info else ""
            notifies = "payment_received" in notifications.split()
            key = nip44.conversation_key(self._conn.secret, self._wallet_x) if use_nip44 else None
            notify_kind = NOTIFY_NIP44_KIND if use_nip44 else NOTIFY_NIP04_KIND
            since = int(time.time()) - 60
            base = {"authors": [self._conn.wallet_pubkey], "#p": [self._me], "since": since}
            filters = [{**base, "kinds": [RESPONSE_KIND]}, {**base, "kinds": [notify_kind]}]
            await ws.send(orjson.dumps(["REQ", _SUB, *filters]).decode())
            await self._until_eose(ws, _SUB, relay_url)
        except BaseException:
            await ws.close()
            raise
        session = _Session(ws, key, relay_url, notifies)
        session.reader = asyncio.create_task(self._read(session), name="nwc-reader")
        log.info(
            "nwc: connected to %s (%s, %s)",
            relay_url,
            "nip44_v2" if use_nip44 else "nip04",
            "payment notifications" if notifies else "no payment notifications: polling",
        )
        return session

    async def _fetch_info(self, ws: ClientConnection, relay_url: str) -> Any:
        """The wallet's newest info event, or None when it published none (then NIP-04)."""
        await ws.send(
            orjson.dumps(
                ["REQ", "info", {"kinds": [INFO_KIND], "authors": [self._conn.wallet_pubkey], "limit": 1}]
            ).decode()
        )
        newest = None
        for message in await self._until_eose(ws, "info", relay_url):
            event = self._verified(message)
            if event is None or event.kind != INFO_KIND:
                continue
            if newest is None or event.created_at > newest.created_at:
                newest = event
        await ws.send(orjson.dumps(["CLOSE", "info"]).decode())
        return newest

    async def _until_eose(self, ws: ClientConnection, sub_id: str, relay_url: str) -> list[list[Any]]:
        """Messages for ``sub_id`` up to its EOSE; a CLOSED for it is an error. AUTH
        challenges met on the way are answered."""
        collected: list[list[Any]] = []
        async for raw in ws:
            try:
                message = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(message, list) or len(message) < 2:
                continue
            if message[0] == "AUTH":
                await self._authenticate(ws, message, relay_url)
            elif message[1] != sub_id:
                continue
            elif message[0] == "EOSE":
                return collected
            elif message[0] == "CLOSED":
                raise BackendError(f"relay closed the {sub_id} subscription: {str(message[2:])[:200]}")
            else:
                collected.append(message)
        raise BackendError("relay closed the connection during set-up")

    async def _authenticate(self, ws: ClientConnection, message: list[Any], relay_url: str) -> None:
        """NIP-42 with the connection's own client key: a relay that keeps NWC traffic to
        authenticated parties (as NIP-47 suggests for dedicated relays) then lets us in.
        The key is per-connection, so authenticating reveals nothing else about us."""
        if len(message) < 2 or not isinstance(message[1], str):
            return
        tags = [["relay", relay_url], ["challenge", message[1]]]
        event = sign_event(self._conn.secret, 22242, "", tags, created_at=int(time.time()))
        await ws.send(orjson.dumps(["AUTH", event.to_dict()]).decode())

    def _verified(self, message: list[Any]) -> Any:
        """The event of an EVENT message when it is well-formed, signed, and by the wallet."""
        if len(message) < 3 or message[0] != "EVENT":
            return None
        try:
            event = parse_event(message[2])
        except Invalid:
            return None
        if event.pubkey != self._conn.wallet_pubkey or not verify_signature(event):
            return None
        return event

    async def _read(self, session: _Session) -> None:
        """The session's only reader: dispatch responses and notifications until the socket ends."""
        reason = "closed by the relay"
        try:
            async for raw in session.ws:
                try:
                    message = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(message, list) and message:
                    await self._dispatch(session, message)
        except (OSError, WebSocketException) as exc:
            reason = f"lost ({type(exc).__name__})"
        except Exception:  # a bug here must not leave requests hanging: log it, fail them
            log.exception("nwc: reader crashed")
            reason = "reader crashed"
        finally:
            session.fail(BackendError(f"nwc: relay connection {reason}"))

    async def _dispatch(self, session: _Session, message: list[Any]) -> None:
        if message[0] == "AUTH":
            await self._authenticate(session.ws, message, session.relay_url)
            return
        if message[0] == "OK" and len(message) >= 4 and message[2] is False:
            future = session.pending.get(str(message[1]))
            if future is not None and not future.done():
                future.set_exception(BackendError(f"nwc: the relay refused the request: {str(message[3])[:200]}"))
            return
        if message[0] == "CLOSED" and len(message) >= 2 and message[1] == _SUB:
            raise WebSocketException(f"subscription closed by the relay: {str(message[2:])[:200]}")
        if message[0] != "EVENT" or len(message) < 3 or message[1] != _SUB:
            return
        event = self._verified(message)
        if event is None or self._me not in event.tag_values("p"):
            return
        payload = self._decrypt(session, event.content)
        if payload is None:
            return
        if event.kind == RESPONSE_KIND:
            for request_id in event.tag_values("e"):
                future = session.pending.get(request_id)
                if future is not None and not future.done():
                    future.set_result(payload)
        elif event.kind in (NOTIFY_NIP04_KIND, NOTIFY_NIP44_KIND):
            notification = payload.get("notification")
            if payload.get("notification_type") == "payment_received" and isinstance(notification, dict):
                payment_hash = notification.get("payment_hash")
                if isinstance(payment_hash, str):
                    self._remember_proof(payment_hash, notification)
                    for queue in session.listeners:
                        queue.put_nowait(payment_hash)

    def _remember_proof(self, payment_hash: str, notification: dict[str, Any]) -> None:
        """Keep a ``payment_received`` whose preimage proves the payment (SHA-256 of the
        preimage is the payment hash) as that invoice's status, for the watcher's
        confirming lookup; the amount and date are the wallet's, as a lookup's would be."""
        preimage, amount = notification.get("preimage"), notification.get("amount")
        if notification.get("state", "settled") != "settled" or not isinstance(amount, int):
            return
        if not (isinstance(preimage, str) and is_hex64(preimage)):
            return
        if hashlib.sha256(bytes.fromhex(preimage)).hexdigest() != payment_hash.lower():
            return
        paid_at = as_unix_time(notification.get("settled_at"))
        self._notified[payment_hash] = InvoiceStatus(
            payment_hash, PaymentState.PAID, amount, preimage=preimage.lower(), paid_at=paid_at
        )
        self._notified.move_to_end(payment_hash)
        while len(self._notified) > MAX_NOTIFIED:
            self._notified.popitem(last=False)

    def _decrypt(self, session: _Session, content: str) -> dict[str, Any] | None:
        """NIP-04 payloads carry ``?iv=``; NIP-44 ones are plain base64 (NIP-47 allows either
        in a reply, since the wallet answers in the scheme the request used)."""
        try:
            if "?iv=" in content:
                text = nip04.decrypt(content, self._conn.secret, self._wallet_x)
            else:
                key = session.nip44_key or nip44.conversation_key(self._conn.secret, self._wallet_x)
                text = nip44.decrypt(content, key)
            payload = orjson.loads(text)
        except (nip04.Nip04Error, nip44.Nip44Error, orjson.JSONDecodeError):
            log.warning("nwc: dropped a wallet message that did not decrypt")
            return None
        return payload if isinstance(payload, dict) else None


def _result(reply: dict[str, Any], method: str) -> dict[str, Any]:
    error = reply.get("error")
    if isinstance(error, dict):
        code, message = str(error.get("code", "OTHER")), str(error.get("message", ""))[:200]
        raise BackendError(f"nwc {method}: {code}: {message}")
    result = reply.get("result")
    if not isinstance(result, dict):
        raise BackendError(f"nwc {method}: the wallet's reply has no result")
    return result
