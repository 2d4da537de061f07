"""Summaries of py-spy's collapsed stacks (``--format raw``): where the relay's samples go.

Each line is ``frame;frame;...;leaf count`` with frames like ``name (file.py:line)``.
*Own* share counts samples whose leaf is the function (time spent in it, not its callees);
*inclusive* share counts samples with the function anywhere on the stack (once per stack).
Threads are not separated: py-spy names the thread in the first frame, which we keep as
``thread`` so the event loop and the verifier/writer threads can be told apart.
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


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
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
        threads[frames[0]] += count
        names = [_short(f) for f in frames[1:]] or [frames[0]]
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count

    def share(c: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in c.most_common(top)]

    return {
        "file": str(path),
        "samples": total,
        "threads_percent": share(threads),
        "own_percent": share(own),
        "inclusive_percent": share(inclusive),
    }
