"""The installation's YAML reader: libyaml's parser, and still only the safe constructor."""

from __future__ import annotations

import pytest
import yaml

from simpul import yamltext

pytestmark = pytest.mark.unit


def test_libyaml_parses_when_pyyaml_has_it() -> None:
    # The wheels on PyPI ship libyaml; without it the pure-Python parser gives the same result.
    assert yaml.__with_libyaml__
    assert yamltext.Loader is yaml.CSafeLoader


def test_it_reads_what_the_pure_python_parser_reads() -> None:
    text = (
        "keys:\n"
        "  - {key_id: dinsos-1, owner: dinsos, created_at: 2026-12-02T10:00:00+00:00}\n"
        "  - key_id: '007'\n"
        "    attests: [kel-ujuna, kel-lere]\n"
        "    valid_until: null\n"
    )
    assert yamltext.safe_load(text) == yaml.safe_load(text)


def test_python_tags_are_refused() -> None:
    with pytest.raises(yaml.YAMLError, match="python/object/apply"):
        yamltext.safe_load("!!python/object/apply:os.system ['true']\n")
