"""deploy/monitoring: every metric the Grafana dashboard and the Prometheus alert rules
name is exported by a running relay (payments on the demo wallet), with the labels they
group by; promtool (Debian's prometheus package, ``make test-deps``) parses the rules and
the dashboard's queries, and fires two of the alerts on made-up series."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.nostr import crypto
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient, signed

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "monitoring" / "grafana-dashboard.json"
RULES = REPO / "deploy" / "monitoring" / "satsrelay-alerts.yml"
METRIC = re.compile(r"\b((?:satsrelay|process)_[a-z0-9_]+)\b")
GROUPED = re.compile(r"by \(([a-z_, ]+)\) \((?:\w+\()?((?:satsrelay|process)_[a-z0-9_]+)")
ADDED_BY_PROMETHEUS = {"instance", "job"}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (run `make deploy-tools`)")


def dashboard_exprs() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> list[str]:
        out: list[str] = []
        for panel in panels:
            out += [t["expr"] for t in panel.get("targets", [])]
            out += walk(panel.get("panels", []))
        return out

    return walk(json.loads(DASHBOARD.read_text())["panels"])


def rule_exprs() -> list[str]:
    """The ``expr:`` of each rule in the YAML rules file (one line, or a folded block):
    enough YAML for this file, whose rule count promtool confirms below."""
    exprs: list[str] = []
    lines = RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        key, _, value = line.strip().partition(" ")
        if key != "expr:":
            continue
        if value.strip() in (">-", ">", "|"):
            indent = len(line) - len(line.lstrip())
            block = []
            for following in lines[i + 1 :]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                block.append(following.strip())
            value = " ".join(block)
        exprs.append(value.strip())
    return exprs


def exported(text: str) -> dict[str, set[str]]:
    """Every series name the exposition offers (a counter family ``x``: ``x_total``, a
    histogram's ``_bucket``/``_count``/``_sum``, with or without samples yet) -> the label
    names its samples carry."""
    names: dict[str, set[str]] = {}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


async def scrape_after_some_traffic(relay: Relay, alice: bytes, bob: bytes) -> str:
    """An accepted and a refused event, a paid invoice, a pending one, a REQ, a COUNT."""
    base = f"http://127.0.0.1:{relay.port}"
    async with NostrClient(relay.url) as client, httpx.AsyncClient(base_url=base) as web:
        ok, _ = await client.publish(signed(alice, 1, "unpaid"))
        assert not ok
        paid = (await web.post("/api/invoice", json={"pubkey": crypto.public_key(alice).hex(), "plan": "admission"}))
        assert (await web.post(f"/api/fake/pay/{paid.json()['payment_hash']}")).status_code == 200
        ok, message = await client.publish(signed(alice, 1, "paid"))
        assert ok, message
        await web.post("/api/invoice", json={"pubkey": crypto.public_key(bob).hex(), "plan": "admission"})
        await client.req("r", {"kinds": [1]})
        await client.count("c", {"kinds": [1]})
    await relay.hooks.owner("payments").watcher.poll_due()  # type: ignore[union-attr]  # the pending gauge's round
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"http://127.0.0.1:{relay.metrics_port}/metrics")
    assert answer.status_code == 200
    return answer.text


async def test_every_metric_the_dashboard_and_alerts_name_is_exported(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    async with relay_factory(payments={"enabled": True, "backend": "fake"}) as relay:
        text = await scrape_after_some_traffic(relay, alice, bob)
    series = exported(text)
    exprs = dashboard_exprs() + rule_exprs()
    assert len(rule_exprs()) == 12 and len(dashboard_exprs()) >= 20
    named = {name for expr in exprs for name in METRIC.findall(expr)}
    missing = sorted(named - series.keys())
    assert not missing, f"named by deploy/monitoring but not exported: {missing}"
    # what the issue asks to watch is there: ingest, rejections, connections, wallet errors,
    # pending invoices, settlement lag
    for wanted in (
        "satsrelay_events_accepted_total",
        "satsrelay_events_rejected_total",
        "satsrelay_connections",
        "satsrelay_wallet_errors_total",
        "satsrelay_wallet_up",
        "satsrelay_invoices_pending",
        "satsrelay_settlement_lag_seconds_bucket",
    ):
        assert wanted in named, wanted
    # a "sum by (label)" groups by a label the metric's samples really carry
    for expr in exprs:
        for labels, metric in GROUPED.findall(expr):
            if series[metric]:  # metrics with samples (a labelled counter without any has none yet)
                for label in {x.strip() for x in labels.split(",")} - ADDED_BY_PROMETHEUS:
                    assert label in series[metric], f"{expr}: {metric} has no label {label!r}"
    # the values the traffic above must have produced
    families = {f.name: f for f in text_string_to_metric_families(text)}
    rejected = {s.labels["reason"] for s in families["satsrelay_events_rejected"].samples if s.name.endswith("_total")}
    assert "restricted" in rejected
    lag = families["satsrelay_settlement_lag_seconds"].samples
    assert [s.value for s in lag if s.name.endswith("_count")] == [1.0]
    # the rule for late credits counts the bucket by its exact label as exported
    assert any(s.labels.get("le") == "900.0" for s in lag) and 'le="900.0"' in RULES.read_text()
    assert [s.value for s in families["satsrelay_invoices_pending"].samples] == [1.0]
    assert [s.value for s in families["satsrelay_wallet_up"].samples] == [1.0]


@needs_promtool
def test_promtool_parses_the_rules_and_the_dashboards_queries(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "SUCCESS: 12 rules found" in done.stdout, done.stdout + done.stderr
    # each dashboard query as a recording rule, Grafana's $__rate_interval as what it becomes
    recorded = tmp_path / "dashboard.yml"
    rules = "".join(
        f"      - record: dashboard:query_{i}\n        expr: {json.dumps(expr.replace('$__rate_interval', '1m'))}\n"
        for i, expr in enumerate(dashboard_exprs())
    )
    recorded.write_text("groups:\n  - name: dashboard\n    rules:\n" + rules)
    done = subprocess.run([PROMTOOL, "check", "rules", str(recorded)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_the_wallet_and_late_credit_alerts_fire(tmp_path: Path) -> None:
    """promtool's rule unit test on made-up series: the wallet down for 6 minutes fires
    SatsrelayWalletDown; one credit in the 3600 s bucket and none by 900 s fires
    SatsrelayPaymentsCreditedLate; a healthy relay fires neither."""
    assert PROMTOOL is not None
    # the rules as they are, less their annotations (promtool would compare their text too)
    bare, skipping = [], 0
    for line in RULES.read_text().splitlines():
        indent = len(line) - len(line.lstrip())
        if skipping and line.strip() and indent <= skipping:
            skipping = 0
        if line.strip() == "annotations:":
            skipping = indent
        if not skipping:
            bare.append(line)
    rules = tmp_path / "rules.yml"
    rules.write_text("\n".join(bare) + "\n")
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(
        f"rule_files:\n  - {rules}\nevaluation_interval: 1m\ntests:\n"
        "  - interval: 1m\n    input_series:\n"
        "      - series: 'satsrelay_connections{instance=\"a\"}'\n        values: '1x20'\n"
        "      - series: 'satsrelay_wallet_up{instance=\"a\"}'\n        values: '1 1 0x10'\n"
        "      - series: 'satsrelay_wallet_up{instance=\"b\"}'\n        values: '1x12'\n"
        "      - series: 'satsrelay_settlement_lag_seconds_count{instance=\"a\"}'\n        values: '0 0 1x10'\n"
        "      - series: 'satsrelay_settlement_lag_seconds_bucket{instance=\"a\",le=\"900.0\"}'\n"
        "        values: '0x12'\n"
        "    alert_rule_test:\n"
        "      - eval_time: 9m\n        alertname: SatsrelayWalletDown\n"
        "        exp_alerts:\n          - exp_labels: {severity: critical, instance: a}\n"
        "      - eval_time: 3m\n        alertname: SatsrelayWalletDown\n        exp_alerts: []\n"
        "      - eval_time: 5m\n        alertname: SatsrelayPaymentsCreditedLate\n"
        "        exp_alerts:\n          - exp_labels: {severity: warning, instance: a}\n"
        "      - eval_time: 10m\n        alertname: SatsrelayDown\n        exp_alerts: []\n"
    )
    done = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_a_failing_wallet_shows_in_the_metrics(relay_factory: RelayFactory) -> None:
    """The demo wallet's simulated outage: the check fails, so wallet_up drops to 0 and the
    failed calls are counted by operation; once it answers again, wallet_up is back to 1."""
    from lightning.backends.fake import FakeBackend
    from lightning.extension import PaymentsExtension

    async with relay_factory(payments={"enabled": True, "backend": "fake"}) as relay, httpx.AsyncClient() as http:
        ext = relay.hooks.owner("payments")
        assert isinstance(ext, PaymentsExtension) and isinstance(ext.backend, FakeBackend)

        async def scrape() -> dict[str, float]:
            text = (await http.get(f"http://127.0.0.1:{relay.metrics_port}/metrics")).text
            return {
                f"{s.name}{sorted(s.labels.items())}": s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name.startswith(("satsrelay_wallet_up", "satsrelay_wallet_errors_total"))
            }

        assert await scrape() == {"satsrelay_wallet_up[]": 1.0}
        ext.backend.set_outage(True)
        assert not await ext.health.check()
        down = await scrape()
        assert down["satsrelay_wallet_up[]"] == 0.0
        assert down["satsrelay_wallet_errors_total[('operation', 'check')]"] == 1.0
        # the outage broke the push stream too: counted as its own operation
        assert set(down) <= {"satsrelay_wallet_up[]", *(f"satsrelay_wallet_errors_total[('operation', '{op}')]"
                                                       for op in ("check", "stream"))}
        ext.backend.set_outage(False)
        assert await ext.health.check()
        assert (await scrape())["satsrelay_wallet_up[]"] == 1.0


def debians_prometheus_yml() -> Path:
    """Debian's /etc/prometheus/prometheus.yml as the package installed it (dpkg's checksum of
    the conffile), the file the README's Monitoring commands edit."""
    path = Path("/etc/prometheus/prometheus.yml")
    status = Path("/var/lib/dpkg/status").read_text()
    recorded = re.search(rf"^ {re.escape(str(path))} ([0-9a-f]{{32}})$", status, re.MULTILINE)
    assert recorded, "Debian's prometheus package is not installed (run `make deploy-tools`)"
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    assert actual == recorded[1], f"{path} is not the file Debian installed: this test edits a copy of that one"
    return path


