"""NIP-86 management: the pure method dispatch (relay/management.py) and its state in both
stores, surviving a restart and seen by a second node through the change counter."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.management import ManagementState, Outcome, dispatch, supported_methods
from relay.store.base import Store
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SqliteStore
from tests.test_nodes import _drop_schema, pg_dsn  # noqa: F401  (fixture)

A = "a" * 64
B = "b" * 64
EV = "e" * 64


def call(state: ManagementState, method: str, *params: Any) -> Outcome:
    return dispatch(state, orjson.dumps({"method": method, "params": list(params)}))


def run(state: ManagementState, method: str, *params: Any) -> ManagementState:
    outcome = call(state, method, *params)
    assert outcome.response == {"result": True}, outcome.response
    return state.apply(outcome.changes)


def test_supportedmethods_lists_every_method_nip86_names_here() -> None:
    methods = call(ManagementState(), "supportedmethods").response["result"]
    assert methods == supported_methods()
    for name in ("banpubkey", "unbanpubkey", "listbannedpubkeys", "allowpubkey", "unallowpubkey",
                 "listallowedpubkeys", "banevent", "allowevent", "listbannedevents", "changerelayname",
                 "changerelaydescription", "changerelayicon", "allowkind", "disallowkind", "listallowedkinds",
                 "blockip", "unblockip", "listblockedips"):
        assert name in methods


def test_ban_removes_from_allow_list_and_allow_removes_from_ban_list() -> None:
    state = run(ManagementState(), "allowpubkey", A, "friend")
    assert call(state, "listallowedpubkeys").response == {"result": [{"pubkey": A, "reason": "friend"}]}
    state = run(state, "banpubkey", A.upper(), "spam")
    assert call(state, "listbannedpubkeys").response == {"result": [{"pubkey": A, "reason": "spam"}]}
    assert call(state, "listallowedpubkeys").response == {"result": []}
    state = run(state, "unbanpubkey", A)
    assert call(state, "listbannedpubkeys").response == {"result": []}
    assert call(state, "listallowedpubkeys").response == {"result": []}  # NIP-86: not re-allowed


def test_events_kinds_ips_and_relay_info() -> None:
    state = run(ManagementState(), "banevent", EV, "illegal")
    assert call(state, "listbannedevents").response == {"result": [{"id": EV, "reason": "illegal"}]}
    state = run(state, "allowevent", EV)
    assert call(state, "listbannedevents").response == {"result": []}
    state = run(run(state, "allowkind", 1), "allowkind", 7)
    assert call(state, "listallowedkinds").response == {"result": [1, 7]}
    assert state.kind_allowed(1) and not state.kind_allowed(4)
    state = run(state, "disallowkind", 7)
    assert call(state, "listallowedkinds").response == {"result": [1]} and not state.kind_allowed(7)
    state = run(state, "blockip", " 2001:db8::0001 ", "abuse")
    assert call(state, "listblockedips").response == {"result": [{"ip": "2001:db8::1", "reason": "abuse"}]}
    state = run(state, "unblockip", "2001:db8::1")
    assert call(state, "listblockedips").response == {"result": []}
    state = run(run(state, "changerelayname", "Sats"), "changerelayicon", "https://x.example/i.png")
    assert dict(state.relay) == {"name": "Sats", "icon": "https://x.example/i.png"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "the body is not JSON"),
        (b'{"params": []}', "must be"),
        (b'{"method": "banpubkey", "params": {}}', "params must be an array"),
        (b'{"method": "banpubkey", "params": ["xyz"]}', "banpubkey: first param must be a 32-byte hex pubkey"),
        (b'{"method": "allowkind", "params": ["1"]}', "allowkind: first param must be a kind number"),
        (b'{"method": "allowkind", "params": [true]}', "allowkind: first param must be a kind number"),
        (b'{"method": "blockip", "params": ["example.com"]}', "is not an IP address"),
        (b'{"method": "dropdatabase", "params": []}', "unsupported method 'dropdatabase'"),
    ],
)
def test_bad_requests_are_answered_with_an_error_not_an_exception(body: bytes, error: str) -> None:
    outcome = dispatch(ManagementState(), body)
    assert outcome.changes == []
    assert outcome.response["result"] is None and error in outcome.response["error"]


@pytest.fixture(params=["sqlite", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Two stores on the same database (two nodes), opened; closed and dropped afterwards."""
    if request.param == "sqlite":
        made: list[Store] = [SqliteStore(tmp_path / "m.db"), SqliteStore(tmp_path / "m.db")]
        schema = None
    else:
        dsn = request.getfixturevalue("pg_dsn")
        schema = f"mgmt_{uuid.uuid4().hex[:12]}"
        made = [PostgresStore(dsn, schema=schema), PostgresStore(dsn, schema=schema)]
    for store in made:
        await store.open()
    yield made
    for store in made:
        await store.close()
    if schema is not None:
        await _drop_schema(request.getfixturevalue("pg_dsn"), schema)


async def test_state_is_stored_shared_between_nodes_and_survives_reopening(stores: list[Store], tmp_path: Path) -> None:
    node_a, node_b = stores
    before = await node_b.management_changes()
    state = ManagementState.from_rows(await node_a.list_management())
    for method, params in (("banpubkey", [A, "spam"]), ("allowpubkey", [B]), ("allowkind", [1]),
                           ("changerelayname", ["Renamed"]), ("banevent", [EV])):
        outcome = call(state, method, *params)
        await node_a.apply_management([(c.topic, c.key, c.value) for c in outcome.changes])
        state = state.apply(outcome.changes)
    assert await node_b.management_changes() > before  # node B knows to reload
    seen = ManagementState.from_rows(await node_b.list_management())
    assert seen == state
    assert dict(seen.banned_pubkeys) == {A: "spam"} and dict(seen.relay) == {"name": "Renamed"}
    outcome = call(seen, "unbanpubkey", A)
    await node_b.apply_management([(c.topic, c.key, c.value) for c in outcome.changes])
    await node_a.close()
    await node_a.open()  # a restart
    assert dict(ManagementState.from_rows(await node_a.list_management()).banned_pubkeys) == {}
