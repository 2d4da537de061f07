"""ThrottledLog: the bound on log lines clients can cause (issue 8, "Also")."""

from __future__ import annotations

import logging

import pytest

from relay.net.throttled_log import ThrottledLog


def test_lines_past_the_burst_are_counted_and_reported_by_the_next_line(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    quiet = ThrottledLog(logging.getLogger("test.throttled"), per_second=1.0, burst=3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        written = [quiet.warning("bad input from %s", f"client {i}") for i in range(1000)]
        assert written.count(True) == 3
        now[0] = 2.5  # two tokens back
        assert quiet.warning("bad input from %s", "later")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "bad input from client 0",
        "bad input from client 1",
        "bad input from client 2",
        "bad input from later (997 similar lines suppressed)",
    ]
    assert all(r.exc_info is None and r.levelno == logging.WARNING for r in caplog.records)


def test_error_keeps_the_traceback_of_a_server_fault(caplog: pytest.LogCaptureFixture) -> None:
    faults = ThrottledLog(logging.getLogger("test.throttled.faults"), per_second=0.2, burst=1, clock=lambda: 0.0)
    try:
        raise ConnectionError("database is down")
    except ConnectionError as exc:
        with caplog.at_level(logging.ERROR, logger="test.throttled.faults"):
            assert faults.error("query failed", exc_info=exc)
            assert not faults.error("query failed", exc_info=exc)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.exc_info[1] is not None and "database is down" in str(record.exc_info[1])
