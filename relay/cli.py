"""``satsrelay`` command line: serve, import, export, and the operator commands.

import/export speak the JSONL format strfry and nostr-rs-relay use (one event object per
line), so data moves between relays.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import select
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import orjson

from relay.config import ConfigError, Settings, load_settings, public_url_mismatch, resolve_workers
from relay.discovery import PluginError, discover_plugins
from relay.journal import formatter_for
from relay.nostr.errors import Invalid, Rejection
from relay.nostr.event import Event, KindClass, parse_event, verify_signature
from relay.nostr.filters import Filter, parse_filter
from relay.nostr.management import ManagementState
from relay.nostr.policy import ReadScope
from relay.store import open_store
from relay.store.base import Store, StoreUnavailable, WriteOutcome, WriteRequest

log = logging.getLogger("satsrelay")

IMPORT_BATCH = 2000
EXPORT_PAGE = 5000


def _settings(args: argparse.Namespace) -> Settings:
    server: dict[str, object] = {}
    if getattr(args, "host", None):
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        server["port"] = args.port
    if getattr(args, "workers", None) is not None:
        server["workers"] = resolve_workers(args.workers)
    settings = load_settings(args.config)
    if server:
        merged = settings.server.model_copy(update=server)
        settings = load_settings(args.config, server=merged.model_dump())
    return settings


def _setup_logging(level: str) -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(sys.stderr, os.environ))  # under systemd: priorities for journald
    logging.basicConfig(level=numeric, handlers=[handler])
    # websockets logs every connection opened and closed at INFO: a line per client is noise
    # on a busy relay (ours are: start-up, dropped slow client, rejected connection).
    logging.getLogger("websockets").setLevel(max(numeric, logging.WARNING))
    # httpx logs every request at INFO: one line per wallet poll. Shown only when debugging.
    quiet = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)


# --- serve -----------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _setup_logging(settings.log_level)
    mismatch = public_url_mismatch(settings)
    if mismatch:
        log.warning("%s", mismatch)
    if args.writer_fd is not None:  # the SQLite writer process of --workers (relay.workers)
        from relay.workers import serve_writer

        return _run_async(serve_writer(settings, socket.socket(fileno=args.writer_fd)))
    if settings.server.workers > 1:
        from relay.workers import run_workers

        return run_workers(settings, args.config)
    from relay.app import build_relay
    from relay.net.listen import ListenError
    from relay.session.server import run

    # --workers' supervisor hands each worker the metrics socket it bound once (relay.workers)
    metrics_sock = socket.socket(fileno=args.metrics_fd) if args.metrics_fd is not None else None

    async def serve() -> None:
        await run(build_relay(settings, writer_address=args.writer_address), metrics_sock)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            _event_loop_runner()(serve())
    except ListenError as exc:
        return _fail(str(exc))
    return 0


def _run_async(main: Coroutine[Any, Any, None]) -> int:
    """Run a process's loop (a store it cannot open: ``main`` says so in one line)."""
    with contextlib.suppress(KeyboardInterrupt):
        _event_loop_runner()(main)
    return 0


def _fail(message: str, code: int = 1) -> int:
    """An operator's mistake: one line naming it, a non-zero exit."""
    print(f"satsrelay: {message}", file=sys.stderr)
    return code


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop where it is installed (Linux/macOS): its socket writes and callbacks are
    cheaper than asyncio's (bench: 1,000-subscriber fan-out loop 38 -> 26 ms, ingest +16%)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def _workers_count(value: str) -> int | str:
    """``--workers``: a number, or "auto" (``relay.config.ServerSettings`` resolves it)."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a number or "auto", not {value!r}') from None


# --- import ----------------------------------------------------------------------------

def _read_lines(source: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based line numbers (for ``--rejects``)."""
    for number, line in enumerate(source, start=1):
        line = line.strip()
        if line:
            yield number, line


Rejects = Callable[[int, bytes, str], None]

_OUTCOME_REASONS = {
    WriteOutcome.SUPERSEDED: "superseded: a newer version of this replaceable event is stored",
    WriteOutcome.DELETED: "deleted: a stored NIP-09 deletion names this event",
}


