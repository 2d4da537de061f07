"""deploy/relay.toml and the wallet examples in deploy/wallets/, as the README's production
section uses them: each example appended to relay.toml, its secret given in the
environment (as /etc/satsrelay/env does), validates with the relay's Settings model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lightning.settings import REQUIRED_SECRETS, PaymentSettings
from relay.config import ConfigError, load_settings
from relay.nostr import crypto

REPO = Path(__file__).resolve().parent.parent
RELAY = REPO / "deploy" / "relay.toml"
WALLETS = REPO / "deploy" / "wallets"


def dummy_secret(backend: str) -> str:
    if backend == "nwc":
        wallet = crypto.public_key(crypto.generate_secret()).hex()
        return f"nostr+walletconnect://{wallet}?relay=wss://relay.example.net&secret={crypto.generate_secret().hex()}"
    return "0123456789abcdef" * 2


def test_the_production_config_is_valid_on_its_own() -> None:
    settings = load_settings(RELAY)
    assert settings.relay.public_url.startswith("wss://") and settings.server.real_ip_header == "X-Real-IP"
    assert settings.server.host == "127.0.0.1" and settings.server.metrics_listen.startswith("127.0.0.1:")


def test_every_wallet_backend_has_an_example() -> None:
    assert sorted(p.stem for p in WALLETS.glob("*.toml")) == sorted(REQUIRED_SECRETS)


@pytest.mark.parametrize("backend", sorted(REQUIRED_SECRETS))
@pytest.mark.parametrize("given_in", ["relay.toml", "env"])
def test_each_wallet_example_validates_with_its_secret_filled_in(
    backend: str, given_in: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appended to relay.toml as it is, an example is refused, naming the key and the env
    variable; with the credential filled in on its commented line, or given in the
    environment (as /etc/satsrelay/env does), the whole config is valid."""
    example = (WALLETS / f"{backend}.toml").read_text()
    section, key = REQUIRED_SECRETS[backend]
    env = f"SATSRELAY_PAYMENTS__{section.upper()}__{key.upper()}"
    assert re.search(rf"^#\s+{env}=", example, re.MULTILINE), f"{backend}.toml does not name {env}"
    placeholder = re.compile(rf'^# {key} = "<[^>]*>"$', re.MULTILINE)
    assert placeholder.search(example), f"{backend}.toml has no commented {key} line to fill in"
    config = tmp_path / "relay.toml"
    monkeypatch.delenv(env, raising=False)
    config.write_text(RELAY.read_text() + "\n" + example)  # what `tee -a` makes of it
    with pytest.raises(ConfigError, match=f"payments.{section}.{key}.*{env}"):
        load_settings(config)
    secret = dummy_secret(backend)
    if given_in == "env":
        monkeypatch.setenv(env, secret)
    else:
        filled = placeholder.sub(lambda _: f"{key} = {json.dumps(secret)}", example)
        config.write_text(RELAY.read_text() + "\n" + filled)
    payments = load_settings(config).section("payments")
    assert isinstance(payments, PaymentSettings)
    assert payments.enabled and payments.backend == backend and payments.admission.enabled
    wallet = getattr(payments, section)
    assert getattr(wallet, key).get_secret_value() == secret
    for path_key in ("tls_cert_path", "ca_cert_path"):  # certificates the unit can read (not /home)
        value = getattr(wallet, path_key, None)
        assert value is None or value.startswith("/etc/satsrelay/"), value


def seconds(duration: str) -> float:
    """An nginx or Caddy duration: 90, 90s, 5m, 1h (and Caddy's 1h30m)."""
    units = {"h": 3600, "m": 60, "s": 1, "": 1}
    parts = re.findall(r"(\d+)([hms]?)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return float(sum(int(n) * units[u] for n, u in parts))


def test_the_proxies_keep_a_quiet_websocket_open_past_the_relays_pings() -> None:
    """A subscriber that only listens sends nothing for minutes; the relay pings it every
    ping_interval_seconds and the client's pong is all that crosses the proxy. nginx cuts an
    upstream connection that reads or writes nothing for proxy_read_timeout /
    proxy_send_timeout (60 s by default: the ping interval itself, a race), so both are set,
    longer than the interval; Caddy sets no such timeout on a proxied WebSocket unless its
    file names one, which must then be longer too."""
    ping = load_settings(RELAY).server.ping_interval_seconds
    nginx = (REPO / "deploy" / "nginx" / "satsrelay.conf").read_text()
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        [value] = re.findall(rf"^\s*{directive}\s+(\S+);", nginx, re.MULTILINE)
        assert seconds(value) > 2 * ping, (directive, value, ping)
    caddy = (REPO / "deploy" / "caddy" / "Caddyfile").read_text()
    for value in re.findall(r"^\s*(?:read_timeout|write_timeout|stream_timeout|idle_timeout)\s+(\S+)", caddy, re.M):
        assert seconds(value) > 2 * ping, (value, ping)
