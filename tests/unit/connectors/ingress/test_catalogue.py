"""The event catalogue (the one gateway's page) for every seed city: a valid example per
type, producers, Indonesian and English descriptions, and an OpenAPI document."""

from __future__ import annotations

import jsonschema
import pytest

from connectors.ingress.catalogue import build_catalogue, json_schema, openapi_for, render_catalogue
from simpul.topology.model import load_topology
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("city", ["palu", "kupang", "malang", "batu", "yogyakarta"])
def test_every_published_type_has_a_valid_example_and_an_openapi(city: str) -> None:
    topology = load_topology(REPO_ROOT / "topology" / f"{city}.yaml")
    entries = build_catalogue(topology, REPO_ROOT / "schemas")
    assert {e.name for e in entries} >= {"permit.issued", "kelurahan.document.issued"}
    for entry in entries:
        assert entry.description_id != entry.description_en
        assert entry.producers
        if entry.example:
            jsonschema.Draft202012Validator(entry.json_schema).validate(entry.example)
            code = entry.example.get("kelurahan_code")
            assert code is None or code.startswith(topology.region_code)
        spec = openapi_for(entry, topology)
        assert topology.city in spec["info"]["title"]
        assert set(spec["paths"][f"/v1/events/{entry.name}"]["post"]["responses"]) >= {
            "202",
            "401",
            "403",
            "422",
        }
    assert "Produsen / producers" in render_catalogue(entries, topology)


def test_an_agency_not_yet_onboarded_finds_its_type_and_example() -> None:
    batu = load_topology(REPO_ROOT / "topology" / "batu.yaml")
    deaths = next(
        e for e in build_catalogue(batu, REPO_ROOT / "schemas") if e.name.startswith("pop")
    )
    assert deaths.producers == [
        {"code": "dispendukcapil", "name": "Dinas Kependudukan dan Pencatatan Sipil"}
    ]
    # Dispendukcapil is not on the platform yet: the catalogue is how it gets there.
    assert deaths.example["kelurahan_code"].startswith("3579")


def test_avro_to_json_schema() -> None:
    schema = json_schema(
        {
            "type": "record",
            "name": "R",
            "fields": [
                {"name": "a", "type": "string", "doc": "A."},
                {
                    "name": "b",
                    "type": ["null", {"type": "int", "logicalType": "date"}],
                    "default": None,
                },
                {
                    "name": "c",
                    "type": {
                        "type": "array",
                        "items": {"type": "enum", "name": "E", "symbols": ["X", "Y"]},
                    },
                },
                {"name": "d", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            ],
        }
    )
    assert schema["required"] == ["a", "c", "d"]
    assert schema["properties"]["a"] == {"type": "string", "description": "A."}
    assert schema["properties"]["b"] == {
        "anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]
    }
    assert schema["properties"]["c"]["items"]["enum"] == ["X", "Y"]
    assert schema["properties"]["d"]["format"] == "date-time"