async def import_events(
    store: Store,
    lines: Iterator[tuple[int, bytes]],
    progress: IO[str] | None = None,
    on_reject: Rejects | None = None,
) -> dict[str, int]:
    """Verify and bulk-insert events; return counts by outcome. Ephemeral events are
    not stored (NIP-01), so they count as rejected. ``on_reject(line_number, line, reason)``
    hears about every refused line."""
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
    started = time.monotonic()
    last_report = started
    seen = 0

    def reject(number: int, line: bytes, reason: str) -> None:
        counts["rejected"] += 1
        if on_reject is not None:
            on_reject(number, line, reason)

    with ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 1))) as pool:
        loop = asyncio.get_running_loop()
        batch: list[tuple[int, bytes, Event]] = []

        async def flush() -> None:
            events = [e for _, _, e in batch]
            verified = await asyncio.gather(
                *(loop.run_in_executor(pool, _verify_chunk, events[i:i + 256]) for i in range(0, len(events), 256))
            )
            ok = [flag for chunk in verified for flag in chunk]
            good = [item for item, flag in zip(batch, ok, strict=True) if flag]
            for (number, line, _), flag in zip(batch, ok, strict=True):
                if not flag:
                    reject(number, line, "invalid: bad signature")
            outcomes = await store.write_batch([WriteRequest(e) for _, _, e in good], int(time.time()))
            for (number, line, _), outcome in zip(good, outcomes, strict=True):
                if outcome is WriteOutcome.STORED:
                    counts["accepted"] += 1
                elif outcome is WriteOutcome.DUPLICATE:
                    counts["duplicate"] += 1
                elif isinstance(outcome, WriteOutcome):
                    reject(number, line, _OUTCOME_REASONS.get(outcome, outcome.value))
                else:  # a plug-in's write hook refused it (an import attaches nothing, so none does)
                    reject(number, line, str(outcome))
            batch.clear()

        for number, line in lines:
            seen += 1
            try:
                event = parse_event(orjson.loads(line))
            except orjson.JSONDecodeError:
                reject(number, line, "invalid: not a JSON object")
                continue
            except Invalid as exc:
                reject(number, line, str(exc))
                continue
            if event.kind_class is KindClass.EPHEMERAL:
                reject(number, line, "invalid: ephemeral events are never stored (NIP-01)")
                continue
            batch.append((number, line, event))
            if len(batch) >= IMPORT_BATCH:
                await flush()
            now = time.monotonic()
            if progress is not None and now - last_report >= 2:
                last_report = now
                rate = seen / (now - started)
                print(f"... {seen} lines read, {counts['accepted']} stored ({rate:.0f}/s)", file=progress)
        if batch:
            await flush()
    return counts


def _verify_chunk(events: list[Event]) -> list[bool]:
    return [verify_signature(e) for e in events]


def cmd_import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _setup_logging(settings.log_level)

    async def main(source: IO[bytes], on_reject: Rejects | None) -> dict[str, int]:
        store = open_store(settings.storage, search_kinds=settings.search.indexed_kinds())
        await store.open()
        try:
            return await import_events(store, _read_lines(source), sys.stderr, on_reject)
        finally:
            await store.close()

    with contextlib.ExitStack() as stack:
        try:
            source = sys.stdin.buffer if args.file in (None, "-") else stack.enter_context(open(args.file, "rb"))
        except OSError as exc:
            return _fail(f"cannot read {args.file}: {exc.strerror or exc}")
        on_reject: Rejects | None = None
        if args.rejects:
            try:
                rejects_out = stack.enter_context(open(args.rejects, "wb"))
            except OSError as exc:
                return _fail(f"cannot write {args.rejects}: {exc.strerror or exc}")

            def on_reject(number: int, line: bytes, reason: str) -> None:
                # One JSON object per refused line: where, why, and the line itself to fix.
                text = line.decode("utf-8", "replace")
                rejects_out.write(orjson.dumps({"line": number, "reason": reason, "text": text}) + b"\n")

        counts = asyncio.run(main(source, on_reject))
    print(f"imported: {counts['accepted']} accepted, {counts['duplicate']} duplicate, {counts['rejected']} rejected")
    if counts["rejected"] and not args.rejects:
        print("satsrelay: rerun with --rejects FILE to list the refused lines and why", file=sys.stderr)
    return 0


# --- export ----------------------------------------------------------------------------

