"""What NIP-86 bans cost a REQ's and a COUNT's stored query (issue 11):
``python -m bench.ban_scope DB [--store-url postgresql://...] [--formulations]``.

A store of 100k events (50k older notes and reactions by 500 authors, then a flooder's
50k newest notes; every note tagged ``#t nostr``) answers ``{"kinds":[1],"limit":500}``
and ``{"#t":["nostr"],"limit":500}`` as a REQ asks them (``Store.query_pages`` with the
connection's ``ReadScope``) and COUNTs ``{"kinds":[1]}``, with no bans, with 1,000 banned
pubkeys none of which wrote anything, and with the flooder banned. Median of ``--runs``.
``DB`` is a SQLite file, built when missing (about a minute of signing); with
``--store-url`` the same events are copied into a PostgreSQL schema (``--schema``) and
measured there, as imported (no statistics: this server runs with ``autovacuum = off``)
or, with ``--analyze``, after ``VACUUM ANALYZE`` of the events and tags.

Run it once per code version (``PYTHONPATH`` naming the tree). The code before bans went
into the store's SQL dropped banned rows after the query (emulated here with its raw-JSON
test) and COUNT subtracted a second count (``ManagementView.hidden_part``, called when
present). With ``--formulations`` (SQLite) it also times three SQL forms of the ban test
on the kinds query, the flooder and 1,000 others banned: NOT EXISTS probes of the
``management`` table (the relay's), ``NOT IN`` over a subquery of it, and ``NOT IN`` over
one parameter per banned pubkey.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from relay.nostr.event import parse_event, sign_event
from relay.nostr.filters import Filter
from relay.nostr.policy import ReadScope, read_scope
from relay.ops.management_view import ManagementView
from relay.store.base import Store, WriteRequest
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SqliteStore

OLDER = 50_000
FLOOD = 50_000
AUTHORS = 500
NONE_MATCHING = 1_000
FLOODER = (7777).to_bytes(32, "big")
BASE = 1_700_000_000
NOW = BASE + OLDER + FLOOD
SHAPES = {
    "kinds1_limit500": Filter(kinds=frozenset({1}), limit=500),
    "tag_t_limit500": Filter(tags=(("t", frozenset({"nostr"})),), limit=500),
}
COUNTED = Filter(kinds=frozenset({1}))


async def build(path: Path) -> None:
    """Signed events written in batches of 1,000."""
    store = SqliteStore(path)
    await store.open()
    try:
        secrets = [(i + 1).to_bytes(32, "big") for i in range(AUTHORS)]
        tag = [["t", "nostr"]]
        batch: list[WriteRequest] = []
        for i in range(OLDER + FLOOD):
            if i < OLDER:
                kind = 7 if i % 5 == 4 else 1
                ev = sign_event(secrets[i % AUTHORS], kind, f"note {i}", tag if kind == 1 else [], BASE + i)
            else:
                ev = sign_event(FLOODER, 1, f"buy now {i}", tag, BASE + i)
            batch.append(WriteRequest(ev))
            if len(batch) == 1000:
                await store.write_batch(batch, NOW)
                batch = []
                print(f"\r{i + 1} events", end="", file=sys.stderr)
        print(file=sys.stderr)
    finally:
        await store.close()


async def copy_to(store: Store, path: Path) -> None:
    """The SQLite file's events into an empty store (the same rows, the same order)."""
    if await store.count([Filter()], NOW):
        return
    conn = sqlite3.connect(path)
    batch: list[WriteRequest] = []
    for (raw,) in conn.execute("SELECT raw FROM events ORDER BY rid"):
        batch.append(WriteRequest(parse_event(orjson.loads(raw))))
        if len(batch) == 1000:
            await store.write_batch(batch, NOW)
            batch = []
    await store.write_batch(batch, NOW)
    conn.close()


def scopes_with_bans() -> bool:
    """Whether this code version's ReadScope carries bans (else: the old post-query drop)."""
    return "banned_pubkeys" in {f.name for f in dataclasses.fields(ReadScope)}


def median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 2)


async def timed_req(store: Store, f: Filter, bans: frozenset[str], runs: int) -> dict[str, Any]:
    """Median time of one REQ's stored answer, and how many events it sends."""
    new = scopes_with_bans()
    scope = read_scope(frozenset(), bans) if new else read_scope(frozenset())
    hidden = {b.encode() for b in bans}
    times: list[float] = []
    sent = 0
    for i in range(runs + 3):  # 3 to warm the caches
        start = time.perf_counter()
        sent = 0
        async for page in store.query_pages([f], NOW, scope):
            for raw in page:
                if not new and raw[83:147] in hidden:  # the old REQ loop's ManagementView.hides
                    continue
                sent += 1
        if i >= 3:
            times.append(time.perf_counter() - start)
    return {"median_ms": median_ms(times), "events_sent": sent}


