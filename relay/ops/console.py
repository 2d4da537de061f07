"""The operator console at ``/admin`` (issue 11 item 3): the relay's routes for it and its
own pages (overview, moderation, settings); plug-ins add more (``ConsolePanel``).

Routes (``Console.handle`` answers None for any other path):

- ``GET /admin``: the page, a static shell; ``/admin/console.js``, ``/admin/console.css``
  and ``/admin/favicon.svg`` (``relay/ops/static/``). The script signs in with the operator's
  NIP-07 browser extension and draws each panel from its JSON document
  (``relay.ops.console_blocks``) with DOM calls only;
- ``GET /admin/api/panels``: the tabs, ``[{"name", "title"}, ...]``, the relay's first;
- ``GET /admin/api/panel/<name>?<query>``: one panel's document, its query parameters
  handed to the panel (a search, a period).

Both API routes need a NIP-98 header (kind 27235, ``u`` the relay's public http(s) URL plus
this request target, query included; ``method`` GET; fresh) signed by a pubkey in ``[admin]
pubkeys``: 401 when the header is missing or invalid, 403 for another key. The console's
buttons act through NIP-86 (``POST`` to the relay URL, ``relay.nostr.management``), which checks
the same admins; the console itself changes nothing.

No cookies and no passwords: every request carries its own signature, so there is no session
to steal. Every response forbids other origins, inline script and framing (``CSP``), and is
never cached, so an operator's view does not outlive the tab.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from pydantic import BaseModel, SecretStr

from relay import __version__
from relay.config import Settings
from relay.net.http import HttpRequest, HttpResponse, http_url
from relay.net.throttled_log import ThrottledLog
from relay.nostr import nip98
from relay.nostr.filters import Filter
from relay.nostr.redaction import MASK, is_secret_name, redact_url
from relay.ops import console_blocks as ui
from relay.ops.management_view import ManagementView
from relay.ops.metrics import RelayMetrics
from relay.ops.periodic import run_every
from relay.plugins.hooks import ConsolePanel
from relay.store.base import Store

log = logging.getLogger(__name__)

PREFIX = "/admin"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)
STATIC_FILES = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# A config key whose name has one of these words holds a secret (a wallet's API key, rune or
# macaroon, a connection URI, metrics_token, password); ``*_file``/``*_path`` keys name where a secret is
# kept, not the secret, and stay readable.
SAMPLE_SECONDS = 1.0  # the accepted-events counter is read this often
RATE_WINDOW = 5.0  # events/s is measured over about this many seconds
HISTORY_SECONDS = 600  # the overview's chart spans this
CHART_STEP = 10  # seconds per point of the chart
TOP_LEVEL = "top level"  # the settings panel's name for keys outside any [section]
MAX_QUEUE_ROWS = 200  # reported events listed at once (most reported first)
SNIPPET = 140  # characters of a reported event's content shown


class EventRate:
    """Accepted events per second, from the relay's own counter sampled once a second: the
    overview's figure (over the last few seconds) and its chart (the last ten minutes)."""

    def __init__(self, read: Callable[[], float], clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=int(HISTORY_SECONDS / SAMPLE_SECONDS) + 1)

    def sample(self) -> None:
        self._samples.append((self._clock(), self._read()))

    async def run(self) -> None:
        await run_every(SAMPLE_SECONDS, self._sample_async, log, "sampling the event counter failed")

    async def _sample_async(self) -> None:
        self.sample()

    def current(self) -> tuple[float, float]:
        """(events/s, seconds it was measured over): from the newest sample at least
        ``RATE_WINDOW`` old (else the oldest) to now."""
        now, total = self._clock(), self._read()
        base = None
        for when, count in reversed(self._samples):
            base = (when, count)
            if when <= now - RATE_WINDOW:
                break
        if base is None or now <= base[0]:
            return 0.0, 0.0
        return (total - base[1]) / (now - base[0]), now - base[0]

    def history(self) -> list[tuple[float, float]]:
        """(seconds before now, events/s) every ``CHART_STEP`` seconds, oldest first."""
        if not self._samples:
            return []
        now = self._clock()
        points: list[tuple[float, float]] = []
        newer: tuple[float, float] | None = None
        for when, count in reversed(self._samples):
            if newer is None:
                newer = (when, count)
                continue
            if newer[0] - when >= CHART_STEP - SAMPLE_SECONDS / 2:
                points.append((now - newer[0], (newer[1] - count) / (newer[0] - when)))
                newer = (when, count)
        return points[::-1]


