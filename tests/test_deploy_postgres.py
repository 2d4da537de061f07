"""The README's PostgreSQL set-up, run: a role that owns its own database (``createuser``,
``createdb -O``; no superuser), reached over the local socket the way deploy/relay.toml's
commented URL does, is all the relay needs; it creates its schema at the first start and
runs migrations at every start, keeping what is stored."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import RelayProcess
from tests.nostr_client import NostrClient, signed

SOCKET_DIR = Path("/var/run/postgresql")

pytestmark = pytest.mark.postgres


@pytest.fixture
def own_database() -> Iterator[str]:
    """A new role and a database it owns, made with the README's two commands (as the
    postgres superuser: ``sudo -u postgres`` there, ``-U postgres`` here); dropped after."""
    if not os.environ.get("SATSRELAY_TEST_POSTGRES"):
        pytest.skip("SATSRELAY_TEST_POSTGRES is unset (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    if not (shutil.which("createuser") and (SOCKET_DIR / ".s.PGSQL.5432").exists()):
        pytest.skip("needs PostgreSQL on this machine (its socket in /var/run/postgresql) and its client tools")
    name = f"satsrelay_{uuid.uuid4().hex[:12]}"
    admin = ["-h", str(SOCKET_DIR), "-U", "postgres"]
    subprocess.run(["createuser", *admin, name], check=True, timeout=30)
    try:
        subprocess.run(["createdb", *admin, "-O", name, name], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["dropdb", *admin, "--if-exists", name], timeout=30)
        subprocess.run(["dropuser", *admin, "--if-exists", name], timeout=30)


async def test_a_role_owning_its_database_is_all_the_relay_needs(
    own_database: str, relay_process: Callable[..., RelayProcess], alice: bytes
) -> None:
    url = f"postgresql://{own_database}@/{own_database}?host={SOCKET_DIR}"
    relay = relay_process(storage_url=url)
    note = signed(alice, 1, "stored in the relay's own database")
    async with NostrClient(relay.url) as client:
        ok, message = await client.publish(note)
        assert ok, message
    assert relay.terminate() == 0
    relay.start()  # the migrations run again at start: nothing to do, nothing lost
    async with NostrClient(relay.url) as client:
        assert [e["id"] for e in await client.req("r", {"kinds": [1]})] == [note.id]
    assert "Traceback" not in relay.stderr_text()
