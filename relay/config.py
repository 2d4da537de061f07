"""One validated Settings object: TOML file (``--config``) overlaid by ``SATSRELAY_*`` env.

Environment variables name nested keys with ``__``: ``SATSRELAY_LIMITS__MAX_LIMIT=100``.
Unknown keys are refused, so a typo in the file stops start-up instead of being ignored.
``config.example.toml`` documents every key with its default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from relay.discovery import PluginError, discover_plugins


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RelayInfo(_Section):
    """What NIP-11 and the HTML page publish."""

    name: str = "satsrelay"
    description: str = "A Nostr relay whose writes are paid in sats."
    pubkey: str | None = None
    contact: str | None = None
    icon: str | None = None
    banner: str | None = None
    terms_of_service: str | None = None
    public_url: str = Field(
        "", description="ws(s):// URL clients use; NIP-42 checks it; empty: ws://server.host:server.port"
    )
    secret_key: SecretStr | None = Field(None, description="the relay's own key (64 hex); default: the key file")
    key_file: str | None = Field(None, description="default relay.key beside the SQLite database (or data/)")


def resolve_workers(value: object) -> object:
    """``workers = "auto"``: as many as the cores this process may run on."""
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return value


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(7777, ge=0, le=65535)
    compression: bool = Field(False, description="permessage-deflate; costs ~40 KiB RSS per connection")
    workers: int = Field(
        1, ge=1, description='processes sharing the port; "auto": one per core (SQLite adds a writer process)'
    )
    reuse_port: bool = Field(False, description="SO_REUSEPORT; set for each worker by --workers")
    shutdown_grace_seconds: float = Field(5.0, ge=0)
    real_ip_header: str | None = Field(None, description="e.g. X-Forwarded-For, only behind a trusted proxy")
    metrics_listen: str = Field("127.0.0.1:9477", description="host:port of a separate /metrics listener; empty = none")
    metrics_token: SecretStr | None = Field(
        None, description="serve /metrics on the public port too, to `Authorization: Bearer <token>`"
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: object) -> object:
        return resolve_workers(value)

    @field_validator("metrics_listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError("must be host:port (e.g. 127.0.0.1:9477) or empty")
        return value

    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) of the metrics listener, or None when it is off."""
        if not self.metrics_listen:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]"), int(port)
    max_request_body_bytes: int = Field(65536, ge=0, description="HTTP request bodies past this get 413")
    http_header_timeout_seconds: float = Field(
        10.0, gt=0, description="request line + headers must arrive within this (also the keep-alive idle time)"
    )
    http_body_timeout_seconds: float = Field(30.0, gt=0, description="a request body must arrive within this")
    ping_interval_seconds: float = Field(
        60.0, gt=0, description="WebSocket ping after this much silence; no answer within as long again: cut"
    )


class StorageSettings(_Section):
    url: str = Field("sqlite:///data/satsrelay.db", description="sqlite:///path or postgresql://...")
    synchronous: str = Field("FULL", pattern="^(FULL|NORMAL)$")
    batch_max: int = Field(1000, ge=1)
    read_connections: int = Field(
        2, ge=1, description="SQLite readers (at least 2 are opened); COUNT, NIP-77 and NIP-50 may use half of them"
    )
    purge_interval_seconds: float = Field(60.0, gt=0)
    schema_name: str | None = Field(None, description="PostgreSQL schema for every table (default: public)")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:///<path> or postgresql://")
        if url == "sqlite:///":
            raise ValueError("sqlite:/// needs a file path, e.g. sqlite:///data/satsrelay.db")
        return url


class LimitSettings(_Section):
    max_message_length: int = Field(131072, ge=1024)
    max_subscriptions: int = Field(50, ge=1)
    max_filters: int = Field(10, ge=1)
    max_limit: int = Field(5000, ge=1)
    default_limit: int = Field(500, ge=1)
    max_event_tags: int = Field(2000, ge=1)
    max_content_length: int = Field(65536, ge=1)
    events_per_second: float = Field(20.0, gt=0, description="per connection, sustained")
    events_burst: int = Field(100, ge=1)
    ip_events_per_second: float = Field(100.0, gt=0)
    ip_events_burst: int = Field(500, ge=1)
    max_connections_per_ip: int = Field(
        100,
        ge=1,
        description="WebSockets per address group (see ipv6_prefix), and as many connections still in HTTP "
        "(not counted behind a proxy: real_ip_header)",
    )
    max_connections: int = Field(10000, ge=1, description="every client together; past it HTTP 503")
    ipv6_prefix: int = Field(64, ge=16, le=128, description="IPv6 clients are limited per /N network")
    pubkey_events_per_second: float = Field(50.0, gt=0, description="per author, any connection or address")
    pubkey_events_burst: int = Field(500, ge=1)
    rate_table_size: int = Field(100_000, ge=1000, description="buckets kept per address group and per pubkey")
    max_heavy_reads: int = Field(
        2, ge=1, description="COUNT, NEG-OPEN item sets and NIP-50 searches running at once; more wait their turn"
    )
    max_heavy_reads_per_ip: int = Field(
        1, ge=1, description="... of them for one address group; freed turns go round robin over the groups"
    )
    max_page_reads: int = Field(
        16, ge=1, description="REQ answer pages being read and queued at once; more wait their turn"
    )
    max_page_reads_per_ip: int = Field(
        2, ge=1, description="... of them for one address group; freed turns go round robin over the groups"
    )
    outgoing_queue_bytes: int = Field(4 * 1024 * 1024, ge=65536, description="slow reader is dropped past this")
    created_at_lower_limit: int | None = Field(None, ge=0, description="NIP-22: max seconds in the past")
    created_at_upper_limit: int | None = Field(900, ge=0, description="NIP-22: max seconds in the future")
    min_pow_difficulty: int = Field(0, ge=0, le=256)