async def export_events(
    store: Store, base: Filter, out: IO[bytes], limit: int | None = None, scope: ReadScope | None = None
) -> int:
    """Write every matching event (at most ``limit``), newest first, paging by ``until``.
    When more events share one second than a page holds, that second is fetched whole.
    ``scope``: only what it lets through (the CLI passes the NIP-86 bans unless
    ``--include-banned``), cut inside the store's query like a REQ's."""
    written = 0
    if limit == 0:
        return 0
    until = base.until
    seen_at_until: set[bytes] = set()

    def emit(rows: list[bytes]) -> bool:
        """Write rows up to the limit; False once the limit is reached."""
        nonlocal written
        if limit is not None:
            rows = rows[: limit - written]
        for raw in rows:
            out.write(raw + b"\n")
        written += len(rows)
        return limit is None or written < limit

    while True:
        page = EXPORT_PAGE if limit is None else min(EXPORT_PAGE, limit)
        page_filter = Filter(base.ids, base.authors, base.kinds, base.tags, base.since, until, page)
        rows = await store.query([page_filter], int(time.time()), scope)
        fresh = [r for r in rows if r[7:71] not in seen_at_until]
        if not fresh:
            if len(rows) < page or until is None:
                return written
            whole = Filter(base.ids, base.authors, base.kinds, base.tags, until, until, None)
            fresh = [r for r in await store.query([whole], int(time.time()), scope) if r[7:71] not in seen_at_until]
            if not emit(fresh):
                return written
            until -= 1
            seen_at_until = set()
            continue
        if not emit(fresh) or len(rows) < page:
            return written
        last_ts = int(orjson.loads(rows[-1])["created_at"])
        if last_ts != until:
            seen_at_until = set()
        until = last_ts
        seen_at_until.update(r[7:71] for r in rows if orjson.loads(r)["created_at"] == last_ts)