async def timed_count(store: Store, view: ManagementView, bans: frozenset[str], runs: int) -> dict[str, Any]:
    new = scopes_with_bans()
    scope = read_scope(frozenset(), bans) if new else read_scope(frozenset())
    times: list[float] = []
    n = 0
    for i in range(runs + 3):
        start = time.perf_counter()
        n = await store.count([COUNTED], NOW, scope)
        hidden = () if new else getattr(view, "hidden_part")((COUNTED,))  # noqa: B009 (gone from new code)
        if hidden:
            n -= await store.count(hidden, NOW, scope)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return {"median_ms": median_ms(times), "count": n}


async def run(store: Store, runs: int) -> dict[str, dict[str, Any]]:
    flooder = sign_event(FLOODER, 1).pubkey
    strangers = frozenset(os.urandom(32).hex() for _ in range(NONE_MATCHING))
    view = ManagementView(store)
    out: dict[str, dict[str, Any]] = {}
    for name, bans in (
        ("no_bans", frozenset[str]()),
        ("1000_bans_none_matching", strangers),
        ("flooder_banned", frozenset({flooder})),
    ):
        rows = await store.list_management()
        await store.apply_management([(t, k, None) for t, k, _ in rows])
        await store.apply_management([("ban_pubkey", b, "") for b in sorted(bans)])
        await view.load()
        out[name] = {shape: await timed_req(store, f, bans, runs) for shape, f in SHAPES.items()}
        out[name]["count_kinds1"] = await timed_count(store, view, bans, runs)
    rows = await store.list_management()
    await store.apply_management([(t, k, None) for t, k, _ in rows])
    return out


def formulations(path: Path, runs: int) -> dict[str, dict[str, Any]]:
    """The ban test as three SQL forms on the kinds query (SQLite)."""
    flooder = sign_event(FLOODER, 1).pubkey
    bans = sorted({flooder, *(os.urandom(32).hex() for _ in range(NONE_MATCHING))})
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM management")
    conn.executemany("INSERT INTO management (topic, key, value) VALUES ('ban_pubkey', ?, '')", [(b,) for b in bans])
    conn.commit()
    head = (
        "SELECT e.raw FROM events e INDEXED BY events_kind"
        " WHERE e.kind IN (1) AND (e.expiration IS NULL OR e.expiration > ?) AND "
    )
    tail = " ORDER BY e.created_at DESC, e.id LIMIT 500"
    forms: dict[str, tuple[str, list[object]]] = {
        "not_exists_probe": (
            "NOT EXISTS (SELECT 1 FROM management m WHERE m.topic = 'ban_pubkey' AND m.key = lower(hex(e.pubkey)))",
            [NOW],
        ),
        "not_in_subquery": (
            "hex(e.pubkey) NOT IN (SELECT upper(key) FROM management WHERE topic = 'ban_pubkey')",
            [NOW],
        ),
        "not_in_parameters": (f"e.pubkey NOT IN ({','.join('?' * len(bans))})", [NOW, *map(bytes.fromhex, bans)]),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, (condition, params) in forms.items():
        sql = head + condition + tail
        times = []
        rows: list[Any] = []
        for i in range(runs + 3):
            start = time.perf_counter()
            rows = conn.execute(sql, params).fetchall()
            if i >= 3:
                times.append(time.perf_counter() - start)
        out[name] = {"median_ms": median_ms(times), "events_sent": len(rows)}
    conn.execute("DELETE FROM management")
    conn.commit()
    conn.close()
    return out


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    if not args.db.exists():
        await build(args.db)
    store: Store
    if args.store_url:
        store = PostgresStore(args.store_url, schema=args.schema)
        await store.open()
        await copy_to(store, args.db)
        if args.analyze:
            import asyncpg

            conn = await asyncpg.connect(args.store_url, server_settings={"search_path": args.schema})
            await conn.execute("VACUUM ANALYZE events")
            await conn.execute("VACUUM ANALYZE tags")
            await conn.close()
    else:
        store = SqliteStore(args.db)
        await store.open()
    try:
        store_name = "sqlite" if not args.store_url else "postgres, analyzed" if args.analyze else "postgres"
        return {"store": store_name, "bans_in_sql": scopes_with_bans(),
                "req_and_count": await run(store, args.runs)}
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="What NIP-86 bans cost a REQ's stored query")
    parser.add_argument("db", type=Path, help="SQLite file; built (about a minute) when missing")
    parser.add_argument("--store-url", help="measure PostgreSQL instead (the events copied from DB)")
    parser.add_argument("--schema", default="ban_scope_bench")
    parser.add_argument("--analyze", action="store_true", help="PostgreSQL: VACUUM ANALYZE events and tags first")
    parser.add_argument("--runs", type=int, default=31)
    parser.add_argument("--formulations", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(measure(args))
    if args.formulations:
        report["formulations_sqlite"] = formulations(args.db, args.runs)
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
