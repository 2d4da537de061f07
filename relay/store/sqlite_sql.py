"""SQL for reading the SQLite event store: one filter as a WHERE clause and a SELECT (the
index SQLite should drive with, time bounds, the read scope of bans and private kinds applied
inside the query before the filter's limit). Pure string building, unit-testable without a file;
``relay.store.postgres_sql`` is its PostgreSQL twin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relay.nostr.event import KindClass, is_hex64, kind_class
from relay.nostr.filters import Filter
from relay.nostr.search import RANK_CANDIDATES

if TYPE_CHECKING:
    from relay.nostr.policy import ReadScope


MAX_PARAMS = 32766


def placeholders(n: int) -> str:
    return ",".join("?" * n)


def filter_where(
    f: Filter,
    now: int,
    *,
    skip_tag: str | None = None,
    scope: ReadScope | None = None,
    search_joined: bool = False,
) -> tuple[str, list[Any]]:
    """WHERE clause (over ``events e``) of one filter.

    Tag conditions are ``e.rid IN (SELECT rid FROM tags ...)`` so an event matching through
    two values of the same tag is counted once, and since/until are repeated on the tags'
    own created_at so the ``tags_value`` index range is as narrow as the filter.
    ``skip_tag`` names a tag condition the caller has already turned into a join;
    ``search_joined`` says the caller joins ``events_search`` itself (ranked search).
    """
    where: list[str] = []
    params: list[Any] = []
    if f.search is not None:
        # NIP-50: only the indexed kinds can match (an operator may have dropped a kind
        # whose old rows are still in the index until the next re-index).
        where.append(f"e.kind IN ({placeholders(len(f.search.kinds))})")
        params.extend(sorted(f.search.kinds))
        if not search_joined:
            where.append("e.rid IN (SELECT rowid FROM events_search WHERE events_search MATCH ?)")
            params.append(f.search.fts5_match())
    if f.ids is not None:
        where.append(f"e.id IN ({placeholders(len(f.ids))})")
        params.extend(bytes.fromhex(i) for i in sorted(f.ids))
    if f.authors is not None:
        where.append(f"e.pubkey IN ({placeholders(len(f.authors))})")
        params.extend(bytes.fromhex(a) for a in sorted(f.authors))
    if f.kinds is not None:
        where.append(f"e.kind IN ({placeholders(len(f.kinds))})")
        params.extend(sorted(f.kinds))
        if addresses_only(f):
            # Always true for these kinds; it lets events_address (partial) serve the search.
            where.append("e.d_tag IS NOT NULL")
    if f.since is not None:
        where.append("e.created_at >= ?")
        params.append(f.since)
    if f.until is not None:
        where.append("e.created_at <= ?")
        params.append(f.until)
    for name, values in f.tags:
        if name == skip_tag:
            continue
        sub = f"SELECT t.rid FROM tags t WHERE t.name = ? AND t.value IN ({placeholders(len(values))})"
        params.append(name)
        params.extend(sorted(values))
        sub += time_bounds("t", f, params)
        where.append(f"e.rid IN ({sub})")
    # NIP-40: an event whose expiration has passed is never sent, stored or not.
    where.append("(e.expiration IS NULL OR e.expiration > ?)")
    params.append(now)
    if scope is not None:
        where.extend(scope_conditions(scope, f, params))
    return " AND ".join(where), params


# NIP-86 bans (``ReadScope.banned``) in SQL: a probe of the ``management`` table's primary
# key (topic, key = lowercase hex) per candidate row, so the statement has no parameter per
# ban (SQLite's default build allows 32,766); the node's copy of the bans only decides
# whether a filter needs the probe (``ReadScope.hides_banned_authors``). Its cost follows
# the rows read, not the bans (100k events, ``bench/ban_scope.py``): ``{"kinds":[1],
# "limit":500}`` 0.64 ms with 1,000 or 10,000 bans none matching (0.35 without the test);
# skipping a banned flood of the newest 50k rows, 34-43 ms. ``hex(e.pubkey) NOT IN (SELECT
# upper(key) ...)`` builds the set of bans first: 25-30% faster when a statement reads every
# row (a COUNT of 90k, 50 ms against 72; the flood, 30 ms), but 0.78 and 3.7 ms on that REQ
# with 1,000 and 10,000 bans. One parameter per ban (``NOT IN (?, ...)``, blob compares,
# 25 ms on the flood) grows with the list.
_NOT_BANNED_AUTHOR = (
    "NOT EXISTS (SELECT 1 FROM management m WHERE m.topic = 'ban_pubkey' AND m.key = lower(hex(e.pubkey)))"
)
_NOT_BANNED_EVENT = "NOT EXISTS (SELECT 1 FROM management m WHERE m.topic = 'ban_event' AND m.key = lower(hex(e.id)))"


def scope_conditions(scope: ReadScope, f: Filter, params: list[Any]) -> list[str]:
    """The conditions (over ``events e``) of the rules of ``scope`` that can hide an event
    ``f`` matches; none when no rule can, so the filter runs as it stands. They sit in the
    filter's WHERE, i.e. before its LIMIT wherever the statement cuts it."""
    out: list[str] = []
    if scope.hides_private(f):
        out.append(private_condition(scope, params))
    if scope.hides_banned_authors(f):
        out.append(_NOT_BANNED_AUTHOR)
    if scope.hides_banned_ids(f):
        out.append(_NOT_BANNED_EVENT)
    return out


