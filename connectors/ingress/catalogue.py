"""The city's catalogue of event types, for the one gateway (Kota Yogyakarta's Jogja Smart
Service): per type its schema, a valid example, the producing agencies, a description in
Indonesian and English, and an OpenAPI document, so an agency's developer integrates from
the ingress's catalogue page alone.

Pure: built from the topology and the ``.avsc`` files (``doc`` in English, ``simpul.doc.id``
in Indonesian); the example is generated (never a real person) and checked against the
schema and identifier rules before it is shown.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simpul.citydata import CityData
from simpul.codec import AvroSchema
from simpul.topology.model import EventType, Topology
from simpul.validation import check_avro, check_identifiers, identifier_fields

EXAMPLE_TIME = dt.datetime(2026, 11, 2, 1, 30, tzinfo=dt.UTC)

_RESPONSES = {
    "202": "Acknowledged by the broker; the body lists the ce_ids / Diterima broker",
    "401": "Missing or unknown API key / Kunci API tidak ada atau tidak dikenal",
    "403": "Your agency may not produce this type / Instansi Anda tidak berhak",
    "413": "Body larger than the limit / Badan permintaan terlalu besar",
    "415": "Body is not JSON / Bukan JSON",
    "422": "Invalid: `detail` lists each field and reason / Tidak valid, per field",
    "429": "Too many requests; see Retry-After / Terlalu banyak permintaan",
    "503": "Broker did not acknowledge; retry with the same Idempotency-Key / Ulangi",
}


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    name: str
    description_en: str
    description_id: str
    producers: list[dict[str, str]]
    key: str
    avro: dict[str, Any]
    json_schema: dict[str, Any]
    example: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "description": {"en": self.description_en, "id": self.description_id},
            "producers": self.producers,
            "key": self.key,
            "endpoint": f"POST /v1/events/{self.name}",
            "openapi": f"/v1/catalogue/{self.name}/openapi.json",
            "schema": {"avro": self.avro, "json": self.json_schema},
            "example": self.example,
        }


def json_schema(avro_type: Any, doc: str | None = None) -> dict[str, Any]:
    """JSON Schema (2020-12) of the JSON an agency posts for an Avro type."""
    schema: dict[str, Any]
    if isinstance(avro_type, list):
        options = [json_schema(t) for t in avro_type if t != "null"]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        if "null" in avro_type:
            schema = {"anyOf": [schema, {"type": "null"}]}
    elif isinstance(avro_type, dict):
        kind, logical = avro_type.get("type"), avro_type.get("logicalType")
        if logical == "timestamp-millis":
            schema = {"type": "string", "format": "date-time"}
        elif logical == "date":
            schema = {"type": "string", "format": "date"}
        elif kind == "enum":
            schema = {"type": "string", "enum": list(avro_type["symbols"])}
            if avro_type.get("doc"):
                schema["description"] = avro_type["doc"]
        elif kind == "array":
            schema = {"type": "array", "items": json_schema(avro_type["items"])}
        elif kind == "record":
            fields = avro_type["fields"]
            schema = {
                "type": "object",
                "properties": {f["name"]: json_schema(f["type"], f.get("doc")) for f in fields},
                "required": [f["name"] for f in fields if "default" not in f],
                "additionalProperties": False,
            }
        else:
            schema = json_schema(kind)
    else:
        primitive = {
            "string": "string",
            "int": "integer",
            "long": "integer",
            "float": "number",
            "double": "number",
            "boolean": "boolean",
            "bytes": "string",
        }
        schema = {"type": primitive.get(str(avro_type), "string")}
    if doc:
        schema = {**schema, "description": doc}
    return schema


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def build_catalogue(topology: Topology, schemas_dir: Path) -> list[CatalogueEntry]:
    """Every type an agency publishes (derived types are Simpul's own, not posted)."""
    data = CityData(topology, seed=int(topology.region_code), residents_count=50)
    entries = []
    for etype in topology.event_types:
        producers = [
            {"code": a.code, "name": a.name}
            for a in topology.agencies
            if not a.system and etype.may_produce(a.code)
        ]
        if not producers:
            continue
        definition = json.loads((schemas_dir / etype.schema_file).read_text(encoding="utf-8"))
        entries.append(
            CatalogueEntry(
                name=etype.name,
                description_en=definition.get("doc", ""),
                description_id=definition.get("simpul.doc.id", definition.get("doc", "")),
                producers=producers,
                key=etype.key,
                avro=definition,
                json_schema=json_schema(definition),
                example=_example(data, etype, definition),
            )
        )
    return entries


def _example(data: CityData, etype: EventType, definition: dict[str, Any]) -> dict[str, Any]:
    try:
        payload = data.payload(etype.name, EXAMPLE_TIME)
    except KeyError:
        return {}
    schema = AvroSchema.from_text(0, json.dumps(definition))
    problems = check_avro(schema, payload) + check_identifiers(
        identifier_fields(definition), payload
    )
    if problems:  # a generator out of step with its schema is a bug, not a page to show
        raise ValueError(f"example of {etype.name} is invalid: {'; '.join(problems)}")
    return {k: _jsonable(v) for k, v in payload.items()}


def openapi_for(entry: CatalogueEntry, topology: Topology) -> dict[str, Any]:
    """A self-contained OpenAPI 3.1 document for posting one event type to the ingress."""
    path = f"/v1/events/{entry.name}"
    body_schema = {"oneOf": [entry.json_schema, {"type": "array", "items": entry.json_schema}]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{topology.city}: {entry.name}",
            "version": "1",
            "description": (
                f"{entry.description_id}\n\n{entry.description_en}\n\n"
                f"Producers / produsen: {', '.join(p['name'] for p in entry.producers)}."
            ),
        },
        "paths": {
            path: {
                "post": {
                    "summary": f"Publish {entry.name} (one event or a batch)",
                    "operationId": f"publish_{entry.name.replace('.', '_')}",
                    "security": [{"apiKey": []}],
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "Retry with the same key: no duplicate is stored",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": body_schema,
                                "example": entry.example,
                            }
                        },
                    },
                    "responses": {code: {"description": text} for code, text in _RESPONSES.items()},
                }
            }
        },
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The agency's key from `simpul ingress keys create <agency>`",
                }
            }
        },
    }


