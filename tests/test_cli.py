"""``satsrelay import`` / ``export`` as an operator runs them: a subprocess, JSONL files,
real SQLite files; and the exported data served by a relay over WebSocket."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from relay.nostr import crypto
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import nip98_header
from tests.nostr_client import NostrClient, signed


def config_for(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'log_level = "WARNING"\n[storage]\nurl = "sqlite:///{tmp_path}/{name}.db"\n')
    return path


def satsrelay(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "relay.cli", *args], input=stdin, capture_output=True, timeout=60)


def jsonl(objs: list[dict[str, object]]) -> bytes:
    return b"".join(orjson.dumps(o) + b"\n" for o in objs)


def test_import_counts_accepted_duplicate_and_rejected_lines(tmp_path: Path, alice: bytes) -> None:
    good = [signed(alice, 1, f"n{i}").to_dict() for i in range(5)]
    forged = signed(alice, 1, "forged").to_dict() | {"sig": "00" * 64}
    wrong_id = signed(alice, 1, "x").to_dict() | {"content": "changed"}
    ephemeral = signed(alice, 20000, "never stored").to_dict()
    data = jsonl([*good, good[0]]) + b"not json at all\n\n" + jsonl([forged, wrong_id, ephemeral]) + b'{"id":1}\n'
    src = tmp_path / "in.jsonl"
    src.write_bytes(data)
    result = satsrelay("import", "--config", str(config_for(tmp_path, "a")), str(src))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "imported: 5 accepted, 1 duplicate, 5 rejected"


def test_import_from_stdin(tmp_path: Path, alice: bytes) -> None:
    events = [signed(alice, 1, f"s{i}").to_dict() for i in range(3)]
    result = satsrelay("import", "--config", str(config_for(tmp_path, "a")), stdin=jsonl(events))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "imported: 3 accepted, 0 duplicate, 0 rejected"


def test_export_import_round_trip_is_byte_identical(tmp_path: Path, alice: bytes, bob: bytes) -> None:
    now = int(time.time())
    events = [signed(alice, 1, f"note ⚡ {i}", [["t", "x"]], created_at=now - i) for i in range(30)]
    events += [signed(bob, 0, '{"name":"bob"}', created_at=now - 100),
               signed(alice, 30023, "article", [["d", "a"]], created_at=now - 50)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl([e.to_dict() for e in events]))
    assert satsrelay("import", "--config", str(config_for(tmp_path, "a")), str(src)).returncode == 0

    first = tmp_path / "first.jsonl"
    result = satsrelay("export", "--config", str(config_for(tmp_path, "a")), str(first))
    assert result.returncode == 0, result.stderr
    assert "exported 32 events" in result.stderr.decode()
    lines = first.read_bytes().splitlines()
    assert sorted(lines) == sorted(e.raw for e in events)
    created = [json.loads(line)["created_at"] for line in lines]
    assert created == sorted(created, reverse=True)  # newest first

    assert satsrelay("import", "--config", str(config_for(tmp_path, "b")), str(first)).returncode == 0
    second = satsrelay("export", "--config", str(config_for(tmp_path, "b")))
    assert second.stdout == first.read_bytes()


def test_export_with_filter(tmp_path: Path, alice: bytes, bob: bytes) -> None:
    a = [signed(alice, 1, f"a{i}") for i in range(3)]
    b = [signed(bob, 1, "b"), signed(bob, 7, "+", [["t", "x"]])]
    cfg = str(config_for(tmp_path, "a"))
    assert satsrelay("import", "--config", cfg, stdin=jsonl([e.to_dict() for e in a + b])).returncode == 0
    bob_only = json.dumps({"authors": [crypto.public_key(bob).hex()]})
    by_author = satsrelay("export", "--config", cfg, "--filter", bob_only)
    assert sorted(by_author.stdout.splitlines()) == sorted(e.raw for e in b)
    by_tag = satsrelay("export", "--config", cfg, "--filter", '{"kinds":[7],"#t":["x"]}')
    assert by_tag.stdout.splitlines() == [b[1].raw]


def test_export_with_bad_filter_exits_2(tmp_path: Path) -> None:
    result = satsrelay("export", "--config", str(config_for(tmp_path, "a")), "--filter", '{"kinds":"x"}')
    assert result.returncode == 2
    assert "bad --filter: invalid: kinds must be an array" in result.stderr.decode()


def test_wrong_config_value_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[limits]\nmax_subscriptions = "lots"\n')
    result = satsrelay("export", "--config", str(cfg))
    assert result.returncode == 2
    assert "limits.max_subscriptions" in result.stderr.decode()


async def test_imported_events_are_served_over_websocket(
    relay_factory: RelayFactory, tmp_path: Path, alice: bytes
) -> None:
    events = [signed(alice, 1, f"imported {i}") for i in range(4)]
    cfg = tmp_path / "served.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{tmp_path}/relay.db"\n')  # the file relay_factory uses
    assert satsrelay("import", "--config", str(cfg), stdin=jsonl([e.to_dict() for e in events])).returncode == 0
    async with relay_factory() as relay, NostrClient(relay.url) as client:
        got = await client.req("s", {"authors": [events[0].pubkey]})
        assert sorted(e["id"] for e in got) == sorted(e.id for e in events)


async def test_export_leaves_out_what_the_operator_banned_unless_asked(
    relay_factory: RelayFactory, storage: dict[str, str], tmp_path: Path, alice: bytes, bob: bytes
) -> None:
    """Issue 17 item 8: ``export`` wrote events banned through NIP-86 (the events, and their
    authors'). Bans made over NIP-86 on a running relay, then the CLI on its store."""
    operator = crypto.generate_secret()
    kept = [signed(alice, 1, f"kept {i}") for i in range(3)]
    banned_event = signed(alice, 1, "banned event")
    by_banned_author = [signed(bob, 1, "spam"), signed(bob, 4, "a DM", [["p", crypto.public_key(alice).hex()]])]
    async with (
        relay_factory(storage=storage, admin={"pubkeys": [crypto.public_key(operator).hex()]}) as relay,
        NostrClient(relay.url) as client,
        httpx.AsyncClient() as http,
    ):
        for event in (*kept, banned_event, *by_banned_author):
            assert (await client.publish(event))[0]
        base = f"http://127.0.0.1:{relay.port}"
        for method, target in (("banevent", banned_event.id), ("banpubkey", crypto.public_key(bob).hex())):
            body = orjson.dumps({"method": method, "params": [target, "spam"]})
            headers = {
                "Content-Type": "application/nostr+json+rpc",
                "Authorization": nip98_header(operator, relay.url, "POST", body=body),
            }
            answer = await http.post(base + "/", content=body, headers=headers)
            assert answer.json() == {"result": True}, answer.text
    config = tmp_path / "export.toml"  # the relay's store: its SQLite file, or its PostgreSQL schema
    section = storage or {"url": f"sqlite:///{tmp_path}/relay.db"}
    config.write_text('log_level = "WARNING"\n[storage]\n' + "".join(f'{k} = "{v}"\n' for k, v in section.items()))
    result = satsrelay("export", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(e.raw for e in kept)
    assert "exported 3 events" in result.stderr.decode()
    everything = satsrelay("export", "--config", str(config), "--include-banned")
    assert sorted(everything.stdout.splitlines()) == sorted(e.raw for e in (*kept, banned_event, *by_banned_author))
