"""The docs cannot drift from the code."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from freightscale.settings import FreightScaleSettings
from freightscale.telemetry import METRICS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_settings", DOCS / "gen_settings.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_reference_is_generated_and_current() -> None:
    committed = (DOCS / "settings.md").read_text(encoding="utf-8")
    assert committed == load_generator().render(), (
        "docs/settings.md is out of date: run `python docs/gen_settings.py` and commit it"
    )


def test_settings_reference_lists_every_variable() -> None:
    text = (DOCS / "settings.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`(FREIGHTSCALE_[A-Z0-9_]+)`", text))
    sections = {
        name
        for name, field in FreightScaleSettings.model_fields.items()
        if hasattr(field.annotation, "model_fields")
    }
    expected = {
        n for n in FreightScaleSettings.env_names() if n.split("_", 1)[1].lower() not in sections
    }
    assert expected <= listed


def test_telemetry_page_lists_every_metric() -> None:
    text = (DOCS / "telemetry.md").read_text(encoding="utf-8")
    missing = [name for name in METRICS if f"`{name}`" not in text]
    assert not missing, f"docs/telemetry.md does not list {missing}"


def test_nav_pages_exist() -> None:
    mkdocs = (DOCS.parent / "mkdocs.yml").read_text(encoding="utf-8")
    pages = re.findall(r":\s+([\w-]+\.md)\s*$", mkdocs, flags=re.MULTILINE)
    assert "settings.md" in pages
    for page in pages:
        assert (DOCS / page).is_file(), page
