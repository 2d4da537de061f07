"""The independent Node implementations the interop tests drive (nostr-tools, ws), in one
npm folder, ``tests/node``: ``make test-deps`` installs it with ``npm ci``; a test run
outside make installs it on first use. Tests that need it skip with the reason when Node
is missing (and ``.ci/run`` turns any skip into a failure)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent / "node"


def ensure_installed() -> str | None:
    """None when the Node tools are usable, else why not (the caller skips)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "Node.js/npm not installed"
    if not (NODE_DIR / "node_modules" / "nostr-tools" / "package.json").is_file():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            return f"npm ci failed in {NODE_DIR}: {done.stderr[-300:]}"
    return None


async def run_script(script: str, command: dict[str, Any]) -> dict[str, Any]:
    """Run ``tests/node/<script>`` with one JSON command on stdin; its one JSON answer."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / script),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(command).encode()), 60)
    assert proc.returncode == 0, err.decode()
    answer: dict[str, Any] = json.loads(out)
    return answer
