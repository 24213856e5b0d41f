"""`simpul init <kode wilayah>`: a working topology for any kabupaten/kota from Kemendagri's list.

The topology has the usual OPD set, one office per kelurahan or desa (with its 10-digit
code), every event type Simpul ships, the joins, default subscriptions, connector stubs and
cadences. Integration staff then edit it; `simpul topology check` validates the result.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from simpul.wilayah import EDITION, SOURCE, Regency, Village, regency

_AGENCY_CODE_MAX = 41

#: The OPD most kabupaten/kota have, with what they publish (nothing yet: on the scorecard
#: they count as not connected until they do) and how often.
USUAL_OPD: list[dict[str, Any]] = [
    {
        "code": "bkpsdm",
        "name": "Badan Kepegawaian dan Pengembangan Sumber Daya Manusia",
    },
    {
        "code": "dpmptsp",
        "name": "Dinas Penanaman Modal dan Pelayanan Terpadu Satu Pintu",
        "cadence": "1h",
    },
    {"code": "dinsos", "name": "Dinas Sosial"},
    {"code": "dukcapil", "name": "Dinas Kependudukan dan Pencatatan Sipil", "cadence": "1h"},
    {"code": "bkd", "name": "Badan Keuangan Daerah"},
    {"code": "kominfo", "name": "Dinas Komunikasi dan Informatika"},
    {"code": "bappeda", "name": "Badan Perencanaan Pembangunan Daerah", "cadence": "30d"},
    {"code": "dinkes", "name": "Dinas Kesehatan"},
    {"code": "disdik", "name": "Dinas Pendidikan"},
    {"code": "dpupr", "name": "Dinas Pekerjaan Umum dan Penataan Ruang", "cadence": "1w"},
    {"code": "simpul", "name": "Simpul (derived events)", "system": True},
]

EVENT_TYPES: list[dict[str, Any]] = [
    {"name": "hr.employee.updated", "entity": "employees", "key": "nip", "producers": ["bkpsdm"]},
    {
        "name": "hr.performance.assessed",
        "entity": "assessments",
        "key": "nip",
        "producers": ["bkpsdm"],
    },
    {
        "name": "permit.issued",
        "entity": "permits",
        "key": "permit_number",
        "producers": ["dpmptsp"],
    },
    {
        "name": "kelurahan.document.issued",
        "entity": "documents",
        "key": "document_number",
        "producers": ["kel-*", "desa-*"],
    },
    {
        "name": "social.recipient.updated",
        "entity": "recipients",
        "key": "nik",
        "producers": ["dinsos"],
    },
    {
        "name": "population.death.registered",
        "entity": "deaths",
        "key": "nik",
        "producers": ["dukcapil"],
    },
    {"name": "hr.allowance.basis", "key": "nip", "producers": ["simpul"]},
    {"name": "social.verification.requested", "key": "nik", "producers": ["simpul"]},
    {"name": "social.recipient.deceased", "key": "nik", "producers": ["simpul"]},
]

#: Schema file per event type (the newest version shipped in schemas/).
SCHEMAS = {
    "kelurahan.document.issued": "kelurahan.document.issued.v1.avsc",
}

JOINS: list[dict[str, Any]] = [
    {
        "name": "tpp-allowance-basis",
        "left": {"type": "hr.performance.assessed", "key": "nip"},
        "right": {"type": "hr.employee.updated", "key": "nip"},
        "output": "hr.allowance.basis",
        "emit": "matched",
        "on_timeout": "dead_letter",
        "fields": {
            "assessment_id": "left.assessment_id",
            "nip": "left.nip",
            "period": "left.period",
            "rating": "left.rating",
            "score": "left.score",
            "name": "right.name",
            "unit_code": "right.unit_code",
            "position": "right.position",
            "grade": "right.grade",
            "employment_status": "right.status",
            "assessment_event_id": "left.$id",
            "employee_event_id": "right.$id",
            "bank_account_ref": "right.bank_account_ref",
        },
    },
    {
        "name": "sktm-verification",
        "left": {
            "type": "kelurahan.document.issued",
            "key": "resident_nik",
            "when": {"document_type": ["SKTM"]},
        },
        "right": {"type": "social.recipient.updated", "key": "nik", "when": {"status": ["ACTIVE"]}},
        "output": "social.verification.requested",
        "emit": "unmatched",
        "on_timeout": "emit",
        "fields": {
            "nik": "left.resident_nik",
            "document_number": "left.document_number",
            "kelurahan_code": "left.kelurahan_code",
            "purpose": "left.purpose",
            "issued_at": "left.issued_at",
            "recipient_status": "right.status",
            "document_event_id": "left.$id",
            "recipient_event_id": "right.$id",
        },
    },
    {
        "name": "recipient-deceased",
        "left": {"type": "population.death.registered", "key": "nik"},
        "right": {
            "type": "social.recipient.updated",
            "key": "nik",
            "when": {"status": ["ACTIVE", "SUSPENDED"]},
        },
        "output": "social.recipient.deceased",
        "emit": "matched",
        "on_timeout": "drop",
        "fields": {
            "nik": "left.nik",
            "date_of_death": "left.date_of_death",
            "certificate_number": "left.certificate_number",
            "kelurahan_code": "left.kelurahan_code",
            "programs": "right.programs",
            "recipient_status": "right.status",
            "death_event_id": "left.$id",
            "recipient_event_id": "right.$id",
        },
    },
]


def slug(name: str) -> str:
    """``"Kota Yogyakarta"`` -> ``"kota-yogyakarta"``; ``"Ma'rang"`` -> ``"ma-rang"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def city_slug(region: Regency) -> str:
    """The topology file's name: ``kupang`` for Kota Kupang, ``kab-kupang`` for Kabupaten Kupang."""
    if region.name.startswith("Kota "):
        return slug(region.name.removeprefix("Kota "))
    return "kab-" + slug(region.name.removeprefix("Kabupaten "))