class Console:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        metrics: RelayMetrics,
        management: ManagementView,
        extension_panels: Sequence[ConsolePanel] = (),
        problems: Callable[[], Sequence[str]] = tuple,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._management = management
        self._problems = problems  # the plug-ins' (PluginHooks.problems): a wallet that does not answer
        self._clock = clock
        self._monotonic = monotonic
        self._started = monotonic()
        self._admins = frozenset(settings.admin.pubkeys)
        self._base_url = http_url(settings.relay.public_url)
        self.rate = EventRate(metrics.events_accepted_total, monotonic)
        self.rate.sample()
        self._failures = ThrottledLog(log, per_second=1 / 60, burst=3)
        core = [
            ConsolePanel("overview", "Overview", self._overview),
            ConsolePanel("moderation", "Moderation", self._moderation),
            ConsolePanel("settings", "Settings", self._settings_panel),
        ]
        self.panels: dict[str, ConsolePanel] = {p.name: p for p in core}
        for panel in extension_panels:
            if panel.name in self.panels:
                log.warning("console: a plug-in's panel %r is ignored: the name is taken", panel.name)
                continue
            self.panels[panel.name] = panel
        static = resources.files("relay.ops") / "static"
        self._shell = (static / "console.html").read_bytes()
        self._static = {name: (static / name).read_bytes() for name in STATIC_FILES}

    async def run(self) -> None:
        """Background task (only worth running when someone may sign in): the event-rate samples."""
        await self.rate.run()

    # --- routes ---------------------------------------------------------------------------

    async def handle(self, request: HttpRequest) -> HttpResponse | None:
        path = request.path
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return None
        rest = path[len(PREFIX) :].lstrip("/")
        api = rest.startswith("api/")
        allowed = ("GET",) if api else ("GET", "HEAD")
        if request.method not in allowed:
            answer = _error(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not served here")
            answer.headers.append(("Allow", ", ".join(allowed)))
            return answer
        if rest == "":
            return _answer(HTTPStatus.OK, self._shell, "text/html; charset=utf-8")
        if rest in self._static:
            return _answer(HTTPStatus.OK, self._static[rest], STATIC_FILES[rest])
        if not api:
            return _error(HTTPStatus.NOT_FOUND, "not found")
        refusal = await self._refusal(request)
        if refusal is not None:
            return refusal
        if rest == "api/panels":
            return _json(HTTPStatus.OK, [{"name": p.name, "title": p.title} for p in self.panels.values()])
        if rest.startswith("api/panel/"):
            panel = self.panels.get(rest[len("api/panel/") :])
            if panel is None:
                return _error(HTTPStatus.NOT_FOUND, "no such panel")
            return await self._render(panel, request)
        return _error(HTTPStatus.NOT_FOUND, "not found")

    async def _refusal(self, request: HttpRequest) -> HttpResponse | None:
        """None for a fresh NIP-98 GET of this exact URL signed by an admin, used once; else
        401 (no or a bad signature, or a header used before on any node) or 403 (a good
        signature from a key that is not an admin)."""
        url = self._base_url + request.target
        now = int(self._clock())
        try:
            event = nip98.decode_header(request.headers.get("Authorization") or None)
            problem = nip98.verify(event, url=url, method="GET", now=now)
            if problem is not None:
                raise nip98.Nip98Error(problem)
            signer = event.pubkey
        except nip98.Nip98Error as exc:
            message = f"sign-in refused: {exc}"
            if "u tag" in str(exc):
                # Behind a proxy the page's address must be relay.public_url's: say which.
                message += f" (this relay's public address is {self._base_url}: open {self._base_url}{PREFIX})"
            return _error(HTTPStatus.UNAUTHORIZED, message)
        if signer not in self._admins:
            return _error(
                HTTPStatus.FORBIDDEN,
                f"the key {signer} is not an operator of this relay: add it to [admin] pubkeys and restart",
            )
        if not await self._management.first_use(event, now):
            # A captured header (a proxy's log, a shared screen) must not read the panels again.
            return _error(HTTPStatus.UNAUTHORIZED, "sign-in refused: this Authorization was used already")
        return None

    async def _render(self, panel: ConsolePanel, request: HttpRequest) -> HttpResponse:
        query: dict[str, str] = {}
        for key, value in parse_qsl(urlsplit(request.target).query):
            query.setdefault(key, value)  # a repeated parameter: the first counts
        try:
            body = orjson.dumps(await panel.render(query))
        except Exception as exc:
            # The relay's fault (or a plug-in's), not the operator's: the traceback goes
            # to the log (throttled: the overview asks again every few seconds), not the page.
            self._failures.error("console panel %r failed", panel.name, exc_info=exc)
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, f"the {panel.title} panel failed; see the relay's log")
        return _answer(HTTPStatus.OK, body, "application/json")

    # --- the relay's panels -----------------------------------------------------------------

    async def _overview(self, query: Mapping[str, str]) -> dict[str, Any]:
        rate, span = self.rate.current()
        state = self._management.state
        workers = self._settings.server.workers
        blocks: list[dict[str, Any]] = [ui.text(f"Needs attention: {line}") for line in self._problems()]
        blocks += [
            ui.stats(
                [
                    (f"events/s (last {span:.0f} s)" if span else "events/s", f"{rate:.1f}"),
                    ("accepted since start", f"{int(self._metrics.events_accepted_total()):,}"),
                    ("open connections", f"{self._metrics.open_connections():,}"),
                    ("live subscriptions", f"{self._metrics.live_subscriptions():,}"),
                    ("database size", human_bytes(await self._store.database_bytes())),
                    ("uptime", human_duration(self._monotonic() - self._started)),
                    ("version", __version__),
                ]
            ),
            ui.chart(
                "Accepted events per second, last 10 minutes",
                rate_chart(history := self.rate.history()),
                narrow=rate_chart(history, width=NARROW_CHART),
            ),
            ui.stats(
                [
                    ("banned pubkeys", f"{len(state.banned_pubkeys):,}"),
                    ("banned events", f"{len(state.banned_events):,}"),
                    ("blocked IPs", f"{len(state.blocked_ips):,}"),
                ],
                title="Moderation",
            ),
            ui.text(f"Store: {redact_url(self._settings.storage.url)}. Public URL: {self._settings.relay.public_url}."),
        ]
        if workers > 1:
            blocks.append(ui.text(f"Connections and events are this process's, one of {workers} workers."))
        return ui.document("Overview", blocks, refresh=5)

    async def _moderation(self, query: Mapping[str, str]) -> dict[str, Any]:
        queue = await self._management.moderation_queue()
        shown = queue[:MAX_QUEUE_ROWS]
        reported: dict[str, dict[str, Any]] = {}
        ids = [entry["id"] for entry in shown]
        now = int(self._clock())
        for i in range(0, len(ids), 500):
            for raw in await self._store.query([Filter(ids=frozenset(ids[i : i + 500]))], now):
                event = orjson.loads(raw)
                reported[event["id"]] = event
        rows = []
        for entry in shown:
            event = reported.get(entry["id"], {})
            rows.append(
                [
                    entry["id"],
                    str(event.get("pubkey", "")),
                    snippet(str(event.get("content", ""))),
                    str(entry["count"]),
                    "; ".join(entry["reasons"]),
                ]
            )
        state = self._management.state
        blocks = [
            ui.table(
                "Reported events",
                ["Event", "Author", "Content", "Reporters", "Reasons"],
                rows,
                actions=[
                    ui.action("Ban event", "banevent", 0, reason=True),
                    ui.action("Ban author", "banpubkey", 1, reason=True),
                ],
                empty="No reports waiting: nothing stored here has been reported (NIP-56).",
            ),
        ]
        if len(queue) > len(shown):
            blocks.append(ui.text(f"{len(queue) - len(shown)} more reported events after these."))
        blocks += [
            ui.table(
                "Banned pubkeys",
                ["Pubkey", "Reason"],
                sorted(state.banned_pubkeys.items()),
                actions=[ui.action("Unban", "unbanpubkey", 0)],
                empty="No banned pubkeys.",
            ),
            ui.table(
                "Banned events",
                ["Event", "Reason"],
                sorted(state.banned_events.items()),
                actions=[ui.action("Unban", "unbanevent", 0)],
                empty="No banned events.",
            ),
            ui.table(
                "Blocked IP addresses",
                ["Address", "Reason"],
                sorted(state.blocked_ips.items()),
                actions=[ui.action("Unblock", "unblockip", 0)],
                empty="No blocked addresses.",
            ),
        ]
        return ui.document("Moderation", blocks)

    async def _settings_panel(self, query: Mapping[str, str]) -> dict[str, Any]:
        sections = config_sections(self._settings)
        names = [name for name, _ in sections]
        chosen = query.get("section", "")
        if chosen not in names:
            chosen = ""
        blocks: list[dict[str, Any]] = [
            ui.text(
                "The running configuration, read-only: change the config file or SATSRELAY_* environment "
                f"and restart. Secrets are shown as {MASK}."
            ),
            ui.form(
                [ui.select_field("section", "Section", [("", "all sections"), *((n, f"[{n}]") for n in names)], chosen)]
            ),
        ]
        for name, rows in sections:
            if not chosen or name == chosen:
                blocks.append(ui.table(_title(name), ["Key", "Value"], rows, empty="(no keys)"))
        return ui.document("Settings", blocks)


