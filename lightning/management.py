"""The payments plug-in's NIP-86 methods (issue 11 item 1), answered by the relay behind
its NIP-98 admin check (relay/management_view.py):

- ``payments.grant``    ``[pubkey, {"days", "forever", "credit_sats", "allow"}]`` -> the account
- ``payments.revoke``   ``[pubkey]`` or ``[pubkey, {"credit": true}]`` -> the account, and a
  ``summary`` of what is left (whether the key can still write: kept credit still pays)
- ``payments.account``  ``[pubkey]`` -> the account and its invoices, newest first
- ``payments.invoices`` ``[]`` or ``[{"pubkey", "pending", "limit"}]`` -> invoices, newest first

The rules are lightning/accounts.py's, shared with the CLI; this module only reads the
params, strictly (JSON gives ``true`` where a number belongs, floats past int64, unknown
keys from a typo: each is a ``ValueError`` the admin reads, never a traceback).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from lightning import accounts
from lightning.pubkeys import parse_pubkey
from lightning.store.base import LedgerStore
from lightning.web import account_json
from relay.hooks import Changed, ManagementMethod

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
GRANT_OPTIONS = ("days", "forever", "credit_sats", "allow")


def _pubkey(value: Any, what: str = "first param") -> str:
    pubkey = parse_pubkey(value) if isinstance(value, str) else None
    if pubkey is None:
        raise ValueError(f"{what} must be a pubkey (64 hex characters or npub)")
    return pubkey


def _first_pubkey(params: list[Any]) -> str:
    return _pubkey(params[0] if params else None)


def _options(params: list[Any], index: int, allowed: tuple[str, ...], shape: str) -> dict[str, Any]:
    """The options object at ``params[index]`` (``{}`` when absent); nothing may follow it."""
    if len(params) > index + 1:
        raise ValueError(f"params must be {shape}")
    if len(params) <= index:
        return {}
    options = params[index]
    if not isinstance(options, dict):
        raise ValueError(f"params must be {shape}")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option {unknown[0][:40]!r} (expected {', '.join(allowed)})")
    return options


def _bool(options: dict[str, Any], key: str) -> bool:
    value = options.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


def _whole(options: dict[str, Any], key: str, default: int) -> int:
    """A JSON integer; ``true`` and floats (orjson reads integers past 2**64 as floats) refused."""
    value = options.get(key, default)
    if type(value) is not int:
        raise ValueError(f"{key} must be a whole number")
    return value


def _days(options: dict[str, Any]) -> float | None:
    value = options.get("days")
    if value is None:
        return None
    if type(value) not in (int, float):
        raise ValueError("days must be a number")
    return float(value)


class PaymentMethods:
    """``on_change(pubkey)``: called after a grant or revoke so this node applies it at
    once (the account cache entry dropped, the NIP-43 member list refreshed); other nodes
    learn of it through the store's account change counter, as they do of the CLI's."""

    def __init__(
        self,
        store: LedgerStore,
        on_change: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        *,
        credit_pays: bool = False,
    ) -> None:
        """``credit_pays``: the credit plan is on (kept credit still pays for events)."""
        self._store = store
        self._on_change = on_change
        self._clock = clock
        self._credit_pays = credit_pays

    def methods(self) -> Mapping[str, ManagementMethod]:
        return {
            "payments.grant": self.grant,
            "payments.revoke": self.revoke,
            "payments.account": self.account,
            "payments.invoices": self.invoices,
        }

    async def grant(self, params: list[Any]) -> Changed:
        pubkey = _first_pubkey(params)
        options = _options(params, 1, GRANT_OPTIONS, '[pubkey, {"days", "forever", "credit_sats", "allow"}]')
        what = accounts.Grant(
            days=_days(options),
            forever=_bool(options, "forever"),
            credit_sats=_whole(options, "credit_sats", 0),
            allow=_bool(options, "allow"),
        )
        now = int(self._clock())
        account = await accounts.grant(self._store, pubkey, what, now)
        self._on_change(pubkey)
        return Changed(account_json(pubkey, account, now))

    async def revoke(self, params: list[Any]) -> Changed:
        pubkey = _first_pubkey(params)
        options = _options(params, 1, ("credit",), '[pubkey] or [pubkey, {"credit": true}]')
        now = int(self._clock())
        account = await accounts.revoke(self._store, pubkey, now, credit=_bool(options, "credit"))
        self._on_change(pubkey)
        summary = accounts.revoke_summary(account, credit_pays=self._credit_pays)
        return Changed({**account_json(pubkey, account, now), "summary": summary})

    async def account(self, params: list[Any]) -> dict[str, Any]:
        pubkey = _first_pubkey(params)
        if len(params) > 1:
            raise ValueError("params must be [pubkey]")
        return await accounts.account_view(self._store, pubkey, int(self._clock()))

    async def invoices(self, params: list[Any]) -> list[dict[str, Any]]:
        options = _options(params, 0, ("pubkey", "pending", "limit"), '[] or [{"pubkey", "pending", "limit"}]')
        pubkey = _pubkey(options["pubkey"], "pubkey") if "pubkey" in options else None
        limit = _whole(options, "limit", DEFAULT_LIMIT)
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}")
        found = await accounts.invoices(
            self._store, int(self._clock()), pubkey=pubkey, pending=_bool(options, "pending"), limit=limit
        )
        return [accounts.invoice_view(i) for i in found]
