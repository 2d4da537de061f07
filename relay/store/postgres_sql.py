"""The SQL the PostgreSQL store reads events with: one filter (and a read scope) in, one
SELECT or COUNT with numbered parameters out. Pure: it builds text, it runs nothing.

Shaped so the planner has one sensible choice (docs/postgres-store.md, "Query plans"):
per-author and per-kind index probes unioned when they are few, a tag filter as a
subquery on the tag table, NIP-50 ranking over at most ``RANK_CANDIDATES`` matches, and the
read scope (NIP-42 private kinds, NIP-86 bans) in the WHERE so it applies before each
filter's ``limit``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relay.nostr.event import is_hex64
from relay.nostr.filters import Filter
from relay.nostr.search import RANK_CANDIDATES

if TYPE_CHECKING:
    from relay.nostr.policy import ReadScope

# Most rows a filter's per-author/per-kind index probes may read (probes x limit), beyond
# which the plain WHERE is left to the planner; a single probe is always taken (see
# "Query plans" in docs/postgres-store.md).
PROBE_ROWS_MAX = 2500


class Params:
    """Numbered asyncpg placeholders for a statement assembled from parts."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"


def _event_conditions(f: Filter, now: int, p: Params) -> list[str]:
    """Conditions on ``events e`` for a filter's non-tag fields, NIP-40 and NIP-50."""
    where: list[str] = []
    # With a search, kinds are tested as "kind + 0": the planner, lacking statistics
    # (autovacuum off, or a fresh import), would otherwise AND a bitmap of the whole kind
    # index with the GIN matches (measured: 1M events, a word in 100 events, 161 ms, all
    # of it reading kind = 1 entries); the GIN matches are few enough to test kinds on.
    kind = "e.kind" if f.search is None else "(e.kind + 0)"
    if f.search is not None:
        # Only the indexed kinds can match (the filter was parsed with the relay's kinds).
        where.append(f"e.search @@ {p.add(f.search.tsquery_literal(), '::tsquery')}")
        where.append(f"{kind} = ANY({p.add(sorted(f.search.kinds), '::int4[]')})")
    if f.ids is not None:
        where.append(f"e.id = ANY({p.add(sorted(bytes.fromhex(i) for i in f.ids), '::bytea[]')})")
    if f.authors is not None:
        where.append(f"e.pubkey = ANY({p.add(sorted(bytes.fromhex(a) for a in f.authors), '::bytea[]')})")
    if f.kinds is not None:
        where.append(f"{kind} = ANY({p.add(sorted(f.kinds), '::int4[]')})")
    if f.since is not None:
        where.append(f"e.created_at >= {p.add(f.since, '::int8')}")
    if f.until is not None:
        where.append(f"e.created_at <= {p.add(f.until, '::int8')}")
    # NIP-40: an expired event is never sent, purged yet or not.
    where.append(f"(e.expiration IS NULL OR e.expiration > {p.add(now, '::int8')})")
    return where


def _tag_subquery(name: str, values: frozenset[str], f: Filter, p: Params) -> str:
    values_param = p.add(sorted(values), "::text[]")
    sub = f"SELECT t.seq FROM tags t WHERE t.name = {p.add(name)} AND t.value = ANY({values_param})"
    if f.since is not None:
        sub += f" AND t.created_at >= {p.add(f.since, '::int8')}"
    if f.until is not None:
        sub += f" AND t.created_at <= {p.add(f.until, '::int8')}"
    return sub


def _probe_select(f: Filter, now: int, p: Params, columns: str, scope: ReadScope | None = None) -> str | None:
    """A limited filter on authors and/or kinds (no ids, no tags) as one ordered index
    probe per author, per kind or per (author, kind) pair, or None when it has none of
    them or too many values (docs/postgres-store.md, "Query plans").

    Each probe reads the newest ``limit`` rows of one key from an index whose order is
    ``created_at DESC`` (ties kept whole, so the outer lowest-id cut is exact) and stops;
    the outer sort sees at most ``limit`` x probes rows. An event has one pubkey and one
    kind, so probes never return the same row twice. The lateral is aliased ``e`` so
    ``columns`` reads the same as in a plain ``events e`` select.
    """
    if f.limit is None or f.ids is not None or f.tags or f.search is not None:
        return None

    wanted = f.limit

    def affordable(probes: int) -> bool:
        return probes == 1 or probes * wanted <= PROBE_ROWS_MAX

    keys: list[str] = []
    if f.authors is not None and f.kinds is not None and affordable(len(f.authors) * len(f.kinds)):
        pairs = sorted((bytes.fromhex(a), k) for a in f.authors for k in f.kinds)
        source = (
            f"unnest({p.add([a for a, _ in pairs], '::bytea[]')}, {p.add([k for _, k in pairs], '::int4[]')})"
            " v(pubkey, kind)"
        )
        keys += ["e.pubkey = v.pubkey", "e.kind = v.kind"]
    elif f.authors is not None and affordable(len(f.authors)):
        source = f"unnest({p.add(sorted(bytes.fromhex(a) for a in f.authors), '::bytea[]')}) v(pubkey)"
        keys.append("e.pubkey = v.pubkey")
        if f.kinds is not None:
            keys.append(f"e.kind = ANY({p.add(sorted(f.kinds), '::int4[]')})")
    elif f.authors is None and f.kinds is not None and affordable(len(f.kinds)):
        source = f"unnest({p.add(sorted(f.kinds), '::int4[]')}) v(kind)"
        keys.append("e.kind = v.kind")
    else:
        return None
    if f.since is not None:
        keys.append(f"e.created_at >= {p.add(f.since, '::int8')}")
    if f.until is not None:
        keys.append(f"e.created_at <= {p.add(f.until, '::int8')}")
    keys.append(f"(e.expiration IS NULL OR e.expiration > {p.add(now, '::int8')})")
    keys.extend(_scope_conditions(scope, f, p))  # inside the probe: before its limit
    limit = p.add(f.limit, "::int8")
    return (
        f"SELECT {columns} FROM {source}, LATERAL ("
        f"SELECT e.seq, e.created_at, e.id, e.raw FROM events e WHERE {' AND '.join(keys)}"
        f" ORDER BY e.created_at DESC FETCH FIRST ({limit}) ROWS WITH TIES) e"
        f" ORDER BY e.created_at DESC, e.id LIMIT {limit}"
    )