def domain(region: Regency) -> str:
    """The usual government domain (``kupangkota.go.id``, ``bogorkab.go.id``); a stub to check."""
    base = re.sub(r"[^a-z0-9]", "", city_slug(region).removeprefix("kab-"))
    return f"{base}{'kota' if region.is_kota else 'kab'}.go.id"


def office_codes(villages: list[Village]) -> dict[str, str]:
    """An agency code per village: ``kel-<name>`` / ``desa-<name>``, made unique with the code
    where two villages share a name (common in a kabupaten) and kept within 41 characters."""
    wanted = {v.code: ("desa-" if v.is_desa else "kel-") + slug(v.name) for v in villages}
    counts: dict[str, int] = {}
    for code in wanted.values():
        counts[code] = counts.get(code, 0) + 1
    result = {}
    for village in villages:
        code = wanted[village.code]
        if counts[code] > 1 or len(code) > _AGENCY_CODE_MAX:
            code = f"{code[: _AGENCY_CODE_MAX - 7].rstrip('-')}-{village.code[4:]}"
        result[village.code] = code
    return result


def build_topology(code: str) -> dict[str, Any]:
    """The topology of kabupaten/kota ``code`` as data (what `render` writes as YAML)."""
    region = regency(code)
    offices = office_codes(list(region.villages))
    agencies: list[dict[str, Any]] = [dict(a) for a in USUAL_OPD]
    for village in region.villages:
        agencies.append(
            {
                "code": offices[village.code],
                "name": f"Kantor {'Desa' if village.is_desa else 'Kelurahan'} {village.name}",
                "kelurahan_code": village.code,
                "cadence": "30d",
            }
        )
    # Only the office patterns that match an office (a kota may have no desa).
    prefixes = {office.split("-")[0] + "-*" for office in offices.values()}
    event_types = [
        {
            "name": t["name"],
            "schema": SCHEMAS.get(t["name"], f"{t['name']}.v1.avsc"),
            "key": t["key"],
            **({"entity": t["entity"]} if "entity" in t else {}),
            "partitions": 4,
            "producers": [p for p in t["producers"] if "*" not in p or p in prefixes],
        }
        for t in EVENT_TYPES
    ]
    event_types = [t for t in event_types if t["producers"]]
    host = domain(region)
    first_office = offices[region.villages[0].code] if region.villages else None
    return {
        "city": region.name,
        "region_code": region.code,
        "replication": 1,
        "offices_issue_for_any_kelurahan": False,
        "agencies": agencies,
        "event_types": event_types,
        "joins": JOINS,
        "kelurahan": [
            {"code": v.code, "name": v.name, "district": v.district} for v in region.villages
        ],
        "subscriptions": default_subscriptions(region, first_office),
        "connectors": connector_stubs(region, host, offices),
    }