class AuthSettings(_Section):
    """NIP-42."""

    enabled: bool = True
    required_to_write: bool = False
    required_to_read: bool = False


class SearchSettings(_Section):
    """NIP-50 full-text search."""

    enabled: bool = True
    kinds: tuple[int, ...] = Field((0, 1, 30023, 30024), description="kinds indexed for search")

    def indexed_kinds(self) -> frozenset[int]:
        """Kinds the store indexes and a ``search`` filter can match (none when disabled)."""
        return frozenset(self.kinds) if self.enabled else frozenset()


class NegentropySettings(_Section):
    """NIP-77 set reconciliation. Each open reconciliation holds its item set in memory
    (40 bytes per event), so items are capped per reconciliation, per connection and
    relay-wide."""

    enabled: bool = True
    max_sessions: int = Field(4, ge=1, description="open reconciliations per connection")
    max_items: int = Field(500_000, ge=1, description="events in one reconciliation; more: NEG-ERR blocked")
    max_total_items: int = Field(5_000_000, ge=1, description="events held by all reconciliations together")
    max_items_per_ip: int | None = Field(
        None, ge=1, description="events held by one address group's reconciliations; default 2 x max_items"
    )
    opens_per_second: float = Field(1.0, gt=0, description="NEG-OPEN rate per connection (burst 2 x max_sessions)")
    frame_size_limit: int = Field(60_000, ge=4096, description="bytes of one negentropy message we send")

    @model_validator(mode="after")
    def _items_fit(self) -> NegentropySettings:
        # A NEG-OPEN reserves max_items before reading (issue 17): a budget smaller than
        # that would refuse every reconciliation without a filter limit.
        if self.max_total_items < self.max_items:
            raise ValueError("max_total_items must be at least max_items")
        if self.max_items_per_ip is not None and self.max_items_per_ip < self.max_items:
            raise ValueError("max_items_per_ip must be at least max_items")
        return self

    def items_per_ip(self) -> int:
        """Items one address group may hold (``max_items_per_ip``, default 2 x max_items)."""
        per_ip = self.max_items_per_ip if self.max_items_per_ip is not None else 2 * self.max_items
        return min(per_ip, self.max_total_items)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(value: str | int) -> int:
    """Seconds from ``"90d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"``, ``"1y"`` or an int."""
    if isinstance(value, int):
        seconds = value
    else:
        text = value.strip().lower()
        unit = _DURATION_UNITS.get(text[-1:]) if text else None
        number = text[:-1] if unit else text
        if not number.isdigit():
            raise ValueError(f"{value!r} is not a duration like 365d, 12h, 30m or a number of seconds")
        seconds = int(number) * (unit or 1)
    if seconds <= 0:
        raise ValueError(f"{value!r}: a retention period must be positive")
    return seconds


class RetentionSettings(_Section):
    """How long events are kept and how much each author may store (issue 11 item 5)."""

    kinds: dict[int, str | int] = Field(
        default_factory=dict, description='kind -> max age, e.g. { 1 = "365d", 7 = "90d" }; unlisted kinds: forever'
    )
    max_bytes_per_pubkey: int = Field(0, ge=0, description="stored raw JSON per author (non-members); 0 = no quota")
    member_max_bytes_per_pubkey: int = Field(0, ge=0, description="the same for paying members; 0 = no quota")
    purge_batch: int = Field(1000, ge=1, description="events deleted per transaction; writes run in between")

    @field_validator("kinds")
    @classmethod
    def _durations(cls, value: dict[int, str | int]) -> dict[int, str | int]:
        for kind, age in value.items():
            if not 0 <= kind <= 65535:
                raise ValueError(f"kind {kind} is out of range")
            parse_duration(age)
        return value

    def max_age(self) -> dict[int, int]:
        """kind -> seconds."""
        return {kind: parse_duration(age) for kind, age in self.kinds.items()}