def _type_label(spec: dict[str, Any]) -> str:
    if "anyOf" in spec:
        return " or ".join(_type_label(s) for s in spec["anyOf"])
    label = str(spec.get("format") or spec.get("type", ""))
    if "enum" in spec:
        label += ": " + ", ".join(spec["enum"])
    if spec.get("type") == "array":
        label += " of " + _type_label(spec["items"])
    return label


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def render_catalogue(entries: list[CatalogueEntry], topology: Topology) -> str:
    """The catalogue page, Indonesian first, English beside it."""
    e = html.escape
    sections = []
    for entry in entries:
        required = entry.json_schema["required"]
        fields = "".join(
            f"<tr><td><code>{e(name)}</code></td><td>{e(_type_label(spec))}</td>"
            f"<td>{'ya / yes' if name in required else 'tidak / no'}</td>"
            f"<td>{e(spec.get('description', ''))}</td></tr>"
            for name, spec in entry.json_schema["properties"].items()
        )
        producers = ", ".join(
            f"{e(p['name'])} (<code>{e(p['code'])}</code>)" for p in entry.producers[:8]
        )
        more = len(entry.producers) - 8
        sections.append(
            f"""<section id="{e(entry.name)}"><h2><code>{e(entry.name)}</code></h2>
<p lang="id">{e(entry.description_id)}</p><p lang="en"><em>{e(entry.description_en)}</em></p>
<p>Produsen / producers: {producers}{f" … (+{more})" if more > 0 else ""}</p>
<p><code>POST /v1/events/{e(entry.name)}</code> · kunci / key: <code>{e(entry.key)}</code> ·
<a href="/v1/catalogue/{e(entry.name)}/openapi.json">OpenAPI</a></p>
<table><tr><th>field</th><th>type</th><th>wajib / required</th><th>doc</th></tr>{fields}</table>
<h3>Contoh valid / valid example</h3><pre>{e(_pretty(entry.example))}</pre>
</section>"""
        )
    return f"""<!doctype html>
<html lang="id"><head><meta charset="utf-8">
<title>Katalog jenis event / Event catalogue: {e(topology.city)}</title>
<style>body{{font-family:sans-serif;max-width:70em}}td,th{{border-bottom:1px solid #ddd;
padding:3px 6px;text-align:left;vertical-align:top}}pre{{background:#f4f4f4;padding:8px}}</style>
</head><body><h1>Katalog jenis event / Event catalogue: {e(topology.city)}</h1>
<p lang="id">Kirim event dengan <code>POST /v1/events/&lt;jenis&gt;</code> dan kunci API instansi
Anda (<code>Authorization: Bearer &lt;kunci&gt;</code>). 202 berarti event sudah diterima bus.</p>
<p lang="en">Send events with <code>POST /v1/events/&lt;type&gt;</code> and your agency's API key
(<code>Authorization: Bearer &lt;key&gt;</code>); 202 means the bus has the event (acks=all).
Machine-readable: <a href="/v1/catalogue">/v1/catalogue</a>.</p>
{"".join(sections)}</body></html>"""
