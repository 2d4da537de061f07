"""Rate limits and connection caps. Pure: callers pass the clock in.

What a reconnect must not reset (issue 8, item 3): the per-address event bucket lives in
a bounded LRU keyed by the client's address group, not on its connections, so closing and
reopening a connection finds the same, partly drained bucket. Before, an address's bucket
was dropped with its last connection and reconnecting in a loop got 6,572 events/s
accepted against an advertised 100/s.

Address groups: an IPv4 address is its own group; an IPv6 client is grouped by its
``/ipv6_prefix`` network (default /64, what one home line or one VPS is given), since a
single host can otherwise pick a fresh source address per connection from 2^64 of them.

Across worker processes (``serve --workers N``, issue 17 item 10): in a worker, every
``BucketTable`` and ``IpTable`` keeps its buckets and per-group connection counts in the
segment the supervisor shares (``relay.net.shared_limits``), so each limit holds for the relay as a
whole however the kernel spreads a client's connections. A relay running alone keeps them
in this process, as before.
"""

from __future__ import annotations

import ipaddress
import sys
from collections import OrderedDict
from dataclasses import dataclass

from relay.net.shared_limits import SharedLimits, shared_limits_of_this_process


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float, cost: float = 1.0) -> bool:
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


def address_group(ip: str, ipv6_prefix: int = 64) -> str:
    """The key an address is limited under: IPv4 as is (an IPv4-mapped IPv6 address as
    its IPv4), IPv6 as its ``/ipv6_prefix`` network. Anything that is not an address (a
    proxy header's odd value, "unknown") is its own group, cut to 64 characters so such
    keys stay small. The key is interned: every connection from one group (its slot, its
    session, the tables) shares one string instead of holding a fresh copy each."""
    try:
        addr = ipaddress.ip_address(ip.strip().split("%", 1)[0])
    except ValueError:
        return sys.intern(ip[:64])
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return sys.intern(str(addr.ipv4_mapped))
        return sys.intern(str(ipaddress.IPv6Network((addr, ipv6_prefix), strict=False)))
    return sys.intern(str(addr))


class BucketTable:
    """One token bucket per key (address group, pubkey), at most ``capacity`` of them,
    least recently used evicted first.

    Evicting a bucket hands its key a full one next time, so the table must hold every
    key active within ``burst / rate`` seconds (the time a drained bucket takes to refill;
    an older bucket is full anyway and loses nothing by eviction). At the default 100,000
    keys an attacker needs that many distinct address groups (or, per pubkey, signed
    events from that many keys) inside that window to reset one of them; each entry costs
    about 200 bytes.

    In a worker of ``serve --workers`` (or given ``shared``) the buckets live in the shared
    segment instead, told apart from other tables' by ``name``; an unnamed table is named by
    its rate and burst, so give each table a name. ``now`` must then be ``time.monotonic()``,
    the clock every process of the machine shares. The segment's pool is sized for every
    table together, so ``capacity`` bounds only the in-process table.
    """

    def __init__(
        self, rate: float, burst: float, capacity: int, *, name: str | None = None, shared: SharedLimits | None = None
    ) -> None:
        """``shared``: a segment to use; by default the one this process was handed, if any."""
        self.rate, self.burst, self.capacity = rate, burst, capacity
        self.name = name if name is not None else f"{rate!r}/{burst!r}"
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._shared = shared if shared is not None else shared_limits_of_this_process()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> bool:
        if self._shared is not None:
            return self._shared.take(self.name, key, now, self.rate, self.burst)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
            if len(self._buckets) > self.capacity:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)


class IpTable:
    """Open connections per address group and overall, and the per-group event bucket.

    Connection counts live while a group has a connection open (bounded by the number of
    connections); event buckets live in a ``BucketTable`` and outlive connections. In a
    worker (or given ``shared``) the per-group counts and buckets are the relay's, kept in
    the shared segment; ``total`` (``max_total``) stays this process's own, as its file
    descriptors are.
    """

    CONNECTIONS = "address-connections"  # the counts' name in a shared segment

    def __init__(
        self,
        max_connections: int,
        rate: float,
        burst: float,
        *,
        max_total: int | None = None,
        ipv6_prefix: int = 64,
        capacity: int = 100_000,
        shared: SharedLimits | None = None,
    ) -> None:
        self.max_connections = max_connections  # per address group
        self.max_total = max_total  # every client together
        self.ipv6_prefix = ipv6_prefix
        self._open: dict[str, int] = {}
        self.total = 0
        self._shared = shared if shared is not None else shared_limits_of_this_process()
        self._buckets = BucketTable(rate, burst, capacity, name="address-events", shared=self._shared)

    def group(self, ip: str) -> str:
        return address_group(ip, self.ipv6_prefix)

    def connections(self, ip: str) -> int:
        if self._shared is not None:
            return self._shared.connections(self.CONNECTIONS, self.group(ip))
        return self._open.get(self.group(ip), 0)

    def refusal(self, ip: str) -> str | None:
        """Why a new connection from ``ip`` would be refused now ("global-limit",
        "per-ip-limit"), or None; counts nothing."""
        if self.max_total is not None and self.total >= self.max_total:
            return "global-limit"
        if self.connections(ip) >= self.max_connections:
            return "per-ip-limit"
        return None

    def admit(self, ip: str) -> bool:
        """Count a new connection unless a cap refuses it (``refusal`` says which)."""
        if self.max_total is not None and self.total >= self.max_total:
            return False
        key = self.group(ip)
        if self._shared is not None:
            # checked and counted under one lock: another worker may be admitting this group
            if not self._shared.admit(self.CONNECTIONS, key, self.max_connections):
                return False
        elif self._open.get(key, 0) >= self.max_connections:
            return False
        else:
            self._open[key] = self._open.get(key, 0) + 1
        self.total += 1
        return True

    def release(self, ip: str) -> None:
        key = self.group(ip)
        if self._shared is not None:
            self._shared.release(self.CONNECTIONS, key)
        else:
            count = self._open.get(key, 0) - 1
            if count <= 0:
                self._open.pop(key, None)
            else:
                self._open[key] = count
        self.total = max(0, self.total - 1)

    def take_event(self, ip: str, now: float) -> bool:
        return self._buckets.take(self.group(ip), now)


class LogThrottle:
    """At most one log line per ``interval`` seconds per key: a flood of refused
    connections must not become a flood of log lines (disk, operator's attention).
    ``ready`` returns how many lines were suppressed since the last one, or None when this
    one should be suppressed too."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def ready(self, key: str, now: float) -> int | None:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)
