"""Summaries of py-spy's collapsed stacks (``--format raw``): where the relay's samples go.

Each line is ``frame;frame;...;leaf count`` with frames like ``name (file.py:line)``.
*Own* share counts samples whose leaf is the function (time spent in it, not its callees);
*inclusive* share counts samples with the function anywhere on the stack (once per stack).
Stacks are grouped by role (``threads_percent``): the event loop, or the worker thread
named by its first relay function (verifier, SQLite writer, readers).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _short(frame: str) -> str:
    """``name (path/to/relay/store/sqlite.py:123)`` -> ``relay/store/sqlite.py:name``."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for anchor in ("/relay/", "/lightning/", "/site-packages/", "/lib/python3"):
        if anchor in path:
            path = anchor.strip("/") + "/" + path.split(anchor, 1)[1]
            break
    return f"{path}:{m.group('name')}"


def _role(names: list[str]) -> str:
    """Which of the relay's threads a stack belongs to: the event loop, or a worker thread
    named by the first relay function on its stack (the verifier, the SQLite writer...)."""
    if "runpy" in names[0] or any(n.endswith(":run_forever") for n in names):
        return "event loop (main thread)"
    if names[0].startswith("threading"):
        for n in names:
            if n.startswith(("relay/", "lightning/")):
                return "thread: " + n
        return "thread: " + names[-1]
    # py-spy --nonblocking sometimes reads a stack whose root is cut off; worker threads'
    # roots are always intact in practice, so these are the event loop's coroutines.
    return "event loop (partial stack)"


def summarise_profile(path: Path, top: int = 15, seconds: float = 0.0, rate: int = 0) -> dict[str, Any]:
    """Top functions of a profile. With the sampled ``seconds`` and the sampling ``rate``,
    ``busy_threads`` is the mean number of threads found running (with ``--gil``: the
    fraction of time the GIL was held, 1.0 meaning the relay is GIL-bound)."""
    if not path.is_file():
        return {"error": f"no profile at {path} (is py-spy installed in the venv?)"}
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        names = [_short(f) for f in frames]
        threads[_role(names)] += count
        names = names[1:] or names
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count

    def share(c: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in c.most_common(top)]

    return {
        "file": str(path),
        "samples": total,
        "busy_threads": round(total / (seconds * rate), 2) if seconds and rate else None,
        "threads_percent": share(threads),  # by role
        "own_percent": share(own),
        "inclusive_percent": share(inclusive),
    }
