"""The import graph keeps the architecture (issue 18): read from the source, every import
counted (module level, ``TYPE_CHECKING`` blocks and function bodies alike).

- relay/ never imports a plug-in package (lightning/, wot/): the core names no plug-in;
- no import cycle among relay's modules;
- the Nostr rules (pure: events, filters, messages, policies, NIP-98, negentropy, search,
  limits, redaction, the hook types) import no I/O library and only each other;
- the event store imports nothing of the sessions, operations or plug-in seams above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

RELAY = Path(__file__).resolve().parent.parent / "relay"
PLUGIN_PACKAGES = ("lightning", "wot")
IO_LIBRARIES = ("asyncio", "aiosqlite", "asyncpg", "sqlite3", "socket", "websockets", "httpx", "h11", "subprocess")

# Layer 1: Nostr rules and other pure values (no sockets, files, clocks or databases).
PURE = {
    "relay.errors", "relay.event", "relay.crypto", "relay.filters", "relay.messages", "relay.negentropy",
    "relay.search", "relay.nip98", "relay.policy", "relay.redaction", "relay.console_blocks",
    "relay.management", "relay.http",
}
# What the event store (layer 4) may import besides itself and the pure layer: the settings
# types it is opened with, and the fan-out seam its PostgreSQL transport implements.
STORE_MAY_IMPORT = {"relay.config", "relay.broadcast", "relay.throttled_log", "relay.limits", "relay.shared_limits"}


def module_name(path: Path) -> str:
    parts = path.relative_to(RELAY.parent).with_suffix("").parts
    name = ".".join(parts)
    return name.removesuffix(".__init__")


MODULES = {module_name(p): p for p in RELAY.rglob("*.py")}


def imported(path: Path) -> set[str]:
    """Every absolute import of ``path``, as top-level names and relay module names."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


def relay_imports(path: Path, own: str) -> set[str]:
    return {m for m in imported(path) if m in MODULES and m not in (own, "relay")}


GRAPH = {name: relay_imports(path, name) for name, path in MODULES.items()}


def test_the_core_names_no_plugin_package() -> None:
    offenders = {
        name: sorted(m for m in imported(path) if m.split(".")[0] in PLUGIN_PACKAGES)
        for name, path in MODULES.items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_cycle() -> None:
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(GRAPH[node]):
            if seen.get(nxt) == 1:
                cycle = [*path[path.index(nxt):], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for name in sorted(GRAPH):
        if name not in seen:
            visit(name, [name])


def test_the_pure_layer_does_no_io_and_imports_only_itself() -> None:
    for name in sorted(PURE):
        path = MODULES[name]
        io = sorted(m for m in imported(path) if m.split(".")[0] in IO_LIBRARIES)
        assert io == [], f"{name} imports I/O: {io}"
        upward = sorted(GRAPH[name] - PURE)
        assert upward == [], f"{name} (pure) imports {upward}"


def test_the_event_store_imports_nothing_above_it() -> None:
    for name in sorted(n for n in GRAPH if n.startswith("relay.store")):
        upward = sorted(m for m in GRAPH[name] if not m.startswith("relay.store") and m not in PURE | STORE_MAY_IMPORT)
        assert upward == [], f"{name} imports {upward}"
