"""Backups as the production section runs them: the copy is private (0600 whatever the
umask), and ``satsrelay backup`` says where the relay's key is, which the copy leaves out."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.config import load_settings
from relay.store.identity import key_file_path, load_identity
from tests.nostr_client import signed
from tests.test_cli import config_for, jsonl, satsrelay


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The umask most shells have (022): files are world-readable unless made otherwise."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_backup_and_restore_write_files_only_their_owner_can_read(
    tmp_path: Path, alice: bytes, open_umask: None
) -> None:
    cfg = config_for(tmp_path, "a")
    assert satsrelay("import", "--config", str(cfg), stdin=jsonl([signed(alice, 1, "x").to_dict()])).returncode == 0
    target = tmp_path / "backups" / "relay.db"
    target.parent.mkdir()
    result = satsrelay("backup", "--config", str(cfg), str(target))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["relay.db"]

    restored = config_for(tmp_path, "b")
    result = satsrelay("restore", "--config", str(restored), str(target))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "b.db").stat().st_mode) == 0o600


def test_backup_says_where_the_relay_key_is(tmp_path: Path, alice: bytes) -> None:
    cfg = config_for(tmp_path, "a")
    assert satsrelay("import", "--config", str(cfg), stdin=jsonl([signed(alice, 1, "x").to_dict()])).returncode == 0
    settings = load_settings(cfg)
    result = satsrelay("backup", "--config", str(cfg), str(tmp_path / "before-first-start.db"))
    out = result.stdout.decode()
    assert result.returncode == 0 and f"key file {key_file_path(settings)} does not exist yet" in out, out

    load_identity(settings)  # what the relay's first start does
    result = satsrelay("backup", "--config", str(cfg), str(tmp_path / "copy.db"))
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr
    assert f"The relay's key is not in this backup: it is {key_file_path(settings).resolve()};" in out, out
    assert "NIP-11 self" in out and "sealed wallet connections" in out

    with_secret = tmp_path / "secret.toml"
    with_secret.write_text(cfg.read_text() + '[relay]\nsecret_key = "' + "11" * 32 + '"\n')
    result = satsrelay("backup", "--config", str(with_secret), str(tmp_path / "copy2.db"))
    out = result.stdout.decode()
    assert "it is [relay] secret_key" in out and "11" * 32 not in out, out
