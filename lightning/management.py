"""The payments plug-in's NIP-86 methods (issue 11 item 1), answered by the relay behind
its NIP-98 admin check (relay/ops/management_view.py):

- ``payments.grant``    ``[pubkey, {"days", "forever", "credit_sats", "allow"}]`` -> the account
- ``payments.revoke``   ``[pubkey]`` or ``[pubkey, {"credit": true}]`` -> the account, and a
  ``summary`` of what is left (whether the key can still write: kept credit still pays)
- ``payments.account``  ``[pubkey]`` -> the account and its invoices, newest first
- ``payments.invoices`` ``[]`` or ``[{"pubkey", "pending", "limit"}]`` -> invoices, newest first
- ``payments.roles``    ``[]`` -> every role: the config's tiers and those made here
- ``payments.unlinkkey`` ``[pubkey]`` -> ends the key's link to the plan it is linked to:
  ``{"pubkey", "unlinked_from", "linked_keys"}`` (the plan's keys still linked) and a
  ``summary``; the key writes under its own account again

and NIP-86's own role methods (NIP-43 roles, kind 33534), under their NIP names:
``createrole`` / ``editrole`` ``[id, label, description, color, order]``, ``deleterole``
``[id]``, ``assignrole`` / ``unassignrole`` ``[pubkey, role-id]``. A tier of the config file
is a role too; it is changed in the config, not here. ``assignrole`` gives the role without
payment (a comped member: writes as a member under that role's limits until
``unassignrole``); a member who pays for a tier gets its role by the payment.

The rules are lightning/accounts.py's, shared with the CLI; this module only reads the
params, strictly (JSON gives ``true`` where a number belongs, floats past int64, unknown
keys from a typo: each is a ``ValueError`` the admin reads, never a traceback).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from lightning import accounts
from lightning.plans import Tier
from lightning.pubkeys import parse_pubkey
from lightning.store.base import LedgerStore, RoleDefinition
from lightning.web import account_json
from relay.plugins.hooks import Changed, ManagementMethod

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
GRANT_OPTIONS = ("days", "forever", "credit_sats", "allow")
ROLE_SHAPE = "[id, label, description, color, order]"
MAX_ROLE_ID = 64
MAX_ROLE_TEXT = 500


def _role_id(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ROLE_ID or not value.isprintable():
        raise ValueError(f"a role id must be a string of 1-{MAX_ROLE_ID} printable characters")
    return value


def _role_definition(params: list[Any]) -> RoleDefinition:
    """``[id, label, description, color, order]`` (NIP-86); color and order may be null."""
    if not 1 <= len(params) <= 5:
        raise ValueError(f"params must be {ROLE_SHAPE}")
    padded = [*params, *([None] * (5 - len(params)))]
    role_id, label, description, color, order = padded
    for name, text in (("label", label), ("description", description)):
        if text is not None and (not isinstance(text, str) or len(text) > MAX_ROLE_TEXT):
            raise ValueError(f"{name} must be a string of at most {MAX_ROLE_TEXT} characters")
    if isinstance(color, str) and color.isdigit():
        color = int(color)  # NIP-43 carries it as a string tag; accept either
    if color is not None and (type(color) is not int or not 0 <= color <= 360):
        raise ValueError("color must be a hue, a whole number 0-360")
    if isinstance(order, str) and order.lstrip("-").isdigit():
        order = int(order)
    if order is not None and (type(order) is not int or abs(order) > 2**31):
        raise ValueError("order must be a whole number")
    return RoleDefinition(_role_id(role_id), label or "", description or "", color, order)


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
        tiers: tuple[Tier, ...] = (),
        on_roles_change: Callable[[], None] = lambda: None,
    ) -> None:
        """``credit_pays``: the credit plan is on (kept credit still pays for events).
        ``tiers``: the config's tiers (roles NIP-86 may assign but not change);
        ``on_roles_change``: a role was made, changed or deleted (republish kind 33534)."""
        self._store = store
        self._on_change = on_change
        self._clock = clock
        self._credit_pays = credit_pays
        self._tiers = {tier.name: tier for tier in tiers}
        self._on_roles_change = on_roles_change

    def methods(self) -> Mapping[str, ManagementMethod]:
        return {
            "payments.grant": self.grant,
            "payments.revoke": self.revoke,
            "payments.account": self.account,
            "payments.invoices": self.invoices,
            "payments.roles": self.roles,
            "payments.unlinkkey": self.unlink_key,
            "createrole": self.create_role,
            "editrole": self.edit_role,
            "deleterole": self.delete_role,
            "assignrole": self.assign_role,
            "unassignrole": self.unassign_role,
        }

    def _not_a_tier(self, role_id: str) -> None:
        if role_id in self._tiers:
            raise ValueError(f"{role_id!r} is a tier of the config file ([payments.tiers.{role_id}]); change it there")

    async def roles(self, params: list[Any]) -> list[dict[str, Any]]:
        if params:
            raise ValueError("params must be []")
        out = [
            {
                "id": t.name,
                "label": t.label,
                "description": t.description,
                "color": t.color,
                "order": t.order,
                "tier": True,
                "amount_msat": t.amount_msat,
                "period_seconds": t.period_seconds,
            }
            for t in self._tiers.values()
        ]
        for r in await self._store.list_roles():
            out.append(
                {
                    "id": r.id,
                    "label": r.label,
                    "description": r.description,
                    "color": r.color,
                    "order": r.order,
                    "tier": False,
                }
            )
        return out

    async def create_role(self, params: list[Any]) -> Changed:
        role = _role_definition(params)
        self._not_a_tier(role.id)
        if not await self._store.save_role(role, create=True, now=int(self._clock())):
            raise ValueError(f"a role {role.id!r} exists already (editrole changes it)")
        self._on_roles_change()
        return Changed(True)

    async def edit_role(self, params: list[Any]) -> Changed:
        role = _role_definition(params)
        self._not_a_tier(role.id)
        if not await self._store.save_role(role, create=False, now=int(self._clock())):
            raise ValueError(f"no role {role.id!r} (createrole makes one)")
        self._on_roles_change()
        return Changed(True)

    async def delete_role(self, params: list[Any]) -> Changed:
        if len(params) != 1:
            raise ValueError("params must be [id]")
        role_id = _role_id(params[0])
        self._not_a_tier(role_id)
        if not await self._store.delete_role(role_id, int(self._clock())):
            raise ValueError(f"no role {role_id!r}")
        self._on_roles_change()
        return Changed(True)

    async def _role_params(self, params: list[Any]) -> tuple[str, str]:
        if len(params) != 2:
            raise ValueError("params must be [pubkey, role-id]")
        pubkey, role_id = _first_pubkey(params), _role_id(params[1])
        if role_id not in self._tiers and role_id not in {r.id for r in await self._store.list_roles()}:
            raise ValueError(f"no role {role_id!r} (createrole makes one)")
        return pubkey, role_id

    async def assign_role(self, params: list[Any]) -> Changed:
        """The role without payment: a comped member (one role per account: it replaces
        the role held before)."""
        pubkey, role_id = await self._role_params(params)
        await self._store.update_account(pubkey, int(self._clock()), role=role_id, comped=True)
        self._on_change(pubkey)
        return Changed(True)

    async def unassign_role(self, params: list[Any]) -> Changed:
        pubkey, role_id = await self._role_params(params)
        account = await self._store.get_account(pubkey)
        if account is None or account.role != role_id:
            raise ValueError(f"{pubkey} does not hold the role {role_id!r}")
        await self._store.update_account(pubkey, int(self._clock()), role="", comped=False)
        self._on_change(pubkey)
        return Changed(True)

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

    async def unlink_key(self, params: list[Any]) -> Changed:
        if len(params) != 1:
            raise ValueError("params must be [pubkey]")
        key = _first_pubkey(params)
        doc = await accounts.unlink(self._store, key, int(self._clock()))
        self._on_change(key)  # the key's cached plan here, and its owner's key list
        self._on_change(doc["unlinked_from"])
        return Changed({**doc, "summary": accounts.unlink_summary(doc)})

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
