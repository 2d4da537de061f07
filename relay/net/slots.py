"""Who holds the listener's connections, by address group, and whom to close when it is full.

Kept apart from the shell that asks it (``relay.net.transport``): a pure bookkeeping object
with its own rules, tested without a socket.
"""

from __future__ import annotations

from typing import Protocol

from relay.net.limits import address_group


class Occupant(Protocol):
    """A connection as the slots see it (``relay.net.transport.RelayProtocol``)."""

    @property
    def idle_http(self) -> bool: ...

    @property
    def last_seen(self) -> float: ...

    def evict(self) -> None: ...


class ConnectionSlots:
    """Every open connection of one listener, by address group (issue 17 item 11): the
    listener's share of the process's descriptors (``relay.net.descriptors``), HTTP and
    WebSocket alike, taken in ``connection_made`` before a byte is parsed.

    - ``capacity``: connections held at most, still in HTTP or upgraded (max_connections,
      lowered to what the open-file limit allows). Connections in HTTP used not to count:
      10,025 descriptors were open while 5,000 were counted.
    - ``http_per_group``: connections one group may hold before (or without) an upgrade
      (issue 8's "rates survive reconnects", for the HTTP phase): without it one address
      held thousands of idle keep-alive or half-sent requests for the header timeout each.
      Upgraded connections leave this count for the WebSocket one (``IpTable``). None
      behind a proxy, where every connection comes from the proxy's address.
    - Full, a newcomer from a group holding fewer than the largest holder minus one takes a
      connection from that holder (an idle HTTP one first, else its WebSocket silent
      longest): a few dozen addresses filling the relay up to their caps cannot keep
      anyone else out, and a group holding one connection is never the one closed while
      another holds two. A newcomer from the largest group is refused (503).

    The largest holder is found in O(1): groups are bucketed by how many they hold.
    """

    def __init__(self, capacity: int, http_per_group: int | None, ipv6_prefix: int) -> None:
        self.capacity = capacity
        self._http_cap = http_per_group
        self._prefix = ipv6_prefix
        self._groups: dict[str, dict[Occupant, None]] = {}  # oldest first
        self._group_of: dict[Occupant, str] = {}
        self._in_http: dict[str, int] = {}
        self._http_members: set[Occupant] = set()
        self._by_size: dict[int, set[str]] = {}
        self._largest = 0
        self.total = 0
        self.evicted = 0

    def admit(self, conn: Occupant, ip: str) -> str | None:
        """Count ``conn`` (an HTTP connection from ``ip``), or say why not: "per-ip-limit"
        (its group's HTTP share is taken: 429), "global-limit" (full, and its group holds
        as many as anyone: 503)."""
        key = address_group(ip, self._prefix)
        if self._http_cap is not None and self._in_http.get(key, 0) >= self._http_cap:
            return "per-ip-limit"
        if self.total >= self.capacity:
            held = len(self._groups.get(key, ()))
            if self._largest <= held + 1:
                return "global-limit"
            victim = self._victim(next(iter(self._by_size[self._largest])))
            self.release(victim)
            self.evicted += 1
            victim.evict()
        members = self._groups.setdefault(key, {})
        members[conn] = None
        self._resize(key, len(members) - 1, len(members))
        self._group_of[conn] = key
        self._http_members.add(conn)
        self._in_http[key] = self._in_http.get(key, 0) + 1
        self.total += 1
        return None

    def leave_http(self, conn: Occupant) -> None:
        """``conn`` became a WebSocket: still held, no longer in its group's HTTP share."""
        if conn in self._http_members:
            self._http_members.discard(conn)
            self._drop_http(self._group_of[conn])

    def release(self, conn: Occupant) -> None:
        key = self._group_of.pop(conn, None)
        if key is None:
            return  # never admitted, or evicted already
        if conn in self._http_members:
            self._http_members.discard(conn)
            self._drop_http(key)
        members = self._groups[key]
        del members[conn]
        self._resize(key, len(members) + 1, len(members))
        if not members:
            del self._groups[key]
        self.total -= 1

    def _drop_http(self, key: str) -> None:
        left = self._in_http[key] - 1
        if left:
            self._in_http[key] = left
        else:
            del self._in_http[key]

    def _resize(self, key: str, old: int, new: int) -> None:
        if old:
            bucket = self._by_size[old]
            bucket.discard(key)
            if not bucket:
                del self._by_size[old]
        if new:
            self._by_size.setdefault(new, set()).add(key)
        if new > self._largest:
            self._largest = new
        elif old == self._largest and old not in self._by_size:
            self._largest = old - 1  # the group that shrank is now the (or a) largest

    def _victim(self, key: str) -> Occupant:
        """The connection of group ``key`` whose loss costs least: an HTTP connection with
        no request being served (the oldest), else the WebSocket silent longest."""
        quietest: Occupant | None = None
        for conn in self._groups[key]:
            if conn in self._http_members:
                if conn.idle_http:
                    return conn
            elif quietest is None or conn.last_seen < quietest.last_seen:
                quietest = conn
        return quietest if quietest is not None else next(iter(self._groups[key]))
