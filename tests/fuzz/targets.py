"""Coverage-guided fuzzing (atheris) of what a producer can send: one target per entry point.

    python -m tests.fuzz.targets <target> [libFuzzer options, e.g. -max_total_time=60]

Targets: ``worker`` (headers, key, value and timestamp of a Kafka record through the worker's
check), ``filedrop`` (the file-drop parser), ``mapping`` (connector row mapping and the Avro
check), ``schema`` (the registry's schema parsing), ``json`` (the bounded JSON loader). A
target crashes only on an exception its entry point does not promise; libFuzzer then writes
the input to ``crash-*`` (see -artifact_prefix) and exits non-zero. ``make fuzz`` runs each
for a minute; tests/unit/test_fuzz_atheris.py runs each for a few seconds in ``make test``.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["simpul", "streams", "connectors", "sinks"]):
    from connectors.kinds.filedrop import read_rows
    from connectors.mapping import map_payload, missing_fields
    from simpul import jsontext
    from simpul.codec import AvroSchema, frame
    from simpul.envelope import Envelope
    from simpul.errors import InvalidMessage
    from simpul.registry import compatibility
    from simpul.validation import check_avro
    from streams.ingest.pipeline import RawRecord, check_record

ROOT = Path(__file__).resolve().parents[2]
TYPE = "social.recipient.updated"
HEADERS = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type")


def _catalog():  # type: ignore[no-untyped-def]
    from simpul import dbmigrate
    from simpul.catalog import EventCatalog
    from simpul.db import make_engine
    from simpul.registry.resolver import SchemaResolver
    from simpul.registry.store import SchemaStore, register_all
    from simpul.topology.model import load_topology

    url = f"sqlite:///{tempfile.mkdtemp(prefix='simpul-fuzz-')}/registry.db"
    dbmigrate.upgrade(url)
    store = SchemaStore(make_engine(url))
    topology = load_topology(ROOT / "topology" / "palu.yaml")
    register_all(store, topology, ROOT / "schemas")
    return EventCatalog(topology, SchemaResolver(store))


def worker_target() -> Callable[[bytes], None]:
    catalog = _catalog()
    event_type = catalog.topology.event_type(TYPE)
    schema = catalog.latest_schema(TYPE)
    payload = {
        "nik": "7271054507910003",
        "programs": ["PKH"],
        "disability_category": None,
        "kelurahan_code": "7271051001",
        "status": "ACTIVE",
        "updated_at": dt.datetime(2026, 11, 2, tzinfo=dt.UTC),
    }
    good_value = schema.encode(payload)
    good_headers = Envelope(type=TYPE, source="/agency/dinsos").to_headers()

    def one(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        headers = list(good_headers)
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            name = (
                HEADERS[fdp.ConsumeIntInRange(0, len(HEADERS) - 1)]
                if fdp.ConsumeBool()
                else fdp.ConsumeUnicodeNoSurrogates(12)
            )
            value = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)) if fdp.ConsumeBool() else None
            if fdp.ConsumeBool():
                headers = [(k, v) for k, v in headers if k != name]
            headers.insert(fdp.ConsumeIntInRange(0, len(headers)), (name, value))  # type: ignore[arg-type]
        match fdp.ConsumeIntInRange(0, 3):
            case 0:
                value = good_value
            case 1:
                value = frame(fdp.ConsumeIntInRange(0, 2**32 - 1), good_value[5:])
            case 2:
                value = good_value[: fdp.ConsumeIntInRange(0, len(good_value))]
            case _:
                value = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512))
        key = b"7271054507910003" if fdp.ConsumeBool() else fdp.ConsumeBytes(20)
        stamp = fdp.ConsumeIntInRange(-(2**63), 2**63 - 1) / 1000 if fdp.ConsumeBool() else None
        record = RawRecord(f"simpul.in.{TYPE}", 0, 0, key, value, headers, stamp)
        try:
            accepted = check_record(record, event_type, catalog)
        except InvalidMessage:
            return
        accepted.to_stored(event_type, dt.datetime.now(dt.UTC))

    return one


def filedrop_target() -> Callable[[bytes], None]:
    def one(data: bytes) -> None:
        for fmt in ("csv", "jsonl"):
            for _line, row, problem in read_rows(io.BytesIO(data), fmt, ","):
                assert (row is None) != (problem is None)

    return one


DEFINITION = json.loads((ROOT / "schemas" / "kelurahan.document.issued.v1.avsc").read_text())


def mapping_target() -> Callable[[bytes], None]:
    schema = AvroSchema.from_text(1, json.dumps(DEFINITION))

    def one(data: bytes) -> None:
        try:
            row = jsontext.loads(data)
        except ValueError:
            return
        if not isinstance(row, dict):
            return
        payload = map_payload(row, {}, DEFINITION)
        missing_fields(DEFINITION, payload, {})
        check_avro(schema, payload)

    return one


def schema_target() -> Callable[[bytes], None]:
    def one(data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        try:
            compatibility.parse(text)
        except compatibility.InvalidSchema:
            return
        AvroSchema.from_text(1, text)

    return one


def json_target() -> Callable[[bytes], None]:
    def one(data: bytes) -> None:
        try:
            jsontext.loads(data)
        except ValueError:
            return

    return one


TARGETS = {
    "worker": worker_target,
    "filedrop": filedrop_target,
    "mapping": mapping_target,
    "schema": schema_target,
    "json": json_target,
}


def seeds(target: str) -> list[bytes]:
    """Valid inputs to start from, so the fuzzer reaches past the first check quickly."""
    schemas = [path.read_bytes() for path in sorted((ROOT / "schemas").glob("*.avsc"))]
    row = {
        "document_number": "470/12/BSB/XI/2026",
        "document_type": "SKTM",
        "kelurahan_code": "7271051001",
        "resident_nik": "7271054507910003",
        "purpose": "beasiswa",
        "issued_at": "2026-11-02T08:00:00+08:00",
    }
    return {
        "worker": [b"\x00" * 64, bytes(range(256))],
        "filedrop": [
            b"nik,nama\n7271054507910003,Siti\n",
            json.dumps(row).encode() + b"\n[1]\n{",
        ],
        "mapping": [json.dumps(row).encode(), json.dumps({**row, "issued_at": 5}).encode()],
        "schema": schemas,
        "json": [b'{"a": [1, 2.5, null, "x"]}', b"[[[[[]]]]]"],
    }[target]


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        raise SystemExit(f"usage: python -m tests.fuzz.targets {{{'|'.join(TARGETS)}}} [options]")
    target, options = sys.argv[1], sys.argv[2:]
    if not [o for o in options if not o.startswith("-")]:  # no corpus given: start from seeds
        corpus = Path(tempfile.mkdtemp(prefix=f"simpul-fuzz-{target}-"))
        for n, seed in enumerate(seeds(target)):
            (corpus / f"seed-{n}").write_bytes(seed)
        options.append(str(corpus))
    one = TARGETS[target]()
    atheris.Setup([sys.argv[0], *options], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
