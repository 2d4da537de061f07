"""Log lines as journald reads them when the relay runs under systemd (deploy/satsrelay.service).

journald gives every line a service writes to stderr the priority "info" unless the line
starts with a ``<N>`` syslog prefix (systemd's ``SyslogLevelPrefix=``, on by default): without
one, ``journalctl -p warning`` shows none of the relay's warnings (a wallet that does not
answer, a database outage). journald also stamps every line with its own time, so the
relay's timestamp would appear twice. systemd names the stream it connected in
``$JOURNAL_STREAM`` (``<device>:<inode>``); a child's stderr that is still that stream is
the journal, anything else (a terminal, a file, a pipe) keeps the plain format.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import IO

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# sd-daemon(3): the kernel's log levels, which journald maps to its priorities
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """The syslog priority for a logging level (DEBUG and below: 7)."""
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return 7


def writes_to_journal(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """Whether ``stream`` is the journal stream systemd connected (not merely inherited
    $JOURNAL_STREAM by a process whose stderr was redirected since)."""
    expected = environ.get("JOURNAL_STREAM", "")
    device, _, inode = expected.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor (a test's StringIO) or a closed one
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


class JournalFormatter(logging.Formatter):
    """``<N>LEVEL name: message``: the priority for journald, no timestamp (it adds its own).
    Each line of a multi-line record (a traceback) carries the prefix, or journald would file
    its continuation lines as info."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def formatter_for(stream: IO[str], environ: Mapping[str, str]) -> logging.Formatter:
    return JournalFormatter() if writes_to_journal(stream, environ) else logging.Formatter(PLAIN_FORMAT)
