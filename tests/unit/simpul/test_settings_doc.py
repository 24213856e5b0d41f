"""docs/settings.md lists every setting: regenerate with `python -m simpul.settings`."""

from __future__ import annotations

import pytest

from simpul.settings import Settings, settings_table
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.unit


def test_settings_doc_is_generated_from_the_settings() -> None:
    doc = (REPO_ROOT / "docs" / "settings.md").read_text()
    assert doc == settings_table(), "run: .venv/bin/python -m simpul.settings > docs/settings.md"


def test_every_setting_is_documented_with_a_meaning() -> None:
    undocumented = [name for name, f in Settings.setting_fields().items() if not f.description]
    assert undocumented == []