def default_subscriptions(region: Regency, first_office: str | None) -> list[dict[str, Any]]:
    # A subscription that receives an identifier unmasked names its legal basis (UU 27/2022);
    # these are the usual ones, for the city to confirm.
    tpp_basis = (
        f"Peraturan kepala daerah {region.name} on Tambahan Penghasilan Pegawai; PP 94/2021 "
        "(the employer pays each ASN by NIP)"
    )
    subscriptions: list[dict[str, Any]] = [
        {
            "name": "bkd-tpp-employees",
            "agency": "bkd",
            "event_types": ["hr.employee.updated"],
            "purpose": "Calculate the TPP allowance (rank, position and status set the amount)",
            "fields": ["nip", "unit_code", "position", "grade", "status", "updated_at"],
            "legal_basis": tpp_basis,
        },
        {
            "name": "bkd-tpp-assessments",
            "agency": "bkd",
            "event_types": ["hr.performance.assessed"],
            "purpose": "Calculate the TPP allowance (the performance rating sets the share paid)",
            "fields": ["assessment_id", "nip", "period", "rating", "score"],
            "legal_basis": tpp_basis,
        },
        {
            "name": "dinsos-sktm",
            "agency": "dinsos",
            "event_types": ["kelurahan.document.issued"],
            "filter": [{"field": "document_type", "equals": "SKTM"}],
            "purpose": "Check poverty letters (SKTM) against the DTKS social welfare register",
            "fields": [
                "document_number",
                "document_type",
                "kelurahan_code",
                "resident_nik",
                "issued_at",
            ],
            "masked": [{"field": "resident_nik", "keep_first": 4, "keep_last": 4}],
        },
        {
            "name": "dinsos-deaths",
            "agency": "dinsos",
            "event_types": ["population.death.registered"],
            "purpose": "Stop social assistance to recipients who have died",
            "fields": ["nik", "date_of_death", "kelurahan_code"],
            "legal_basis": "UU 13/2011 on the poor and Permensos 3/2021 (DTKS kept current by NIK)",
        },
        {
            "name": "kominfo-permit-statistics",
            "agency": "kominfo",
            "event_types": ["permit.issued"],
            "filter": [{"field": "kelurahan_code", "prefix": region.code}],
            "purpose": (
                f"Aggregate permits per kelurahan and month for Satu Data {region.name} "
                "(no personal data)"
            ),
            "fields": ["permit_type", "kelurahan_code", "issued_at"],
        },
    ]
    if first_office:
        village = region.villages[0]
        subscriptions.append(
            {
                "name": f"{first_office}-documents",
                "agency": first_office,
                "event_types": ["kelurahan.document.issued"],
                "filter": [
                    {"field": "kelurahan_code", "prefix": village.code},
                    {"field": "document_type", "in": ["DOMISILI", "PINDAH", "KEMATIAN"]},
                ],
                "purpose": "Keep the kelurahan's resident register current",
                "fields": [
                    "document_number",
                    "document_type",
                    "kelurahan_code",
                    "resident_nik",
                    "issued_at",
                ],
                "masked": [{"field": "resident_nik"}],
            }
        )
    return subscriptions


