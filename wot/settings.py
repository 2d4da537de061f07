"""The ``[wot]`` config section (env ``SATSRELAY_WOT__*``, through pydantic-settings)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from relay.nostr.event import is_hex64


def _hex_key(value: str) -> str:
    key = value.strip().lower()
    if not is_hex64(key):
        raise ValueError(f"{value!r} is not a hex public key (64 hex characters)")
    return key


class WotSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    # The operator's pubkeys (hop 0): always trusted, and their contact lists start the graph.
    roots: list[str] = []
    # 1: whom the roots follow; 2: and whom those follow; 3: one more (hundreds of thousands).
    max_hops: int = Field(2, ge=1, le=3)
    # From hop 2 on, a pubkey needs this many followers inside the trusted set (haven's
    # "common followers"): one stray follow of a spammer does not let it in.
    min_followers: int = Field(1, ge=1)
    # A contact list that follows more than this many banned (NIP-86) pubkeys is ignored:
    # its author vouches for spammers (wot-relay's rule). The author itself stays trusted.
    max_banned_follows: int = Field(3, ge=0)
    # How often changed contact lists are read from the store (every node, so a list
    # published on another node counts here within this).
    refresh_seconds: float = Field(30.0, gt=0)
    # A full recomputation on this schedule (also after a ban); a restart keeps the schedule.
    full_refresh_seconds: float = Field(3600.0, gt=0)
    # Relays (ws:// or wss://) whose contact lists count too: the lists the graph needs are
    # brought into this relay's store with its own sync (NIP-77, else paged REQ), and so are
    # the provider's NIP-85 assertions about pubkeys that asked to write. Empty: this
    # relay's store only.
    sources: list[str] = []
    # At most this many authors' lists (and as many assertion subjects) asked of each source
    # per refresh; the rest in turn on the next refreshes.
    source_authors_per_refresh: int = Field(5000, ge=1)
    # NIP-85 trusted assertions: a kind 30382 from ``provider`` whose ``rank`` tag is at
    # least ``min_rank`` trusts its subject (the ``d`` tag). Empty: not used.
    provider: str = ""
    min_rank: int = Field(50, ge=0, le=100)
    # The free tier's limits (per member; a tier of its own until plans have tiers).
    events_per_hour: int = Field(500, ge=0)  # per node; 0: no limit
    max_bytes: int = Field(50_000_000, ge=0)  # stored bytes per member; 0: no limit
    kinds: list[int] = []  # kinds a member writes free; empty: every kind

    @field_validator("roots")
    @classmethod
    def _roots(cls, value: list[str]) -> list[str]:
        return [_hex_key(v) for v in value]

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for url in value:
            url = url.strip()
            parts = urlsplit(url)
            if parts.scheme not in ("ws", "wss") or not parts.hostname:
                raise ValueError(f"{url!r} is not a relay URL (ws://host or wss://host)")
            if url not in out:
                out.append(url)
        return out

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str) -> str:
        return _hex_key(value) if value.strip() else ""
