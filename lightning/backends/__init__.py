"""One wallet per module (lnbits, lnd, cln, phoenixd, nwc, fake), each implementing
``lightning.backend.WalletBackend`` and nothing else.

What the HTTP backends share lives here, small on purpose: one request function that turns
every transport fault, bad status and unparsable body into ``BackendError`` with the
credentials scrubbed out, because an exception's text ends up in logs and on status pages.
Exceptions are raised ``from None`` so a traceback never prints the httpx error (whose text
can carry a URL, and LNbits puts its invoice key in a websocket URL).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from lightning.backend import BackendError

_SNIPPET = 200  # characters of an error body worth showing an operator


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty secret replaced, cut to a readable length."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:_SNIPPET]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any  # parsed JSON; None when empty; the raw text for an allowed status with a non-JSON body


async def request_json(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    label: str,
    secrets: Iterable[str],
    allow: frozenset[int] = frozenset(),
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    data: Mapping[str, str] | None = None,
    auth: httpx.BasicAuth | None = None,
    timeout: httpx.Timeout | None = None,
) -> Reply:
    """Send one request; a 2xx (or a status in ``allow``, e.g. 404 for "unknown") comes back
    parsed, anything else raises ``BackendError("<label>: ...")`` without secrets."""
    secrets = tuple(secrets)
    extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    try:
        response = await client.request(method, url, headers=headers, json=json, data=data, auth=auth, **extra)
    except httpx.HTTPError as exc:
        raise BackendError(f"{label}: {type(exc).__name__}: {scrub(str(exc), secrets)}") from None
    text = response.text
    if not (200 <= response.status_code < 300 or response.status_code in allow):
        raise BackendError(f"{label}: HTTP {response.status_code}: {scrub(text, secrets)}")
    if not text.strip():
        return Reply(response.status_code, None)
    try:
        return Reply(response.status_code, orjson.loads(text))
    except orjson.JSONDecodeError:
        if response.status_code in allow:  # e.g. a plain-text 404: the status is the answer
            return Reply(response.status_code, text)
        raise BackendError(f"{label}: HTTP {response.status_code}: body is not JSON: {scrub(text, secrets)}") from None


def long_poll_timeout(client: httpx.AsyncClient) -> httpx.Timeout:
    """The client's own timeouts, but no read limit: for a request that waits for a payment."""
    base = client.timeout
    return httpx.Timeout(connect=base.connect, read=None, write=base.write, pool=base.pool)


def as_msat(value: object) -> int:
    """An amount in msat from an int, a numeric string (LND's int64s) or ``"1000msat"``
    (older Core Lightning); ``BackendError`` for anything else."""
    if isinstance(value, bool):
        raise BackendError(f"not an amount: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        digits = value.removesuffix("msat")
        if digits.isascii() and digits.isdigit():  # isdigit() alone takes "²", which int() refuses
            return int(digits)
    raise BackendError(f"not an amount: {str(value)[:40]!r}")


def as_unix_time(value: object, *, millis: bool = False) -> int | None:
    """A wallet's payment time as unix seconds: an int or numeric string (seconds, or
    milliseconds with ``millis``) or an ISO 8601 text (UTC when it names no zone); None
    when absent or unreadable: the time only dates a receipt, it never decides a credit."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int):
        seconds = value // 1000 if millis else value
        return seconds if seconds > 0 else None
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return int(moment.timestamp())
    return None


def require(body: Any, key: str, label: str) -> Any:
    """``body[key]`` or a ``BackendError`` naming what the wallet left out."""
    if not isinstance(body, dict) or key not in body:
        raise BackendError(f"{label}: reply has no {key!r}")
    return body[key]
