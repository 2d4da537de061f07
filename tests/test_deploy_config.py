"""deploy/relay.toml and the wallet examples in deploy/wallets/, as the README's production
section uses them: each example appended to relay.toml, its secret given in the
environment (as /etc/satsrelay/env does), validates with the relay's Settings model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lightning.settings import REQUIRED_SECRETS, PaymentSettings
from relay import crypto
from relay.config import ConfigError, load_settings

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
def test_each_wallet_example_validates_with_its_secret_from_the_environment(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = (WALLETS / f"{backend}.toml").read_text()
    config = tmp_path / "relay.toml"
    config.write_text(RELAY.read_text() + "\n" + example)  # what `tee -a` makes of it
    section, key = REQUIRED_SECRETS[backend]
    env = f"SATSRELAY_PAYMENTS__{section.upper()}__{key.upper()}"
    # the example names the variable the relay asks for, and sets no secret itself ...
    assert re.search(rf"^#\s+(?:echo \")?{env}=", example, re.MULTILINE), f"{backend}.toml does not name {env}"
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(ConfigError, match=env):
        load_settings(config)
    # ... and with it set (as /etc/satsrelay/env does) the whole config is valid
    secret = dummy_secret(backend)
    monkeypatch.setenv(env, secret)
    payments = load_settings(config).section("payments")
    assert isinstance(payments, PaymentSettings)
    assert payments.enabled and payments.backend == backend and payments.admission.enabled
    wallet = getattr(payments, section)
    assert getattr(wallet, key).get_secret_value() == secret
    for path_key in ("tls_cert_path", "ca_cert_path"):  # certificates the unit can read (not /home)
        value = getattr(wallet, path_key, None)
        assert value is None or value.startswith("/etc/satsrelay/"), value
