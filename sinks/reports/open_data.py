"""Open data export for Satu Data Indonesia: aggregated, non-personal datasets as CSV + metadata.

Privacy by construction: the queries select only aggregate keys (kelurahan code, permit
type, document type, program) and counts -- never a NIK, NIP, name, business name, NIB or
document number -- and every count below `SUPPRESS_BELOW` is published as ``<5`` so that a
small cell cannot single out a resident (statistical disclosure control). No totals rows are
written, so a suppressed cell cannot be recovered by subtraction.

Reads the central store's current-state tables; works on SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import datetime as dt
import fnmatch
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, and_, func, select

from simpul.settings import PROJECT_ROOT
from simpul.topology.model import Topology
from simpul.wilayah import EDITION, timezone_for
from sinks.central_store import documents, permits, recipients

SUPPRESS_BELOW = 5
SUPPRESSED = "<5"
LICENSE = "CC-BY-4.0"
LICENSE_URL = "https://creativecommons.org/licenses/by/4.0/"
#: Kota Palu keeps Central Indonesia Time (WITA); a month is counted in the city's local time
#: (`simpul.wilayah.timezone_for`: WIB, WITA or WIT by province).
TIMEZONE = "Asia/Makassar"
_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
#: A category value is published only if it looks like a code, never free text.
_CATEGORY = re.compile(r"^[A-Z0-9][A-Z0-9_ .-]{0,39}$")


class ExportError(ValueError):
    """Bad export arguments; the message names the option and the reason."""


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    title: str
    type: str
    description: str
    unit: str | None = None
    #: The event field the variable aggregates; its .avsc doc gives the Satu Data metadata.
    field: str | None = None


#: How each identifier kind is validated (simpul.identifiers), as a Satu Data validation rule.
VALIDATION_RULES = {
    "kelurahan_code": (
        "10 digits: province (2), kabupaten/kota (2), kecamatan (2), then 1xxx for a "
        "kelurahan or 2xxx for a desa; the code is in Kepmendagri's list"
    ),
}
#: Peraturan BPS 5/2020 (metadata statistik): the variable metadata Satu Data asks for.
SATU_DATA_STANDARD = "Peraturan BPS Nomor 5 Tahun 2020 tentang Petunjuk Teknis Metadata Statistik"


@dataclass(frozen=True, slots=True)
class Dataset:
    slug: str
    title: str
    title_id: str
    event_type: str
    description: str
    variables: tuple[Variable, ...]
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class ExportResult:
    directory: Path
    files: list[Path]
    rows: dict[str, int]
    suppressed: dict[str, int]


def parse_period(period: str, timezone: str = TIMEZONE) -> tuple[dt.datetime, dt.datetime]:
    """``2026-11`` -> [start, end) of that month in local time, as UTC datetimes."""
    match = _PERIOD.fullmatch(period)
    if not match:
        raise ExportError(f"--period: {period!r} is not a month as YYYY-MM (e.g. 2026-11)")
    year, month = int(match.group(1)), int(match.group(2))
    zone = ZoneInfo(timezone)
    start = dt.datetime(year, month, 1, tzinfo=zone)
    end = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def _category(value: Any) -> str:
    text = str(value or "").strip().upper()
    return text if _CATEGORY.fullmatch(text) else "OTHER"


def _kelurahan_columns(topology: Topology) -> tuple[Variable, ...]:
    return (
        Variable(
            "kode_kelurahan",
            "Kode kelurahan",
            "string",
            "Kepmendagri 10-digit code",
            field="kelurahan_code",
        ),
        Variable("nama_kelurahan", "Nama kelurahan", "string", f"Kelurahan in {topology.city}"),
        Variable("kecamatan", "Kecamatan", "string", "District of the kelurahan"),
    )


def _kelurahan_names(topology: Topology, code: str) -> tuple[str, str, str]:
    kelurahan = {k.code: k for k in topology.kelurahan}.get(code)
    return (code, kelurahan.name, kelurahan.district) if kelurahan else (code, "", "")


COUNT = Variable(
    "jumlah",
    "Jumlah",
    "integer or '<5'",
    f"Count; values from 1 to {SUPPRESS_BELOW - 1} are published as '{SUPPRESSED}'",
    unit="count",
)


def _permits(engine: Engine, topology: Topology, start: dt.datetime, end: dt.datetime) -> Dataset:
    stmt = (
        select(permits.c.kelurahan_code, permits.c.permit_type, func.count())
        .where(and_(permits.c.issued_at >= start, permits.c.issued_at < end))
        .group_by(permits.c.kelurahan_code, permits.c.permit_type)
    )
    counts: Counter[tuple[str, str]] = Counter()
    with engine.connect() as conn:
        for kelurahan_code, permit_type, count in conn.execute(stmt):
            counts[(kelurahan_code, _category(permit_type))] += count
    rows = [(*_kelurahan_names(topology, k), t, n) for (k, t), n in sorted(counts.items())]
    return Dataset(
        slug="izin-terbit-per-kelurahan",
        title="Permits issued per kelurahan",
        title_id="Jumlah izin terbit per kelurahan",
        event_type="permit.issued",
        description="Permits issued in the month, by kelurahan of the business and permit type.",
        variables=(
            *_kelurahan_columns(topology),
            Variable(
                "jenis_izin",
                "Jenis izin",
                "string",
                "Permit type (PBG, SIP, SLF, ...)",
                field="permit_type",
            ),
            COUNT,
        ),
        rows=rows,
    )


def _letters(engine: Engine, topology: Topology, start: dt.datetime, end: dt.datetime) -> Dataset:
    stmt = (
        select(documents.c.kelurahan_code, documents.c.document_type, func.count())
        .where(and_(documents.c.issued_at >= start, documents.c.issued_at < end))
        .group_by(documents.c.kelurahan_code, documents.c.document_type)
    )
    counts: Counter[tuple[str, str]] = Counter()
    with engine.connect() as conn:
        for kelurahan_code, document_type, count in conn.execute(stmt):
            counts[(kelurahan_code, _category(document_type))] += count
    rows = [(*_kelurahan_names(topology, k), t, n) for (k, t), n in sorted(counts.items())]
    return Dataset(
        slug="surat-keterangan-per-jenis",
        title="Letters issued by kelurahan offices, by type",
        title_id="Jumlah surat keterangan kelurahan per jenis",
        event_type="kelurahan.document.issued",
        description="Letters (SKTM, domisili, SKU, ...) issued in the month, by kelurahan.",
        variables=(
            *_kelurahan_columns(topology),
            Variable(
                "jenis_surat",
                "Jenis surat",
                "string",
                "SKTM, DOMISILI, SKU, ...",
                field="document_type",
            ),
            COUNT,
        ),
        rows=rows,
    )


def _recipients(engine: Engine, topology: Topology) -> Dataset:
    # Programs are a JSON list: exploded here, the same way on SQLite and PostgreSQL.
    stmt = select(recipients.c.kelurahan_code, recipients.c.programs).where(
        recipients.c.status == "ACTIVE"
    )
    counts: Counter[tuple[str, str]] = Counter()
    with engine.connect() as conn:
        for kelurahan_code, programs in conn.execute(stmt).yield_per(10_000):
            if isinstance(programs, str):
                programs = json.loads(programs)
            for program in set(programs or ()):
                counts[(kelurahan_code, _category(program))] += 1
    rows = [(*_kelurahan_names(topology, k), p, n) for (k, p), n in sorted(counts.items())]
    return Dataset(
        slug="penerima-bansos-per-program",
        title="Active social assistance recipients per program and kelurahan",
        title_id="Jumlah penerima bantuan sosial aktif per program per kelurahan",
        event_type="social.recipient.updated",
        description=(
            "Active DTKS recipients per program and kelurahan of residence, as held in the "
            "central store when the export ran (a snapshot, labelled with the period)."
        ),
        variables=(
            *_kelurahan_columns(topology),
            Variable("program", "Program", "string", "PKH, BPNT, PBI_JK, ATENSI", field="programs"),
            COUNT,
        ),
        rows=rows,
    )


def _suppress(value: int) -> str:
    return SUPPRESSED if 0 < value < SUPPRESS_BELOW else str(value)


def _producer(topology: Topology, event_type: str) -> str:
    patterns = topology.event_type(event_type).producers
    names = [
        a.name
        for a in topology.agencies
        if any(fnmatch.fnmatchcase(a.code, pattern) for pattern in patterns)
    ]
    if len(names) == 1:
        return names[0]
    return f"{len(names)} kelurahan offices of {topology.city}" if names else topology.city


def _schema(topology: Topology, event_type: str, schemas_dir: Path) -> dict[str, Any]:
    path = schemas_dir / topology.event_type(event_type).schema_file
    definition: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return definition


def _enum(avro_type: Any) -> dict[str, Any] | None:
    """The enum inside a field's type (itself, an array's items, a nullable union)."""
    if isinstance(avro_type, dict):
        if avro_type.get("type") == "enum":
            return avro_type
        if avro_type.get("type") == "array":
            return _enum(avro_type.get("items"))
    if isinstance(avro_type, list):
        return next((e for t in avro_type if (e := _enum(t))), None)
    return None


def satu_data_metadata(
    variable: Variable, dataset: Dataset, topology: Topology, schema: dict[str, Any]
) -> dict[str, Any]:
    """One variable's metadata as Satu Data Indonesia's variable metadata (Peraturan BPS
    5/2020) names it: name, alias, concept, definition, classification, validation rule, unit,
    data type, public access. Concept and definition come from the .avsc docs."""
    fields = {f["name"]: f for f in schema.get("fields", [])}
    source = fields.get(variable.field or "")
    classification: dict[str, Any] | None
    if variable is COUNT:
        concept = f"{dataset.title}: {schema.get('doc', '').split(' Key:')[0]}"
        definition = variable.description
        classification = None
        rule = f"Integer ≥ {SUPPRESS_BELOW}, or '{SUPPRESSED}' for 1 to {SUPPRESS_BELOW - 1}"
    elif source is not None:
        concept = schema.get("doc", "").split(" Key:")[0]
        definition = source.get("doc", variable.description)
        enum = _enum(source.get("type"))
        if variable.field == "kelurahan_code":
            classification = {
                "name": f"Kode wilayah administrasi pemerintahan ({EDITION})",
                "codes": {k.code: k.name for k in topology.kelurahan},
            }
        elif enum is not None:
            classification = {
                "name": f"{enum['name']} ({schema.get('namespace', '')})",
                "codes": list(enum["symbols"]),
                "description": enum.get("doc"),
            }
        else:
            classification = {"name": "Codes as the producing agency's system records them"}
        rule = VALIDATION_RULES.get(
            source.get("simpul.identifier", ""),
            "One of the codes listed" if enum else "A code: capitals, digits, _ . - (else OTHER)",
        )
    else:  # names looked up from the code (nama_kelurahan, kecamatan)
        concept = f"Administrative areas of {topology.city}"
        definition = variable.description
        classification = {"name": f"Kode wilayah administrasi pemerintahan ({EDITION})"}
        rule = "The name Kepmendagri's list gives the code in the same row"
    return {
        "nama_variabel": variable.name,
        "alias": variable.title,
        "konsep": concept,
        "definisi": definition,
        "klasifikasi": classification,
        "aturan_validasi": rule,
        "satuan": variable.unit,
        "tipe_data": variable.type,
        "akses_publik": "terbuka",
        **({"sumber_field": f"{dataset.event_type}.{variable.field}"} if variable.field else {}),
    }


def _write(
    dataset: Dataset,
    topology: Topology,
    period: str,
    directory: Path,
    now: dt.datetime,
    schemas_dir: Path,
) -> tuple[list[Path], int]:
    stem = f"{dataset.slug}-{period}"
    csv_path, meta_path = directory / f"{stem}.csv", directory / f"{stem}.json"
    suppressed = 0
    schema = _schema(topology, dataset.event_type, schemas_dir)
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([v.name for v in dataset.variables])
        for *keys, count in dataset.rows:
            suppressed += 0 < count < SUPPRESS_BELOW
            writer.writerow([*keys, _suppress(count)])
    steward = topology.agencies_by_code.get("kominfo")
    metadata = {
        "title": f"{dataset.title}, {topology.city}, {period}",
        "title_id": f"{dataset.title_id}, {topology.city}, {period}",
        "description": dataset.description,
        "producer": _producer(topology, dataset.event_type),
        "data_steward": steward.name if steward else None,
        "region": {"name": topology.city, "code": topology.region_code},
        "period": period,
        "frequency": "monthly",
        "timezone": timezone_for(topology.region_code),
        "source": f"Simpul central store, event type {dataset.event_type}",
        "variables": [
            {k: v for k, v in asdict(variable).items() if v is not None}
            for variable in dataset.variables
        ],
        # Satu Data Indonesia's metadata per variable, so a walidata can publish as it is.
        "metadata_standard": SATU_DATA_STANDARD,
        "satu_data_variables": [
            satu_data_metadata(variable, dataset, topology, schema)
            for variable in dataset.variables
        ],
        "rows": len(dataset.rows),
        "disclosure_control": (
            f"Counts from 1 to {SUPPRESS_BELOW - 1} are published as '{SUPPRESSED}'; "
            f"{suppressed} cells suppressed. No totals, so suppressed cells cannot be derived."
        ),
        "license": LICENSE,
        "license_url": LICENSE_URL,
        "format": "text/csv",
        "file": csv_path.name,
        "generated_at": now.isoformat(),
    }
    meta_path.write_text(json.dumps(metadata, ensure_ascii=False, indent=2) + "\n", "utf-8")
    return [csv_path, meta_path], suppressed


def export_open_data(
    engine: Engine,
    topology: Topology,
    period: str,
    out: Path,
    now: dt.datetime | None = None,
    schemas_dir: Path = PROJECT_ROOT / "schemas",
) -> ExportResult:
    """Write the three datasets of ``period`` (YYYY-MM) to ``out`` as CSV + metadata JSON."""
    start, end = parse_period(period, timezone_for(topology.region_code))
    out.mkdir(parents=True, exist_ok=True)
    now = now or dt.datetime.now(dt.UTC)
    datasets: Iterable[Dataset] = (
        _permits(engine, topology, start, end),
        _letters(engine, topology, start, end),
        _recipients(engine, topology),
    )
    files: list[Path] = []
    rows: dict[str, int] = {}
    suppressed: dict[str, int] = {}
    for dataset in datasets:
        written, hidden = _write(dataset, topology, period, out, now, schemas_dir)
        files += written
        rows[dataset.slug] = len(dataset.rows)
        suppressed[dataset.slug] = hidden
    return ExportResult(out, files, rows, suppressed)