class AdminSettings(_Section):
    """Who may call the NIP-86 management API (NIP-98 signed requests)."""

    pubkeys: list[str] = Field(default_factory=list, description="hex pubkeys of the relay's operators")

    @field_validator("pubkeys")
    @classmethod
    def _hex(cls, value: list[str]) -> list[str]:
        out = []
        for key in value:
            key = key.strip().lower()
            if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
                raise ValueError(f"{key!r} is not a 64-character hex pubkey")
            out.append(key)
        return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SATSRELAY_", env_nested_delimiter="__", extra="forbid", frozen=True)

    relay: RelayInfo = RelayInfo()
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    limits: LimitSettings = LimitSettings()
    auth: AuthSettings = AuthSettings()
    search: SearchSettings = SearchSettings()
    negentropy: NegentropySettings = NegentropySettings()
    retention: RetentionSettings = RetentionSettings()
    admin: AdminSettings = AdminSettings()
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _derive_public_url(self) -> Settings:
        """An unset ``relay.public_url`` follows ``server.host``/``server.port``: changing
        only the port must not leave NIP-42 AUTH and the join links on the old one."""
        if not self.relay.public_url:
            relay = self.relay.model_copy(update={"public_url": derived_public_url(self.server)})
            object.__setattr__(self, "relay", relay)  # frozen model: set once, while validating
        return self

    def section(self, name: str) -> BaseModel:
        """A plug-in's own section (``[payments]``), validated by its model."""
        value = getattr(self, name, None)
        if not isinstance(value, BaseModel):
            raise KeyError(f"no config section {name!r}: is its plug-in installed?")
        return value


class PluginSection(Protocol):
    """What config needs of a plug-in (``relay.plugins.Plugin``): its section and model."""

    section: str
    settings_model: type[BaseModel]


def settings_class(plugins: Sequence[PluginSection]) -> type[Settings]:
    """Settings plus one section per installed plug-in, each validated by the model the
    plug-in supplies (unknown keys in it are refused like anywhere else)."""
    if not plugins:
        return Settings
    fields: dict[str, Any] = {}
    for plugin in plugins:
        if plugin.section in Settings.model_fields or plugin.section in fields:
            raise PluginError(f"two parts of the relay claim the config section [{plugin.section}]")
        fields[plugin.section] = (plugin.settings_model, plugin.settings_model())
    model: type[Settings] = create_model("Settings", __base__=Settings, **fields)
    return model


_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}
_LOCAL_HOSTS = frozenset(("127.0.0.1", "localhost", "::1", "0.0.0.0", "::"))


def derived_public_url(server: ServerSettings) -> str:
    """``ws://host:port`` of the listening socket; a wildcard host becomes loopback (a
    client cannot connect to 0.0.0.0), an IPv6 literal gets brackets."""
    host = _WILDCARD_HOSTS.get(server.host, server.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"ws://{host}:{server.port}"


def public_url_mismatch(settings: Settings) -> str | None:
    """A warning when ``relay.public_url`` points at this machine but not at the port the
    relay listens on (AUTH would fail, join links would be wrong); None otherwise. A
    public_url naming another host is a reverse proxy's address and is left alone."""
    try:
        parts = urlsplit(settings.relay.public_url)
        port = parts.port
    except ValueError:
        return f"relay.public_url {settings.relay.public_url!r} is not a URL"
    if parts.scheme not in ("ws", "wss"):
        return f"relay.public_url {settings.relay.public_url!r} should start with ws:// or wss://"
    host = (parts.hostname or "").lower()
    local = host in _LOCAL_HOSTS or host == settings.server.host.lower()
    if port is None:
        port = 443 if parts.scheme == "wss" else 80
    if local and port != settings.server.port and settings.server.port != 0:
        return (
            f"relay.public_url {settings.relay.public_url} does not match server.port {settings.server.port}: "
            "NIP-42 AUTH and join links will use the wrong port (leave public_url unset to derive it)"
        )
    return None


class ConfigError(Exception):
    """A setting is wrong; the message names the key."""


def load_settings(
    path: Path | None = None, *, plugins: Sequence[PluginSection] | None = None, **overrides: object
) -> Settings:
    """Settings from ``path`` (TOML), environment and keyword overrides (highest first:
    overrides, environment, file, defaults), with the sections of ``plugins`` (default:
    every installed plug-in)."""
    if plugins is None:
        try:
            plugins = discover_plugins()
        except PluginError as exc:
            raise ConfigError(str(exc)) from None
    base = settings_class(plugins)

    class _FromFile(base):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            return tuple(sources)

    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        settings: Settings = _FromFile(**overrides)
        return settings
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"])
            message = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{key}: {message}" if key else message)
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