def private_condition(scope: ReadScope, params: list[Any]) -> str:
    """``ReadScope.allows`` in SQL: a private kind only when authored by or ``p``-tagging
    one of the connection's authenticated pubkeys (every ``p`` tag is in ``tags``)."""
    kinds = sorted(scope.private_kinds)
    params.extend(kinds)
    sql = f"e.kind NOT IN ({placeholders(len(kinds))})"
    if scope.readers:
        readers = sorted(scope.readers)
        params.extend(bytes.fromhex(r) for r in readers if is_hex64(r))
        marks = placeholders(sum(1 for r in readers if is_hex64(r)))
        params.extend(readers)
        sql += (
            f" OR e.pubkey IN ({marks})"
            f" OR e.rid IN (SELECT t.rid FROM tags t WHERE t.name = 'p' AND t.value IN ({placeholders(len(readers))}))"
        )
    return f"({sql})"


def time_bounds(alias: str, f: Filter, params: list[Any]) -> str:
    sql = ""
    if f.since is not None:
        sql += f" AND {alias}.created_at >= ?"
        params.append(f.since)
    if f.until is not None:
        sql += f" AND {alias}.created_at <= ?"
        params.append(f.until)
    return sql


def driving_index(f: Filter) -> str:
    """Which index a filter's search starts from, chosen by rule rather than left to the
    planner: without statistics SQLite prefers an index that yields created_at order
    (e.g. ``kind = 1`` for ``authors + kinds``) and then walks every kind-1 event to find
    two authors. The rule, most selective first: ids, tag values (event ids, pubkeys,
    hashtags), authors (+kinds), kinds, and created_at alone.
    Authors use ``events_author`` (pubkey, created_at, kind), newest first with the kinds
    tested on the index entry, except when every kind is replaceable or addressable
    (profiles, follow lists: at most one row per author, kind and d tag), which
    ``events_address`` finds directly (``filter_where`` adds its ``d_tag IS NOT NULL``).
    ``NOT INDEXED`` leaves the planner only rowid lookups, i.e. the tags subquery."""
    if f.ids is not None:
        return ""
    if f.tags:
        return " NOT INDEXED"
    if f.authors is not None:
        return " INDEXED BY events_address" if addresses_only(f) else " INDEXED BY events_author"
    if f.kinds is not None:
        return " INDEXED BY events_kind"
    return " INDEXED BY events_created"


def addresses_only(f: Filter) -> bool:
    """Authors and kinds given, every kind replaceable or addressable: only rows with a
    ``d_tag`` can match."""
    return (
        f.authors is not None
        and f.kinds is not None
        and all(kind_class(k) in (KindClass.REPLACEABLE, KindClass.ADDRESSABLE) for k in f.kinds)
    )


def search_select(f: Filter, now: int, columns: str, scope: ReadScope | None) -> tuple[str, list[Any]]:
    """NIP-50: SELECT of a ``search`` filter, best match first (FTS5 ``bm25``, whose
    ``rank`` is lower for better matches), then newest, then lowest id; the LIMIT applies
    after ranking. The full-text index drives the search, most recently stored match
    first (FTS5 walks its doclists in rowid order, both ways, at no cost); every other
    condition is checked on the event row found through it; only the first
    ``RANK_CANDIDATES`` that pass are ranked (``relay.nostr.search``), and only the ``limit``
    winners are read again for ``columns``."""
    assert f.search is not None
    where, rest = filter_where(f, now, search_joined=True, scope=scope)
    params: list[Any] = [f.search.fts5_match(), *rest, RANK_CANDIDATES]
    candidates = (
        "SELECT e.rid AS rid, events_search.rank AS r, e.created_at AS c, e.id AS i"
        " FROM events_search CROSS JOIN events e ON e.rid = events_search.rowid"
        f" WHERE events_search MATCH ? AND {where} ORDER BY events_search.rowid DESC LIMIT ?"
    )
    best = f"SELECT rid, r, c, i FROM ({candidates}) ORDER BY r, c DESC, i"
    if f.limit is not None:
        best += " LIMIT ?"
        params.append(f.limit)
    sql = f"SELECT {columns} FROM ({best}) s CROSS JOIN events e ON e.rid = s.rid ORDER BY s.r, s.c DESC, s.i"
    return sql, params


def filter_select(f: Filter, now: int, columns: str, scope: ReadScope | None = None) -> tuple[str, list[Any]]:
    """SELECT of one filter, newest first, ties lowest id, with its own LIMIT (a
    ``search`` filter: best match first, ``search_select``).

    A tag condition with a single value (``#e``/``#p`` lookups, the common case) drives
    the search as a join over ``tags_value``, which yields rows in created_at order, so
    ``LIMIT n`` stops after about n rows instead of sorting every tagged event. Several
    values would need a merge of ranges, which SQLite does not do: those sort.
    """
    if f.search is not None:
        return search_select(f, now, columns, scope)
    single = next((name for name, values in f.tags if len(values) == 1), None) if f.ids is None else None
    if single is not None:
        (value,) = dict(f.tags)[single]
        params: list[Any] = [single, value]
        bounds = time_bounds("d", f, params)
        where, rest = filter_where(f, now, skip_tag=single, scope=scope)
        params.extend(rest)
        sql = (
            f"SELECT {columns} FROM tags d CROSS JOIN events e ON e.rid = d.rid "
            f"WHERE d.name = ? AND d.value = ?{bounds} AND {where} ORDER BY d.created_at DESC, e.id"
        )
    else:
        where, params = filter_where(f, now, scope=scope)
        sql = f"SELECT {columns} FROM events e{driving_index(f)} WHERE {where} ORDER BY e.created_at DESC, e.id"
    if f.limit is not None:
        sql += " LIMIT ?"
        params.append(f.limit)
    return sql, params
