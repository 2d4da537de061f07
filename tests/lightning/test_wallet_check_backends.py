"""``WalletBackend.check`` for the wallets other than LNbits (tests/lightning/test_wallet_check.py
runs LNbits for real), against the same stand-ins their own tests use: it passes with the right
credential and raises ``BackendError`` with a wrong one, and creates nothing."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from lightning.backend import BackendError
from lightning.backends.cln import ClnBackend, ClnConfig
from lightning.backends.lnd import LndBackend, LndConfig
from lightning.backends.nwc import NwcBackend, NwcConfig
from lightning.backends.phoenixd import PhoenixdBackend, PhoenixdConfig
from relay.nostr import crypto
from tests.conftest import RelayFactory
from tests.lightning.test_backend_cln import FakeCln, serve_https
from tests.lightning.test_backend_lnd import MACAROON, FakeLnd
from tests.lightning.test_backend_nwc import _wallet
from tests.lightning.test_backend_phoenixd import PASSWORD, FakePhoenixd


async def test_lnd_check() -> None:
    fake = FakeLnd()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handle), timeout=5.0) as client:
        await LndBackend(LndConfig("https://lnd.test:8080", MACAROON), client).check()
        with pytest.raises(BackendError, match="HTTP 500"):
            await LndBackend(LndConfig("https://lnd.test:8080", "0201" + "cd" * 40), client).check()
    assert fake.invoices == {}


async def test_cln_check(tmp_path: Path) -> None:
    from tests.lightning.test_backend_cln import RUNE

    fake = FakeCln()
    async with serve_https(fake, tmp_path) as (url, ca_path), httpx.AsyncClient(timeout=5.0) as shared:
        good = ClnBackend(ClnConfig(url, RUNE, ca_cert_path=str(ca_path)), shared)
        wrong = ClnBackend(ClnConfig(url, "x" * 60, ca_cert_path=str(ca_path)), shared)
        try:
            await good.check()
            with pytest.raises(BackendError):
                await wrong.check()
        finally:
            await good.close()
            await wrong.close()


async def test_phoenixd_check() -> None:
    fake = FakePhoenixd()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handle), timeout=5.0) as client:
        await PhoenixdBackend(PhoenixdConfig("http://phoenixd.test:9740", PASSWORD), client).check()
        with pytest.raises(BackendError, match="HTTP 401"):
            await PhoenixdBackend(PhoenixdConfig("http://phoenixd.test:9740", "wrong-" * 5), client).check()


async def test_nwc_check(relay_factory: RelayFactory) -> None:
    async with relay_factory() as relay, _wallet(relay.url, "nip44_v2") as (wallet, backend):
        await backend.check()
        assert wallet.invoices == {}
    async with relay_factory() as relay:
        # a connection no wallet serves (a wrong or revoked URI): nobody listens, and the relay
        # says so at once (NIP-01 mute: an ephemeral request no subscriber could receive)
        nobody = crypto.public_key(crypto.generate_secret()).hex()
        uri = f"nostr+walletconnect://{nobody}?relay={relay.url}&secret={crypto.generate_secret().hex()}"
        stranger = NwcBackend(NwcConfig(uri, request_timeout_seconds=0.5))
        try:
            with pytest.raises(BackendError, match="mute: nobody was listening"):
                await stranger.check()
        finally:
            await stranger.close()