def _search_select(f: Filter, now: int, p: Params, columns: str, scope: ReadScope | None) -> str:
    """NIP-50: a ``search`` filter, best match first (``ts_rank``: grows with how often
    the words occur), then newest, then lowest id; LIMIT after ranking. The partial GIN
    index ``events_search`` finds the candidates, the other conditions are checked on
    them, and only the ``RANK_CANDIDATES`` most recently stored are ranked
    (``relay.nostr.search``): ``ts_rank`` reads each candidate's vector."""
    assert f.search is not None
    where = _event_conditions(f, now, p)
    where.extend(f"e.seq IN ({_tag_subquery(name, values, f, p)})" for name, values in f.tags)
    where.extend(_scope_conditions(scope, f, p))
    query = p.add(f.search.tsquery_literal(), "::tsquery")
    candidates = (
        f"SELECT e.seq FROM events e WHERE {' AND '.join(where)}"
        # "+ 0": no index yields this order, so the planner cannot walk the primary key
        # backwards testing @@ on every row (a full scan for a rare word); it takes the GIN
        # index's matches and keeps the newest in a top-N sort.
        f" ORDER BY e.seq + 0 DESC LIMIT {p.add(RANK_CANDIDATES, '::int8')}"
    )
    best = (
        f"SELECT c.seq, ts_rank(c.search, {query}) AS r, c.created_at, c.id FROM events c"
        f" WHERE c.seq IN ({candidates}) ORDER BY r DESC, c.created_at DESC, c.id"
    )
    if f.limit is not None:
        best += f" LIMIT {p.add(f.limit, '::int8')}"
    return (
        f"SELECT {columns} FROM ({best}) s JOIN events e ON e.seq = s.seq"
        " ORDER BY s.r DESC, s.created_at DESC, s.id"
    )


def filter_select(f: Filter, now: int, p: Params, columns: str, scope: ReadScope | None = None) -> str:
    """One filter as a SELECT of ``columns`` over ``events e``, newest first, limited.

    A filter whose only event-level conditions are one tag, kinds, since/until (the
    common ``#p``/``#e`` shapes) takes the top-N path: for each tag value, the newest
    ``limit`` rows of ``tags_lookup`` (ties kept whole, so the final lowest-id cut is
    exact), then one events probe per candidate. Authors/kinds filters take the same
    shape over the events indexes (``_probe_select``). Everything else is one WHERE that
    the planner drives from the most selective index; tag conditions are ``seq IN
    (...)`` so an event matching two values of one tag counts once. ``scope``'s rules
    (``_scope_conditions``) go wherever the rows are cut to ``limit``, inside each probe.
    """
    if f.search is not None:
        return _search_select(f, now, p, columns, scope)
    probe = _probe_select(f, now, p, columns, scope)
    if probe is not None:
        return probe
    if f.limit is not None and len(f.tags) == 1 and f.ids is None and f.authors is None:
        name, values = f.tags[0]
        inner = [f"t.name = {p.add(name)}", "t.value = v.value"]
        if f.kinds is not None:
            inner.append(f"t.kind = ANY({p.add(sorted(f.kinds), '::int4[]')})")
        if f.since is not None:
            inner.append(f"t.created_at >= {p.add(f.since, '::int8')}")
        if f.until is not None:
            inner.append(f"t.created_at <= {p.add(f.until, '::int8')}")
        inner.append(f"(t.expiration IS NULL OR t.expiration > {p.add(now, '::int8')})")
        inner.extend(_scope_conditions(scope, f, p, "t"))
        limit = p.add(f.limit, "::int8")
        return (
            f"SELECT {columns} FROM events e WHERE e.seq IN ("
            f"SELECT s.seq FROM unnest({p.add(sorted(values), '::text[]')}) v(value), LATERAL ("
            f"SELECT t.seq FROM tags t WHERE {' AND '.join(inner)}"
            f" ORDER BY t.created_at DESC FETCH FIRST ({limit}) ROWS WITH TIES) s)"
            f" ORDER BY e.created_at DESC, e.id LIMIT {limit}"
        )
    where = _event_conditions(f, now, p)
    where.extend(f"e.seq IN ({_tag_subquery(name, values, f, p)})" for name, values in f.tags)
    where.extend(_scope_conditions(scope, f, p))
    sql = f"SELECT {columns} FROM events e WHERE {' AND '.join(where)} ORDER BY e.created_at DESC, e.id"
    if f.limit is not None:
        sql += f" LIMIT {p.add(f.limit, '::int8')}"
    return sql