# --- helpers (pure) -------------------------------------------------------------------------


def _answer(status: HTTPStatus, body: bytes, content_type: str) -> HttpResponse:
    return HttpResponse(status.value, body, [("Content-Type", content_type), *SECURITY_HEADERS])


def _json(status: HTTPStatus, doc: Any) -> HttpResponse:
    return _answer(status, orjson.dumps(doc), "application/json")


def _error(status: HTTPStatus, message: str) -> HttpResponse:
    return _json(status, {"error": message})


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {s} s"
    return f"{s} s"


def snippet(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= SNIPPET else line[: SNIPPET - 1] + "…"


NARROW_CHART = 360  # the overview's chart as a phone shows it (console_blocks ``narrow``)


def rate_chart(points: Sequence[tuple[float, float]], width: int = 600, height: int = 180) -> str:
    """An SVG line chart of (seconds ago, events/s), newest at the right; numbers only."""
    left, right, top, bottom = 48, 8, 12, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((rate for _, rate in points), default=0.0)
    scale = _nice_ceiling(peak)

    def x(ago: float) -> float:
        return left + plot_w * (1 - min(ago, HISTORY_SECONDS) / HISTORY_SECONDS)

    def y(rate: float) -> float:
        return top + plot_h * (1 - rate / scale)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif">',
        "<title>Accepted events per second</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#9aa3ad"/>',
        f'<line x1="{left}" y1="{top}" x2="{width - right}" y2="{top}" stroke="#e3e7eb"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" font-size="13" fill="#4a5560">{_figure(scale)}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" font-size="13" fill="#4a5560">0</text>',
        f'<text x="{left}" y="{height - 6}" font-size="13" fill="#4a5560">10 min ago</text>',
        f'<text x="{width - right}" y="{height - 6}" text-anchor="end" font-size="13" fill="#4a5560">now</text>',
    ]
    if len(points) >= 2:
        line = " ".join(f"{x(ago):.1f},{y(rate):.1f}" for ago, rate in points)
        first, last = x(points[0][0]), x(points[-1][0])
        base = top + plot_h
        area = f"{first:.1f},{base} {line} {last:.1f},{base}"
        parts.append(f'<polygon points="{area}" fill="#f7931a" fill-opacity="0.18"/>')
        parts.append(f'<polyline points="{line}" fill="none" stroke="#f7931a" stroke-width="2"/>')
    else:
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" font-size="14" '
            f'fill="#4a5560">{escape("collecting samples (one point every 10 s)")}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _nice_ceiling(value: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten, at least ``value`` (at least 1)."""
    step = 1.0
    while step < value:
        for factor in (2, 2.5, 2):  # 1 -> 2 -> 5 -> 10
            step *= factor
            if step >= value:
                break
    return step


