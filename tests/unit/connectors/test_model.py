"""Connector declarations are validated at start; every error names the field and the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.base import installed_kinds, record_ce_id, resolve_all, resolve_kind
from connectors.mapping import map_payload
from simpul.topology.connectors import (
    ConnectorConfigError,
    ConnectorSpec,
    all_connectors,
    load_connector_files,
)
from simpul.topology.model import TopologyError, load_topology, parse_topology
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.unit

PALU = REPO_ROOT / "topology" / "palu.yaml"
PALU_CONNECTORS = REPO_ROOT / "topology" / "connectors"


def _file_drop(**override: Any) -> dict[str, Any]:
    return {
        "name": "kel-ujuna-letters",
        "connector.class": "file",
        "event.type": "kelurahan.document.issued",
        "agency": "kel-ujuna",
        "input.path": "/tmp/drop",
        **override,
    }


def _with_connectors(*items: dict[str, Any]) -> dict[str, Any]:
    raw = yaml.safe_load(PALU.read_text())
    raw["connectors"] = list(items)
    return raw


def test_builtin_kinds_are_found_through_entry_points() -> None:
    assert {"outbox", "polling", "file", "http"} <= set(installed_kinds())


def test_palu_example_connectors_are_valid_without_anything_running() -> None:
    topology = load_topology(PALU)
    specs = all_connectors(topology, PALU_CONNECTORS)
    assert {s.kind for s in specs} >= {"polling", "outbox", "file"}
    kinds = resolve_all(specs)
    assert len(kinds) == len(specs)


def test_kafka_connect_keys_and_defaults() -> None:
    spec = ConnectorSpec.model_validate(_file_drop())
    assert spec.kind == "file" and spec.tasks_max == 1 and spec.errors_tolerance == "none"
    assert spec.dead_letter_topic == "simpul.dlq.kelurahan.document.issued"
    assert spec.options == {"input.path": "/tmp/drop"}
    assert spec.declared()["connector.class"] == "file"


def test_topology_connector_errors_name_the_field_path() -> None:
    raw = _with_connectors(
        _file_drop(),
        _file_drop(name="dinsos-letters", agency="dinsos"),
        _file_drop(name="x", **{"errors.tolerance": "some"}),
    )
    with pytest.raises(TopologyError) as caught:
        parse_topology(raw)
    message = str(caught.value)
    assert "connectors.2.name" in message  # too short
    assert "connectors.2.errors.tolerance" in message


def test_agency_that_may_not_produce_the_type_is_refused() -> None:
    with pytest.raises(TopologyError, match=r"connectors\.1\.agency: dinsos may not produce"):
        parse_topology(_with_connectors(_file_drop(), _file_drop(name="dinsos-x", agency="dinsos")))


def test_duplicate_names_and_unknown_event_types_are_refused() -> None:
    raw = _with_connectors(_file_drop(), _file_drop(**{"event.type": "permit.revoked"}))
    with pytest.raises(TopologyError) as caught:
        parse_topology(raw)
    assert "connectors.1.name: connector 'kel-ujuna-letters' declared more than once" in str(
        caught.value
    )
    assert "connectors.1.event.type: unknown event type 'permit.revoked'" in str(caught.value)


def test_kind_options_are_checked_by_the_kind(tmp_path: Path) -> None:
    polling = ConnectorSpec.model_validate(
        {
            "name": "simpeg",
            "connector.class": "polling",
            "event.type": "hr.employee.updated",
            "agency": "bkpsdm",
            "connection.url": "postgresql://simpeg/simpeg",
            "table.name": "pegawai",
            "mode": "timestamp+incrementing",
            "timestamp.column.name": "diubah_pada",
        }
    )
    with pytest.raises(ConnectorConfigError, match=r"incrementing\.column\.name: required"):
        resolve_kind(polling, "connectors.0")
    bad_mode = ConnectorSpec.model_validate({**polling.declared(), "mode": "x"})
    with pytest.raises(ConnectorConfigError, match=r"connectors\.0\.mode: Input should be"):
        resolve_kind(bad_mode, "connectors.0")
    typo = ConnectorSpec.model_validate(_file_drop(**{"input.pth": "/tmp"}))
    with pytest.raises(ConnectorConfigError, match=r"connectors\.0\.input\.pth: Extra inputs"):
        resolve_kind(typo, "connectors.0")
    unknown = ConnectorSpec.model_validate(_file_drop(**{"connector.class": "ftp"}))
    with pytest.raises(ConnectorConfigError, match=r"unknown kind 'ftp'; installed: .*file"):
        resolve_kind(unknown, "connectors.0")


def test_connector_files_errors_name_the_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"connectors": [_file_drop(agency=None)]}))
    with pytest.raises(ConnectorConfigError, match=r"a\.yaml: connectors\.0\.agency"):
        load_connector_files(tmp_path)
    (tmp_path / "a.yaml").write_text(
        yaml.safe_dump({"connectors": [_file_drop(), _file_drop(name="kel-b", agency="dinsos")]})
    )
    with pytest.raises(ConnectorConfigError, match=r"a\.yaml: connectors\.1\.agency: dinsos"):
        all_connectors(load_topology(PALU), tmp_path)


def test_topology_check_reports_a_bad_connector_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump({"connectors": [_file_drop(**{"file.minimum.age.ms": -1})]})
    )
    env = {**os.environ, "SIMPUL_CONNECTORS_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "simpul", "topology", "check"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "bad.yaml: connectors.0.file.minimum.age.ms: Input should be greater" in result.stderr


def test_mapping_renames_columns_and_coerces_by_schema() -> None:
    definition = {
        "fields": [
            {"name": "nip", "type": "string"},
            {"name": "score", "type": "double"},
            {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "programs", "type": {"type": "array", "items": "string"}},
            {"name": "note", "type": ["null", "string"]},
        ]
    }
    row = {"NIP": 198507172010011002, "score": "97.5", "when": "2026-11-02T08:00:00+08:00"}
    payload = map_payload(
        {**row, "programs": "PKH; BPNT", "note": "", "extra": 1}, {"nip": "NIP"}, definition
    )
    assert payload["nip"] == "198507172010011002" and payload["score"] == 97.5
    assert payload["when"].isoformat() == "2026-11-02T08:00:00+08:00"
    assert payload["programs"] == ["PKH", "BPNT"] and payload["note"] is None
    assert "extra" not in payload


def test_ce_id_is_deterministic_per_connector_and_row() -> None:
    assert record_ce_id("simpeg", "42") == record_ce_id("simpeg", "42")
    assert record_ce_id("simpeg", "42") != record_ce_id("simpeg", "43")
    assert record_ce_id("simpeg", "42") != record_ce_id("other", "42")
