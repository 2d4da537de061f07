"""The test LNbits (tests/lnbits_server.py) keeps to its temp folder: running the tests from
a checkout must not write into the operator's ``./data`` (the relay's own data lives there
under ``make run``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.lnbits_server import LnbitsServer, lnbits_python


def test_starting_the_test_lnbits_writes_nothing_into_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not lnbits_python().exists():
        pytest.skip(f"no LNbits interpreter at {lnbits_python()}: run `make test-deps`")
    monkeypatch.chdir(tmp_path)
    server = LnbitsServer.start()
    try:
        assert server.wallet_a.inkey
    finally:
        server.stop()
    assert sorted(os.listdir(tmp_path)) == []