def _figure(value: float) -> str:
    return f"{value:g}"


def shown_value(name: str, value: Any) -> Any:
    """A config value as the console may show it (JSON-able): secrets masked unless empty."""
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if isinstance(value, BaseModel):
        return {key: shown_value(key, getattr(value, key)) for key in type(value).model_fields}
    if isinstance(value, Mapping):
        return {str(k): shown_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [shown_value(name, v) for v in value]
    if is_secret_name(name) and value not in (None, ""):
        return MASK
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def _title(section: str) -> str:
    return "Top-level keys" if section == TOP_LEVEL else f"[{section}]"


def _cell(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, str):
        return value if value else "(empty)"
    return orjson.dumps(value).decode()


def config_sections(settings: BaseModel) -> list[tuple[str, list[list[str]]]]:
    """Every section of the running config, plug-ins' included (``[payments]`` is a field
    of the Settings model built at start-up), as (dotted name, [[key, shown value], ...]);
    nested tables (``[payments.lnbits]``) are sections of their own, after their parent."""
    out: list[tuple[str, list[list[str]]]] = []
    top: list[list[str]] = []
    for key in type(settings).model_fields:
        value = getattr(settings, key)
        if isinstance(value, BaseModel):
            out.extend(_section(key, value))
        else:
            top.append([key, _cell(shown_value(key, value))])
    return ([(TOP_LEVEL, top)] if top else []) + out


def _section(name: str, model: BaseModel) -> Iterable[tuple[str, list[list[str]]]]:
    rows: list[list[str]] = []
    nested: list[tuple[str, BaseModel]] = []
    for key in type(model).model_fields:
        value = getattr(model, key)
        if isinstance(value, BaseModel):
            nested.append((f"{name}.{key}", value))
        else:
            rows.append([key, _cell(shown_value(key, value))])
    yield name, rows
    for child, value in nested:
        yield from _section(child, value)
