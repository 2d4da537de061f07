"""The import graph keeps the architecture (issue 18): read from the source, every import
counted (module level, ``TYPE_CHECKING`` blocks and function bodies alike).

- relay/ never imports a plug-in package (lightning/, wot/): the core names no plug-in;
- no import cycle among relay's modules;
- the Nostr rules (pure: events, filters, messages, policies, NIP-98, negentropy, search,
  limits, redaction, the hook types) import no I/O library and only each other;
- every import points down the layers (nostr, net, store, plugins, ops, session, the
  application); settings (``relay.config``) are values the store and everything above may read.
"""

from __future__ import annotations

import ast
from pathlib import Path

RELAY = Path(__file__).resolve().parent.parent / "relay"
PLUGIN_PACKAGES = ("lightning", "wot")
IO_LIBRARIES = ("asyncio", "aiosqlite", "asyncpg", "sqlite3", "socket", "websockets", "httpx", "h11", "subprocess")

# The layers, bottom up: each package may import its own layer and the ones below, never above.
LAYERS = ("relay.nostr", "relay.net", "relay.store", "relay.plugins", "relay.ops", "relay.session", "relay")
# Settings are values every layer from the store up is opened with; they import only discovery.
SETTINGS = {"relay.config", "relay.discovery"}
# Pure values (no sockets, files, clocks or databases): the Nostr rules, and the HTTP and
# console-block value types that live beside the shell and the console that use them.
PURE_OUTSIDE_NOSTR = {"relay.net.http", "relay.ops.console_blocks"}


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
PURE = {n for n in MODULES if n.startswith("relay.nostr")} | PURE_OUTSIDE_NOSTR


def layer(name: str) -> int:
    """The index in LAYERS of the package holding ``name`` (top-level modules: the application)."""
    if name in LAYERS:
        return LAYERS.index(name)
    package = name.rsplit(".", 1)[0] if name.count(".") > 1 else "relay"
    return LAYERS.index(package)


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


def test_every_import_points_down_the_layers() -> None:
    upward = {
        name: sorted(m for m in GRAPH[name] if layer(m) > layer(name) and not (m in SETTINGS and layer(name) >= 2))
        for name in GRAPH
    }
    assert {k: v for k, v in upward.items() if v} == {}


def test_the_layers_are_the_packages() -> None:
    """Every module of relay/ sits in one of the layer packages (or is the application)."""
    assert {LAYERS[layer(name)] for name in MODULES} == set(LAYERS)
