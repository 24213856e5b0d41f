"""The topology file is validated at start; every error names the field and the reason."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from simpul.topology.model import TopologyError, load_topology, parse_topology
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.unit

PALU = REPO_ROOT / "topology" / "palu.yaml"


@pytest.fixture
def raw() -> dict[str, Any]:
    return yaml.safe_load(PALU.read_text())


def test_palu_topology_declares_the_agencies_and_all_46_kelurahan() -> None:
    topology = load_topology(PALU)
    codes = {a.code for a in topology.agencies}
    assert {"bkpsdm", "dpmptsp", "dinsos", "dukcapil", "bkd", "kominfo"} <= codes
    assert any(code.startswith("kel-") for code in codes)
    assert len(topology.kelurahan) == 46
    assert all(k.code.startswith("7271") for k in topology.kelurahan)
    assert len(topology.topics()) == 3 * len(topology.event_types) + 4 == 31  # 4: joins


def test_producer_patterns_authorize_kelurahan_offices_only() -> None:
    topology = load_topology(PALU)
    documents = topology.event_type("kelurahan.document.issued")
    assert documents.may_produce("kel-ujuna")
    assert not documents.may_produce("dinsos")
    assert topology.event_type("permit.issued").may_produce("dpmptsp")


def _error(data: Any) -> str:
    with pytest.raises(TopologyError) as caught:
        parse_topology(data, "palu.yaml")
    return str(caught.value)


def test_missing_key_field_is_named(raw: dict[str, Any]) -> None:
    del raw["event_types"][2]["key"]
    assert "event_types.2.key: Field required" in _error(raw)


def test_bad_kelurahan_code_is_named_with_its_reason(raw: dict[str, Any]) -> None:
    raw["kelurahan"][3]["code"] = "7271013004"
    assert "kelurahan.3.code: village code 3004 must start with 1 (kelurahan) or 2 (desa)" in (
        _error(raw)
    )


def test_producer_that_matches_no_agency_is_refused(raw: dict[str, Any]) -> None:
    raw["event_types"][0]["producers"] = ["bkpsdn"]
    assert "event_types.0.producers: 'bkpsdn' matches no declared agency" in _error(raw)


def test_duplicate_agency_and_unknown_field_are_refused(raw: dict[str, Any]) -> None:
    twice = copy.deepcopy(raw)
    twice["agencies"].append(dict(twice["agencies"][0]))
    assert "agencies: code bkpsdm declared more than once" in _error(twice)
    raw["agencies"][0]["nmae"] = "typo"
    assert "agencies.0.nmae: Extra inputs are not permitted" in _error(raw)


def test_unreadable_and_malformed_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read topology"):
        load_topology(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("agencies: [unclosed")
    with pytest.raises(TopologyError, match="is not valid YAML"):
        load_topology(bad)
