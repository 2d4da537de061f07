"""Tag lookups in PostgreSQL: a separate tags table vs a GIN index on ``text[]``.

Builds the two layouts side by side in scratch schemas (``bench_tags_table``,
``bench_tags_gin``) with the same synthetic events, then times the queries a relay
answers most for ``#p`` / ``#e`` filters: mentions (one popular or random pubkey),
reactions to a note (``#e`` + ``kinds:[7]``), a thread over many notes, several
pubkeys with ``since``, and a NIP-45 count. Also times bulk inserts into each layout
with its indexes in place, since the writer pays that on every batch.

Popularity follows a Zipf-like law, so a few pubkeys/notes are tagged tens of
thousands of times (the case where "fetch every match, sort, take 50" hurts) and
most are tagged a handful of times.

    python bench/pg_tags.py --dsn postgresql://postgres@127.0.0.1:5432/test --events 1000000

Prints one JSON object (figures in milliseconds, medians and p95 over ``--reps``).
Drops the scratch schemas at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

TABLE_SCHEMA = "bench_tags_table"
GIN_SCHEMA = "bench_tags_gin"
NOW = 1_700_000_000
SPAN = 365 * 86400


@dataclass(frozen=True, slots=True)
class FakeEvent:
    id: bytes
    pubkey: bytes
    created_at: int
    kind: int
    tags: tuple[tuple[str, str], ...]
    raw: bytes


def _zipf_weights(n: int, s: float = 1.1) -> list[float]:
    acc = 0.0
    out = []
    for rank in range(1, n + 1):
        acc += 1.0 / rank**s
        out.append(acc)
    return out


def generate(count: int, seed: int) -> tuple[list[FakeEvent], list[str], list[str]]:
    """Synthetic events: 20k authors, kinds 1/7/6/other, 0-3 ``p`` tags, ``e`` tags on
    replies and reactions pointing at a Zipf-popular pool of 50k notes."""
    rng = random.Random(seed)
    pubkeys = [rng.randbytes(32) for _ in range(20_000)]
    notes = [rng.randbytes(32) for _ in range(50_000)]
    pk_cum = _zipf_weights(len(pubkeys))
    note_cum = _zipf_weights(len(notes))
    events = []
    for _ in range(count):
        r = rng.random()
        kind = 1 if r < 0.6 else 7 if r < 0.85 else 6 if r < 0.9 else rng.choice((4, 9735, 1111, 30023))
        n_p = rng.choice((0, 1, 1, 1, 2, 3)) if kind != 7 else 1
        p_vals = rng.choices(pubkeys, cum_weights=pk_cum, k=n_p)
        tags: list[tuple[str, str]] = []
        if kind in (6, 7) or (kind == 1 and rng.random() < 0.4):
            tags.append(("e", rng.choices(notes, cum_weights=note_cum, k=1)[0].hex()))
        tags.extend(("p", p.hex()) for p in p_vals)
        if rng.random() < 0.1:
            tags.append(("t", rng.choice(("nostr", "bitcoin", "zap", "art", "music"))))
        tags = list(dict.fromkeys(tags))  # the store indexes each (name, value) once per event
        eid = rng.randbytes(32)
        author = rng.choices(pubkeys, cum_weights=pk_cum, k=1)[0]
        created_at = NOW - rng.randrange(SPAN)
        raw = orjson.dumps(
            {
                "id": eid.hex(),
                "pubkey": author.hex(),
                "created_at": created_at,
                "kind": kind,
                "tags": [list(t) for t in tags],
                "content": os.urandom(rng.randrange(20, 120)).hex(),
                "sig": rng.randbytes(64).hex(),
            }
        )
        events.append(FakeEvent(eid, author, created_at, kind, tuple(tags), raw))
    return events, [p.hex() for p in pubkeys], [n.hex() for n in notes]


EVENTS_DDL = """
CREATE TABLE events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id bytea NOT NULL UNIQUE,
    pubkey bytea NOT NULL,
    created_at bigint NOT NULL,
    kind integer NOT NULL,
    raw bytea NOT NULL{extra}
)"""
EVENTS_INDEXES = [
    "CREATE INDEX events_created ON events (created_at DESC, id)",
    "CREATE INDEX events_pubkey ON events (pubkey, created_at DESC)",
    "CREATE INDEX events_kind ON events (kind, created_at DESC)",
]


async def build(conn: asyncpg.Connection, schema: str, events: Sequence[FakeEvent], gin: bool) -> dict[str, float]:
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
    await conn.execute(f"SET search_path TO {schema}")
    await conn.execute(EVENTS_DDL.format(extra=",\n    tagvals text[] NOT NULL" if gin else ""))
    t0 = time.perf_counter()
    if gin:
        rows: list[tuple[Any, ...]] = [
            (e.id, e.pubkey, e.created_at, e.kind, e.raw, [f"{k}:{v}" for k, v in e.tags]) for e in events
        ]
        await conn.copy_records_to_table(
            "events", records=rows, columns=["id", "pubkey", "created_at", "kind", "raw", "tagvals"]
        )
    else:
        rows = [(e.id, e.pubkey, e.created_at, e.kind, e.raw) for e in events]
        await conn.copy_records_to_table("events", records=rows, columns=["id", "pubkey", "created_at", "kind", "raw"])
        await conn.execute(
            "CREATE TABLE tags (seq bigint NOT NULL, name text NOT NULL, value text NOT NULL,"
            " created_at bigint NOT NULL, kind integer NOT NULL)"
        )
        tag_rows = [
            (i + 1, k, v, e.created_at, e.kind) for i, e in enumerate(events) for k, v in e.tags
        ]  # seq is 1..n in COPY order
        await conn.copy_records_to_table(
            "tags", records=tag_rows, columns=["seq", "name", "value", "created_at", "kind"]
        )
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    for ddl in EVENTS_INDEXES:
        await conn.execute(ddl)
    if gin:
        await conn.execute("CREATE INDEX events_tagvals ON events USING gin (tagvals)")
    else:
        await conn.execute("CREATE INDEX tags_lookup ON tags (name, value, created_at DESC) INCLUDE (kind, seq)")
    index = time.perf_counter() - t0
    await conn.execute("VACUUM ANALYZE events")
    if not gin:
        await conn.execute("VACUUM ANALYZE tags")
    size = await conn.fetchval(
        "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind = 'r'",
        schema,
    )
    return {"load_s": round(load, 2), "index_s": round(index, 2), "total_mb": round(int(size) / 2**20, 1)}


# --- queries: (name, value pool, values per query, extra) ------------------------


def gin_sql(kinds: bool, since: bool, count: bool) -> str:
    where = "tagvals && $1::text[]"
    if kinds:
        where += " AND kind = ANY($3::int4[])"
    if since:
        where += f" AND created_at >= ${4 if kinds else 3}"
    if count:
        return f"SELECT count(*) FROM events WHERE {where.replace('$3', '$2').replace('$4', '$3')}"
    return f"SELECT raw FROM events WHERE {where} ORDER BY created_at DESC, id LIMIT $2"


def table_sql(kinds: bool, since: bool, count: bool) -> str:
    """Top-N per tag value through the (name, value, created_at) index, WITH TIES so an
    exact tie-break by id stays possible after the merge, then one probe per row."""
    cond = ""
    if kinds:
        cond += " AND t.kind = ANY($4::int4[])"
    if since:
        cond += f" AND t.created_at >= ${5 if kinds else 4}"
    if count:
        cond = cond.replace("$4", "$3").replace("$5", "$4")
        return "SELECT count(DISTINCT t.seq) FROM tags t WHERE t.name = $1 AND t.value = ANY($2::text[])" + cond
    return (
        "SELECT e.raw FROM events e JOIN ("
        " SELECT DISTINCT s.seq FROM unnest($2::text[]) v(value), LATERAL ("
        "  SELECT t.seq FROM tags t WHERE t.name = $1 AND t.value = v.value" + cond + ""
        "  ORDER BY t.created_at DESC FETCH FIRST $3 ROWS WITH TIES) s"
        ") m ON e.seq = m.seq ORDER BY e.created_at DESC, e.id LIMIT $3"
    )


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    tag: str
    popular: bool
    n_values: int
    limit: int
    kinds: tuple[int, ...] | None = None
    since_days: int | None = None
    count: bool = False


CASES = [
    Case("p_popular_limit50", "p", True, 1, 50),
    Case("p_random_limit50", "p", False, 1, 50),
    Case("p_popular_kinds_1_6_7_limit100", "p", True, 1, 100, kinds=(1, 6, 7)),
    Case("e_popular_kind7_limit500", "e", True, 1, 500, kinds=(7,)),
    Case("e_random_kind7_limit500", "e", False, 1, 500, kinds=(7,)),
    Case("e_20_random_notes_limit500", "e", False, 20, 500),
    Case("p_5_popular_since30d_limit100", "p", True, 5, 100, since_days=30),
    Case("count_e_popular", "e", True, 1, 0, count=True),
]


async def run_case(
    conn: asyncpg.Connection, gin: bool, case: Case, pool: list[str], reps: int, seed: int
) -> dict[str, float]:
    rng = random.Random(seed)
    top = pool[:20]
    sql = (gin_sql if gin else table_sql)(case.kinds is not None, case.since_days is not None, case.count)
    stmt = await conn.prepare(sql)
    times = []
    rows = 0
    for _ in range(reps):
        values = rng.sample(top if case.popular else pool, case.n_values)
        args: list[Any] = []
        if gin:
            args.append([f"{case.tag}:{v}" for v in values])
            if not case.count:
                args.append(case.limit)
        else:
            args += [case.tag, values]
            if not case.count:
                args.append(case.limit)
        if case.kinds is not None:
            args.append(list(case.kinds))
        if case.since_days is not None:
            args.append(NOW - case.since_days * 86400)
        t0 = time.perf_counter()
        result = await stmt.fetch(*args)
        times.append((time.perf_counter() - t0) * 1000)
        rows += len(result) if not case.count else int(result[0][0])
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 3),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 3),
        "avg_rows": round(rows / reps, 1),
    }


async def insert_rate(conn: asyncpg.Connection, gin: bool, events: Sequence[FakeEvent], batch: int) -> float:
    """Events/s for batched inserts (unnest arrays, one statement per batch) with every
    index in place, the way the store's writer inserts."""
    t0 = time.perf_counter()
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        cols = (
            [e.id for e in chunk],
            [e.pubkey for e in chunk],
            [e.created_at for e in chunk],
            [e.kind for e in chunk],
            [e.raw for e in chunk],
        )
        async with conn.transaction():
            if gin:
                idx = [i for i, e in enumerate(chunk) for _ in e.tags]
                vals = [f"{k}:{v}" for e in chunk for k, v in e.tags]
                await conn.execute(
                    "WITH tv AS (SELECT i, array_agg(v) AS vals FROM unnest($6::int4[], $7::text[]) u(i, v) GROUP BY i)"
                    " INSERT INTO events (id, pubkey, created_at, kind, raw, tagvals)"
                    " SELECT r.id, r.pubkey, r.created_at, r.kind, r.raw, coalesce(tv.vals, '{}')"
                    " FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::int4[], $5::bytea[])"
                    "  WITH ORDINALITY r(id, pubkey, created_at, kind, raw, i)"
                    " LEFT JOIN tv ON tv.i = r.i - 1 ON CONFLICT (id) DO NOTHING",
                    *cols,
                    idx,
                    vals,
                )
            else:
                await conn.execute(
                    "WITH ins AS (INSERT INTO events (id, pubkey, created_at, kind, raw)"
                    " SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::int4[], $5::bytea[])"
                    " ON CONFLICT (id) DO NOTHING RETURNING seq, id, created_at, kind)"
                    " INSERT INTO tags (seq, name, value, created_at, kind)"
                    " SELECT ins.seq, t.name, t.value, ins.created_at, ins.kind"
                    " FROM ins JOIN unnest($6::bytea[], $7::text[], $8::text[]) t(id, name, value) ON t.id = ins.id",
                    *cols,
                    [e.id for e in chunk for _ in e.tags],
                    [k for e in chunk for k, _ in e.tags],
                    [v for e in chunk for _, v in e.tags],
                )
    return round(len(events) / (time.perf_counter() - t0))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("SATSRELAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--insert-events", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the scratch schemas")
    args = parser.parse_args()

    t0 = time.perf_counter()
    events, pubkeys, notes = generate(args.events + args.insert_events, args.seed)
    base, extra = events[: args.events], events[args.events :]
    report: dict[str, Any] = {"events": args.events, "generate_s": round(time.perf_counter() - t0, 1)}
    conn = await asyncpg.connect(args.dsn)
    try:
        for label, schema, gin in (("tags_table", TABLE_SCHEMA, False), ("gin_text_array", GIN_SCHEMA, True)):
            section: dict[str, Any] = {"build": await build(conn, schema, base, gin)}
            for case in CASES:
                pool = pubkeys if case.tag == "p" else notes
                section[case.name] = await run_case(conn, gin, case, pool, args.reps, args.seed)
            section["insert_events_per_s_batch1000"] = await insert_rate(conn, gin, extra, 1000)
            report[label] = section
            print(json.dumps({label: section}), flush=True)
    finally:
        if not args.keep:
            for schema in (TABLE_SCHEMA, GIN_SCHEMA):
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