# NIP-86 bans (``ReadScope.banned``) in SQL: a probe of the ``management`` table's primary
# key (topic, key = lowercase hex) per candidate row, so the statement has no parameter per
# ban; the node's copy of the bans only decides whether a filter needs the probe
# (``ReadScope.hides_banned_authors``). Written ``(EXISTS ...) IS FALSE``, not ``NOT
# EXISTS``: PostgreSQL turns a bare NOT EXISTS into an anti-join whose plan rests on
# statistics, and without them (``autovacuum = off`` here; bans added since the last
# ANALYZE) it took the bans for a handful and compared every row with each of them (100k
# events, 1,000 bans matching nothing: ``{"kinds":[1],"limit":500}`` and a COUNT of 90k
# rows each over 3 s). Kept a subplan, the probe is a per-row index lookup, or the bans
# hashed once when many rows are tested; see docs/postgres-store.md for the figures.
_BANNED_AUTHOR = "EXISTS (SELECT 1 FROM management m WHERE m.topic = 'ban_pubkey' AND m.key = encode({}.pubkey, 'hex'))"
_BANNED_EVENT = "EXISTS (SELECT 1 FROM management m WHERE m.topic = 'ban_event' AND m.key = encode({}.id, 'hex'))"


def _scope_conditions(scope: ReadScope | None, f: Filter, p: Params, alias: str = "e") -> list[str]:
    """The conditions of the rules of ``scope`` that can hide an event ``f`` matches
    (none when no rule can: the filter runs as it stands), testing ``alias``: ``e``
    (events) or ``t`` (a tags row, which carries its event's kind and seq but not its
    pubkey or id; the tag top-N path cuts to ``limit`` there, so the ban probes go
    through the event row, by ``seq``, as the private rule's author test does; ``OFFSET
    0`` keeps that a per-row lookup by primary key, never a join over every event)."""
    if scope is None:
        return []
    out: list[str] = []
    if scope.hides_private(f):
        out.append(_private_condition(scope, p, alias))
    row = alias if alias == "e" else "x"
    banned: list[str] = []
    if scope.hides_banned_authors(f):
        banned.append(_BANNED_AUTHOR.format(row))
    if scope.hides_banned_ids(f):
        banned.append(_BANNED_EVENT.format(row))
    if alias == "e":
        out.extend(f"({probe}) IS FALSE" for probe in banned)
    elif banned:
        either = " OR ".join(f"({probe}) IS TRUE" for probe in banned)
        out.append(f"NOT EXISTS (SELECT 1 FROM events x WHERE x.seq = {alias}.seq AND ({either}) OFFSET 0)")
    return out


def _private_condition(scope: ReadScope, p: Params, alias: str = "e") -> str:
    """``ReadScope.allows`` in SQL: a private kind only when authored by or ``p``-tagging
    one of the connection's authenticated pubkeys (every ``p`` tag is in ``tags``).
    ``alias`` is the row it tests: ``e`` (events) or ``t`` (a tags row, which carries its
    event's kind and seq but not its pubkey; the tag top-N path cuts to ``limit`` there)."""
    sql = f"{alias}.kind <> ALL({p.add(sorted(scope.private_kinds), '::int4[]')})"
    if scope.readers:
        readers = sorted(scope.readers)
        keys = p.add([bytes.fromhex(r) for r in readers if is_hex64(r)], "::bytea[]")
        values = p.add(readers, "::text[]")
        if alias == "e":
            sql += f" OR e.pubkey = ANY({keys})"
        else:
            sql += f" OR EXISTS (SELECT 1 FROM events x WHERE x.seq = {alias}.seq AND x.pubkey = ANY({keys}))"
        sql += f" OR {alias}.seq IN (SELECT r.seq FROM tags r WHERE r.name = 'p' AND r.value = ANY({values}))"
    return f"({sql})"


def filter_count(f: Filter, now: int, p: Params, scope: ReadScope | None = None, columns: str = "e.seq") -> str:
    where = _event_conditions(f, now, p)
    where.extend(f"e.seq IN ({_tag_subquery(name, values, f, p)})" for name, values in f.tags)
    where.extend(_scope_conditions(scope, f, p))
    return f"SELECT {columns} FROM events e WHERE {' AND '.join(where)}"
