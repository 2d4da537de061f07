"""config.example.toml is the operator's documentation: it must load, and name every key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from lightning.settings import TierSettings
from relay.config import ConfigError, Settings, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out |= _keys(annotation, f"{prefix}{name}.")
        else:
            out.add(f"{prefix}{name}")
    return out


def test_example_config_loads() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.server.port == 7777
    assert settings.storage.url.startswith("sqlite:///")
    assert settings.payments.enabled and settings.payments.backend == "fake"


DICT_VALUED = ("payments.credit.kind_prices_msat", "retention.kinds", "payments.tiers")  # keys whose value is a table


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    data: dict[str, Any] = tomllib.loads(text)
    present: set[str] = set()

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and f"{prefix}{key}" not in DICT_VALUED:
                walk(value, f"{prefix}{key}.")
            else:
                present.add(f"{prefix}{key}")

    walk(data, "")
    # keys shown commented out ("# key = ...") count as documented
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# ") and " = " in stripped:
            present.add(stripped[2:].split(" = ", 1)[0].strip())
    missing = {k for k in _keys(Settings) if k not in present and k.rsplit(".", 1)[-1] not in present}
    assert not missing, f"config.example.toml does not document: {sorted(missing)}"
    # Every tier key is shown by one of the demo's tiers.
    shown = {key for tier in data["payments"]["tiers"].values() for key in tier}
    assert not set(TierSettings.model_fields) - shown, sorted(set(TierSettings.model_fields) - shown)


def test_example_config_sells_two_tiers() -> None:
    settings = load_settings(EXAMPLE)
    tiers = settings.payments.tiers
    assert (tiers["supporter"].price_sats, tiers["supporter"].period_days) == (2000, 30)
    assert (tiers["pro"].price_sats, tiers["pro"].period_days) == (20000, 365)


def test_readme_tiers_example_loads_as_two_tiers(tmp_path: Path) -> None:
    """README's Tiers section is the worked example an operator copies: its TOML loads as
    it is (beside a payments table) and sells the two tiers it describes."""
    readme = (EXAMPLE.parent / "README.md").read_text()
    section = readme.split("### Tiers: plans with their own limits", 1)[1].split("\n### ", 1)[0]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "tiers.toml"
    config.write_text('[payments]\nenabled = true\nbackend = "fake"\n\n' + block)
    tiers = load_settings(config).payments.tiers
    assert list(tiers) == ["supporter", "pro"]
    supporter, pro = tiers["supporter"], tiers["pro"]
    assert (supporter.price_sats, supporter.period_days, supporter.grace_days) == (2000, 30, 3)
    assert (supporter.events_per_day, supporter.max_bytes_stored, supporter.linked_keys) == (2000, 50_000_000, 1)
    assert (pro.price_sats, pro.period_days, pro.grace_days, pro.order) == (20000, 365, 7, 2)


def test_wrong_value_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nmax_limit = \"lots\"\n")
    with pytest.raises(ConfigError, match=r"limits\.max_limit"):
        load_settings(bad)


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nmax_limitt = 5\n")
    with pytest.raises(ConfigError, match=r"limits\.max_limitt"):
        load_settings(bad)


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SATSRELAY_LIMITS__MAX_LIMIT", "42")
    assert load_settings(EXAMPLE).limits.max_limit == 42
