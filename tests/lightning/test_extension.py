"""Building the payments extension from settings: the wallet factory and secret hygiene."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from lightning.extension import build_backend, fake_state_file, payments_url
from relay.config import ConfigError, load_settings

WALLETS = {
    "fake": ("FakeBackend", {}),
    "lnbits": ("LnbitsBackend", {"lnbits": {"url": "http://127.0.0.1:1", "invoice_key": "SECRET-lnbits"}}),
    "lnd": ("LndBackend", {"lnd": {"url": "https://127.0.0.1:1", "macaroon_hex": "5ec12e7"}}),
    "cln": ("ClnBackend", {"cln": {"url": "https://127.0.0.1:1", "rune": "SECRET-rune"}}),
    "phoenixd": ("PhoenixdBackend", {"phoenixd": {"url": "http://127.0.0.1:1", "password": "SECRET-pw"}}),
    "nwc": (
        "NwcBackend",
        {"nwc": {"uri": f"nostr+walletconnect://{'b' * 64}?relay=ws%3A%2F%2F127.0.0.1%3A1&secret={'1' * 64}"}},
    ),
}


@pytest.mark.parametrize("name", sorted(WALLETS))
async def test_factory_builds_each_wallet_and_settings_hide_its_secret(name: str, tmp_path: Path) -> None:
    cls_name, section = WALLETS[name]
    settings = load_settings(
        None, storage={"url": f"sqlite:///{tmp_path}/r.db"}, payments={"enabled": True, "backend": name, **section}
    )
    async with httpx.AsyncClient() as http:
        backend = build_backend(settings, http)
        try:
            assert type(backend).__name__ == cls_name and backend.name == name
        finally:
            await backend.close()
    dumped = repr(settings) + str(settings.model_dump())
    for secret in ("SECRET-lnbits", "5ec12e7", "SECRET-rune", "SECRET-pw", "1" * 64):
        assert secret not in dumped


def test_payments_url_and_fake_state_file_follow_the_relay_settings(tmp_path: Path) -> None:
    s = load_settings(
        None, relay={"public_url": "wss://relay.example.com/"}, storage={"url": f"sqlite:///{tmp_path}/x.db"}
    )
    assert payments_url(s) == "https://relay.example.com/join"
    assert fake_state_file(s) == tmp_path / "fake-wallet.db"
    s = load_settings(None, payments={"payments_url": "https://pay.example.com"})
    assert payments_url(s) == "https://pay.example.com"


def test_enabling_payments_without_any_plan_is_refused() -> None:
    with pytest.raises(ConfigError, match="no plan"):
        load_settings(None, payments={"enabled": True, "admission": {"enabled": False}})
    with pytest.raises(ConfigError, match="ban_pubkeys"):
        load_settings(None, payments={"ban_pubkeys": ["npub1notahexkey"]})
