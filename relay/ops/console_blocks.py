"""The operator console's page language: what a panel returns, what console.js draws.

A panel (``relay.plugins.hooks.ConsolePanel``: the relay's own overview, moderation and
settings, and each plug-in's own pages) answers a JSON document;
the browser script renders it with DOM calls (``textContent``, never ``innerHTML``), so
nothing a client wrote (a report's reason, a plan name, a relay description) can become
markup. The script knows these block types and nothing about payments or moderation, so an
extension adds pages without touching it.

Document: ``{"title": str, "refresh": seconds (0: never), "blocks": [block, ...]}``.

Blocks:
- ``stats``: labelled figures in a row of tiles.
- ``chart``: a complete SVG document drawn on the server (``svg``), shown through an
  ``<img>`` from a blob URL: an image cannot run script, whatever the SVG holds. With
  ``narrow`` (the same chart drawn about 360 units wide) a screen under 640 px shows that
  one instead, so its labels keep a readable size (a ``<picture>`` source).
- ``table``: ``columns`` and ``rows`` of strings, and row ``actions``: a button per row that
  calls NIP-86 ``method`` with ``[row[column]]`` (plus the operator's reason, typed next to
  the button, when ``reason`` is true, then ``options``, an object, when given), then shows
  the result's ``summary`` (or "done") and redraws the panel. An action with ``confirm``
  asks that question (and names the row's cell) before it acts.
- ``form``: fields whose values reload the panel as query parameters (search a pubkey, pick
  a period).
- ``text``: a line of plain text.
- ``pager``: "Previous" and "Next" buttons under a long list, each reloading the panel with
  its query (``previous``/``next``, null at either end), and a ``label`` saying which rows
  are shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def document(title: str, blocks: Sequence[dict[str, Any]], *, refresh: int = 0) -> dict[str, Any]:
    return {"title": title, "refresh": refresh, "blocks": list(blocks)}


def stats(items: Sequence[tuple[str, str]], title: str = "") -> dict[str, Any]:
    return {"type": "stats", "title": title, "items": [{"label": k, "value": v} for k, v in items]}


def chart(title: str, svg: str, narrow: str = "") -> dict[str, Any]:
    doc = {"type": "chart", "title": title, "svg": svg}
    if narrow:
        doc["narrow"] = narrow
    return doc


def pager(label: str, previous: dict[str, str] | None, following: dict[str, str] | None) -> dict[str, Any]:
    """Paging of a list: the queries of the previous and next pages (None at an end)."""
    return {"type": "pager", "label": label, "previous": previous, "next": following}


def action(
    label: str,
    method: str,
    column: int,
    *,
    reason: bool = False,
    options: dict[str, Any] | None = None,
    confirm: str = "",
) -> dict[str, Any]:
    """A per-row button: NIP-86 ``method`` with ``[row[column]]`` (+ the typed reason, +
    ``options``); with ``confirm``, the browser asks that first (destructive actions ask
    once before acting)."""
    doc: dict[str, Any] = {"label": label, "method": method, "column": column, "reason": reason}
    if options is not None:
        doc["options"] = dict(options)
    if confirm:
        doc["confirm"] = confirm
    return doc


def table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    actions: Sequence[dict[str, Any]] = (),
    empty: str = "nothing here",
) -> dict[str, Any]:
    return {
        "type": "table",
        "title": title,
        "columns": list(columns),
        "rows": [[str(cell) for cell in row] for row in rows],
        "actions": list(actions),
        "empty": empty,
    }


def text_field(name: str, label: str, value: str = "", placeholder: str = "") -> dict[str, Any]:
    return {"name": name, "label": label, "kind": "text", "value": value, "placeholder": placeholder}


def select_field(name: str, label: str, options: Sequence[tuple[str, str]], value: str) -> dict[str, Any]:
    return {"name": name, "label": label, "kind": "select", "value": value, "options": [list(o) for o in options]}


def form(fields: Sequence[dict[str, Any]], submit: str = "Show") -> dict[str, Any]:
    return {"type": "form", "fields": list(fields), "submit": submit}


def text(line: str) -> dict[str, Any]:
    return {"type": "text", "text": line}