def cmd_export(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _setup_logging(settings.log_level)
    try:
        base = parse_filter(orjson.loads(args.filter), max_limit=2**62) if args.filter else Filter()
    except orjson.JSONDecodeError as exc:
        return _fail(f"bad --filter: not JSON ({exc})", 2)
    except Rejection as exc:
        return _fail(f"bad --filter: {exc}", 2)
    limit = base.limit
    base = Filter(base.ids, base.authors, base.kinds, base.tags, base.since, base.until, None)

    async def main(out: IO[bytes]) -> int:
        store = open_store(settings.storage, search_kinds=settings.search.indexed_kinds())
        await store.open()
        try:
            scope = None
            if not args.include_banned:
                scope = ManagementState.from_rows(await store.list_management()).ban_scope()
            return await export_events(store, base, out, limit, scope)
        finally:
            await store.close()

    with contextlib.ExitStack() as stack:
        try:
            out = sys.stdout.buffer if args.file in (None, "-") else stack.enter_context(open(args.file, "wb"))
        except OSError as exc:
            return _fail(f"cannot write {args.file}: {exc.strerror or exc}")
        n = asyncio.run(main(out))  # `export | head`: main() handles the broken pipe
        out.flush()
    print(f"exported {n} events", file=sys.stderr)
    return 0


# --- sync ------------------------------------------------------------------------------

def cmd_sync(args: argparse.Namespace) -> int:
    """Reconcile the local store with another relay (``relay.ops.peer_sync``)."""
    from relay.ops.peer_sync import SyncError, sync_with_peer

    settings = _settings(args)
    _setup_logging(settings.log_level)
    if not args.url.startswith(("ws://", "wss://")):
        print(f"satsrelay sync: {args.url!r} is not a ws:// or wss:// URL", file=sys.stderr)
        return 2
    try:
        base = parse_filter(orjson.loads(args.filter), max_limit=2**62) if args.filter else Filter()
    except (Invalid, orjson.JSONDecodeError) as exc:
        print(f"bad --filter: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        store = open_store(settings.storage, search_kinds=settings.search.indexed_kinds())
        await store.open()
        try:
            counts = await sync_with_peer(
                store,
                args.url,
                base,
                args.direction,
                sys.stderr,
                force_req=args.no_negentropy,
                include_banned=args.include_banned,
            )
        except SyncError as exc:
            print(f"satsrelay sync: {exc}", file=sys.stderr)
            return 1
        finally:
            await store.close()
        print(counts.line())
        return 0

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main())
    print("satsrelay sync: interrupted; run it again to continue", file=sys.stderr)
    return 130


# --- backup / restore ------------------------------------------------------------------

def _sqlite_db(settings: Settings, command: str) -> Path | None:
    """The SQLite file the settings name, or None (after saying why) for PostgreSQL."""
    url = settings.storage.url
    if not url.startswith("sqlite:"):
        _fail(
            f"{command} works on the SQLite store; for PostgreSQL use pg_dump / pg_restore "
            "(README: Backups)"
        )
        return None
    from relay.store.sqlite_schema import sqlite_path_from_url

    return sqlite_path_from_url(url)


def cmd_backup(args: argparse.Namespace) -> int:
    from relay.store.backup import BackupError, backup

    settings = _settings(args)
    db = _sqlite_db(settings, "backup")
    if db is None:
        return 1
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1 or done == total:
            last[0] = now
            print(f"backup: {100 * done // max(total, 1)}% ({done:,} of {total:,} pages)", file=sys.stderr)

    try:
        result = backup(db, args.file, progress)
    except BackupError as exc:
        return _fail(str(exc))
    print(
        f"backed up {db} to {args.file}: {result.events:,} events, "
        f"{result.bytes / 2**20:.1f} MiB in {result.seconds:.1f} s"
    )
    from relay.store.identity import key_backup_note

    print(key_backup_note(settings))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from relay.store.backup import BackupError, restore

    settings = _settings(args)
    db = _sqlite_db(settings, "restore")
    if db is None:
        return 1
    try:
        events, kept = restore(args.file, db)
    except BackupError as exc:
        return _fail(str(exc))
    print(f"restored {db} from {args.file}: {events:,} events")
    if kept is not None:
        print(f"the database it replaced is kept at {kept} (delete it when you no longer need it)")
    return 0


# --- entry point ---------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="satsrelay", description="A Nostr relay whose writes are paid in sats.")
    parser.add_argument("--config", type=Path, default=None, help="TOML config file (see config.example.toml)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML config file")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the relay", parents=[common])
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--workers", type=_workers_count, help='processes sharing the port; "auto": one per core (server.workers)'
    )
    # from --workers' supervisor (relay.workers)
    serve.add_argument("--metrics-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--writer-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--writer-address", default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    imp = sub.add_parser("import", help="import events from JSONL (file or stdin)", parents=[common])
    imp.add_argument("file", nargs="?", help="JSONL file, '-' or absent for stdin")
    imp.add_argument("--rejects", type=Path, help="write each refused line here (JSONL: line, reason, text)")
    imp.set_defaults(func=cmd_import)

    exp = sub.add_parser("export", help="export events as JSONL, newest first", parents=[common])
    exp.add_argument("file", nargs="?", help="output file, '-' or absent for stdout")
    exp.add_argument("--filter", help='a NIP-01 filter as JSON, e.g. \'{"kinds":[1],"limit":100}\' (newest first)')
    exp.add_argument("--include-banned", action="store_true",
                     help="also export events banned through NIP-86 (the events, and their authors')")
    exp.set_defaults(func=cmd_export)

    syn = sub.add_parser("sync", help="reconcile the local store with another relay (NIP-77, else paged REQ)",
                         parents=[common])
    syn.add_argument("url", help="the other relay, ws:// or wss://")
    syn.add_argument("--filter", help='only events matching this NIP-01 filter, e.g. \'{"kinds":[1]}\'')
    syn.add_argument("--direction", choices=("down", "up", "both"), default="both",
                     help="down: fetch what we lack; up: send what it lacks; both (default)")
    syn.add_argument("--no-negentropy", action="store_true", help="use paged REQ even if the peer speaks NIP-77")
    syn.add_argument("--include-banned", action="store_true",
                     help="also send (and keep) events banned here through NIP-86; by default they stay out")
    syn.set_defaults(func=cmd_sync)

    bak = sub.add_parser(
        "backup", help="copy the SQLite database to FILE, consistent, while the relay runs", parents=[common]
    )
    bak.add_argument("file", type=Path, help="new file to write (refused if it exists)")
    bak.set_defaults(func=cmd_backup)

    res = sub.add_parser("restore", help="replace the SQLite database by a backup (relay stopped)", parents=[common])
    res.add_argument("file", type=Path, help="a file written by `satsrelay backup`")
    res.set_defaults(func=cmd_restore)

    for plugin in discover_plugins():
        plugin.add_commands(sub, common, _settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except PluginError as exc:
        print(f"satsrelay: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
        # Inside the try: output a reader never took (`| head` has exited) is still in
        # the buffer, and flushing it is where the broken pipe shows.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a socket of the command's own, not the operator's pipe: a real fault
        # `satsrelay accounts list | head`: the reader has what it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except StoreUnavailable as exc:
        return _fail(str(exc))


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reading end is closed: poll reports an
    error condition on the writing end then (Linux, the BSDs, macOS)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no poll (Windows), stdout not a file
        return True


if __name__ == "__main__":
    sys.exit(main())