def connector_stubs(region: Regency, host: str, offices: dict[str, str]) -> list[dict[str, Any]]:
    """One connector per OPD system Simpul reads, and a file drop for each village office;
    hosts and table names are the usual ones, to be confirmed with each agency."""
    stubs: list[dict[str, Any]] = [
        {
            "name": "simpeg-pegawai",
            "connector.class": "polling",
            "event.type": "hr.employee.updated",
            "agency": "bkpsdm",
            "connection.url": f"postgresql://simpul_reader@simpeg.bkpsdm.{host}:5432/simpeg",
            "table.name": "pegawai",
            "mode": "timestamp+incrementing",
            "timestamp.column.name": "diubah_pada",
            "incrementing.column.name": "id",
            "poll.interval.ms": 10000,
            "field.mapping": {
                "nip": "nip",
                "name": "nama_lengkap",
                "unit_code": "kode_unit",
                "position": "jabatan",
                "grade": "golongan",
                "status": "status_kepegawaian",
                "updated_at": "diubah_pada",
            },
            "errors.tolerance": "all",
        },
        {
            "name": "ptsp-permits-outbox",
            "connector.class": "outbox",
            "event.type": "permit.issued",
            "agency": "dpmptsp",
            "connection.url": f"mysql+pymysql://simpul_reader@ptsp.dpmptsp.{host}/ptsp",
            "table.name": "outbox",
            "outbox.aggregatetype": "permit",
            "poll.interval.ms": 2000,
            "errors.tolerance": "all",
        },
    ]
    for village in region.villages:
        office = offices[village.code]
        stubs.append(
            {
                "name": f"{office}-letters"[:63],
                "connector.class": "file",
                "event.type": "kelurahan.document.issued",
                "agency": office,
                "input.path": f"var/drop/{office}",
                "field.mapping": {
                    "document_number": "nomor_surat",
                    "document_type": "jenis_surat",
                    "kelurahan_code": "kode_kelurahan",
                    "resident_nik": "nik",
                    "purpose": "keperluan",
                    "issued_at": "tanggal_terbit",
                },
                "errors.tolerance": "all",
            }
        )
    return stubs


def _flow(item: dict[str, Any]) -> str:
    return yaml.safe_dump(item, default_flow_style=True, sort_keys=False, width=10_000).strip()


def _block(items: list[dict[str, Any]]) -> str:
    return yaml.safe_dump(items, sort_keys=False, allow_unicode=True, width=100).rstrip()


def render(data: dict[str, Any]) -> str:
    """The topology as commented YAML, one line per agency, event type and kelurahan."""
    region = regency(data["region_code"])
    lines = [
        f"# {data['city']} ({region.province}, regency code "
        f"{data['region_code'][:2]}.{data['region_code'][2:]}): written by `simpul init`.",
        f"# Kecamatan and kelurahan/desa codes: {EDITION} ({SOURCE});",
        f"# {len(region.districts)} kecamatan, {len(region.kelurahan)} kelurahan, "
        f"{len(region.desa)} desa. Edit freely; `simpul topology check` validates the result.",
        f"city: {data['city']}",
        f'region_code: "{data["region_code"]}"',
        f"replication: {data['replication']}",
        "# Whether a kelurahan/desa office may issue a letter for a resident of another",
        "# kelurahan (the letter then names both; see kelurahan.document.issued).",
        f"offices_issue_for_any_kelurahan: {str(data['offices_issue_for_any_kelurahan']).lower()}",
        "",
        "# cadence: how often an agency is expected to publish (m, h, d, w; default 1d).",
        "agencies:",
        *(f"  - {_flow(a)}" for a in data["agencies"]),
        "",
        "event_types:",
        *(f"  - {_flow(t)}" for t in data["event_types"]),
        "",
        "# Derived events (docs/joins.md).",
        "joins:",
        _indent(_block(data["joins"])),
        "",
        "kelurahan:",
    ]
    district = None
    for kel in data["kelurahan"]:
        if kel["district"] != district:
            district = kel["district"]
            code = kel["code"]
            lines.append(f"  # Kecamatan {district} ({code[:2]}.{code[2:4]}.{code[4:6]})")
        lines.append(f"  - {_flow(kel)}")
    lines += [
        "",
        "# Who receives what, for which purpose (UU 27/2022); see docs/subscriptions.md.",
        "subscriptions:",
        _indent(_block(data["subscriptions"])),
        "",
        "# Connector stubs: the usual systems and a monthly CSV drop per village office.",
        "# Hosts and table names are guesses to confirm with each agency (docs/connectors.md).",
        "connectors:",
        _indent(_block(data["connectors"])),
        "",
    ]
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" if line else line for line in text.splitlines())


def init_topology(code: str) -> tuple[str, str]:
    """``(file stem, YAML text)`` for kabupaten/kota ``code``."""
    data = build_topology(code)
    return city_slug(regency(code)), render(data)
