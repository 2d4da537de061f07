"""Rate limits and connection caps. Pure: callers pass the clock in."""

from __future__ import annotations

from dataclasses import dataclass


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


class IpTable:
    """Per-IP open connection counts and a shared event bucket per IP.

    An IP's entry lives while it has a connection open, so the table cannot grow without
    bound from addresses that come and go.
    """

    def __init__(self, max_connections: int, rate: float, burst: float) -> None:
        self.max_connections = max_connections
        self._rate, self._burst = rate, burst
        self._open: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}

    def connections(self, ip: str) -> int:
        return self._open.get(ip, 0)

    def admit(self, ip: str) -> bool:
        """Count a new connection unless the IP is at its cap."""
        count = self._open.get(ip, 0)
        if count >= self.max_connections:
            return False
        self._open[ip] = count + 1
        if count == 0:
            self._buckets[ip] = TokenBucket(self._rate, self._burst)
        return True

    def release(self, ip: str) -> None:
        count = self._open.get(ip, 0) - 1
        if count <= 0:
            self._open.pop(ip, None)
            self._buckets.pop(ip, None)
        else:
            self._open[ip] = count

    def take_event(self, ip: str, now: float) -> bool:
        bucket = self._buckets.get(ip)
        return bucket is None or bucket.take(now)