@needs_promtool
def test_the_readmes_monitoring_commands_make_a_config_promtool_accepts(tmp_path: Path) -> None:
    """The README's lines that install the rules and edit prometheus.yml, run as written on a
    copy of Debian's file (/etc/prometheus/ moved to a temp folder, no sudo: tests run as
    root or as the file's owner): promtool then finds the satsrelay job and the 12 rules."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```sh\n(sudo apt-get install -y prometheus\n.*?)```", readme, re.DOTALL)
    assert block, "README: the Monitoring commands"
    lines = block[1].splitlines()
    assert lines[0] == "sudo apt-get install -y prometheus" and lines[-1].startswith("promtool check config ")
    etc = tmp_path / "etc-prometheus"
    etc.mkdir()
    shutil.copy(debians_prometheus_yml(), etc / "prometheus.yml")
    for line in lines[1:]:
        command = re.sub(r"\s+#\s.*$", "", line).replace("sudo ", "").replace("/etc/prometheus/", f"{etc}/")
        command = command.split(" && systemctl reload")[0]  # no Prometheus service to reload here
        done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{line}\n{done.stdout}{done.stderr}"
    assert "SUCCESS: 1 rule files found" in done.stdout and "12 rules found" in done.stdout, done.stdout
    config = (etc / "prometheus.yml").read_text()
    assert re.search(r"^  - job_name: satsrelay\n(    .*\n)*      - targets: \[\"127\.0\.0\.1:9477\"\]", config, re.M)
