"""Simpul's own connector kinds as cases of the contract suite (connectors/testing.py): one
factory per kind (and backend); tests/integration/connectors/test_contract.py runs them. A new
kind is tested by adding one factory here and its name to `CASES` there.

A case knows how to add valid records to its source, how to add a bad one, and where the bad
one must show up (the dead-letter topic, or the kind's rejects file).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
)

from connectors.testing import Case, dead_lettered_by
from simpul.citydata import PaluData
from simpul.db import dumps, make_engine
from tests.support.paths import REPO_ROOT

EXAMPLE_PACKAGE = REPO_ROOT / "tests" / "example_connector"
_serial = itertools.count(1)


# -- database sources ---------------------------------------------------------------------------
def _pegawai(metadata: MetaData) -> Table:
    """A SIMPEG-like table as BKPSDM's system has it (Indonesian column names)."""
    return Table(
        "pegawai",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("nip", String(18), nullable=False),
        Column("nama_lengkap", Text, nullable=False),
        Column("kode_unit", String(32), nullable=False),
        Column("jabatan", Text, nullable=False),
        Column("golongan", String(8), nullable=False),
        Column("status_kepegawaian", String(16), nullable=False),
        Column("diubah_pada", DateTime(timezone=True), nullable=False),
    )


PEGAWAI_MAPPING = {
    "nip": "nip",
    "name": "nama_lengkap",
    "unit_code": "kode_unit",
    "position": "jabatan",
    "grade": "golongan",
    "status": "status_kepegawaian",
    "updated_at": "diubah_pada",
}


class PegawaiSource:
    """A SIMPEG-like `pegawai` table in a real database, rows with unique generated NIPs."""

    def __init__(self, url: str, topology: Any) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.table = _pegawai(MetaData())
        self.table.metadata.create_all(self.engine)
        self.data = PaluData(topology, seed=next(_serial) * 97, employees_count=1000)
        self.next_employee = 0

    def row(self, **override: Any) -> dict[str, Any]:
        employee = self.data.employees[self.next_employee]
        self.next_employee += 1
        payload = self.data.payload("hr.employee.updated", dt.datetime.now(dt.UTC))
        return {
            "nip": employee.nip,
            "nama_lengkap": employee.name,
            "kode_unit": employee.unit_code,
            "jabatan": payload["position"],
            "golongan": payload["grade"],
            "status_kepegawaian": payload["status"],
            "diubah_pada": dt.datetime.now(dt.UTC),
            **override,
        }

    def add(self, count: int) -> list[str]:
        rows = [self.row() for _ in range(count)]
        with self.engine.begin() as conn:
            conn.execute(insert(self.table), rows)
        return [r["nip"] for r in rows]

    def add_bad(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(self.table), [self.row(nip="19850717201001")])  # 14 digits


def _outbox(metadata: MetaData) -> Table:
    """Debezium's outbox table shape."""
    return Table(
        "outbox",
        metadata,
        Column("id", String(36), primary_key=True),
        Column("aggregatetype", String(255), nullable=False),
        Column("aggregateid", String(255), nullable=False),
        Column("type", String(255), nullable=False),
        Column("payload", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )


class OutboxSource:
    """DPMPTSP's permit system writing permits to its transactional outbox."""

    def __init__(self, url: str, topology: Any) -> None:
        self.engine = make_engine(url)
        self.table = _outbox(MetaData())
        self.table.metadata.create_all(self.engine)
        self.data = PaluData(topology, seed=next(_serial) * 89, residents_count=300)
        self.prefix = f"T{next(_serial)}"

    def _row(self, payload: dict[str, Any]) -> dict[str, Any]:
        import uuid

        return {
            "id": str(uuid.uuid4()),
            "aggregatetype": "permit",
            "aggregateid": payload["permit_number"],
            "type": "PermitIssued",
            "payload": dumps(payload),
            "created_at": dt.datetime.now(dt.UTC),
        }

    def payload(self) -> dict[str, Any]:
        payload = self.data.payload("permit.issued", dt.datetime.now(dt.UTC))
        payload["permit_number"] = f"{self.prefix}-{payload['permit_number']}"
        return payload

    def add(self, count: int) -> list[str]:
        payloads = [self.payload() for _ in range(count)]
        with self.engine.begin() as conn:
            for payload in payloads:  # one transaction per change, as the agency's system does
                conn.execute(insert(self.table), [self._row(payload)])
                time.sleep(0.002)
        return [p["permit_number"] for p in payloads]

    def add_bad(self) -> None:
        payload = self.payload()
        payload["nib"] = "12345"  # NIB must have 13 digits
        with self.engine.begin() as conn:
            conn.execute(insert(self.table), [self._row(payload)])

    def count(self) -> int:
        with self.engine.connect() as conn:
            return len(conn.execute(select(self.table.c.id)).all())


def database_case(kind: str, url: str, stack: Any) -> Case:
    name = f"contract-{kind}-{make_engine(url).dialect.name}-{next(_serial)}"
    if kind == "polling":
        source: Any = PegawaiSource(url, stack.topology)
        declaration = {
            "name": name,
            "connector.class": "polling",
            "event.type": "hr.employee.updated",
            "agency": "bkpsdm",
            "connection.url": url,
            "table.name": "pegawai",
            "mode": "timestamp+incrementing",
            "timestamp.column.name": "diubah_pada",
            "incrementing.column.name": "id",
            "field.mapping": PEGAWAI_MAPPING,
            "errors.tolerance": "all",
            "poll.interval.ms": 200,
        }
        event_type = "hr.employee.updated"
    else:
        source = OutboxSource(url, stack.topology)
        declaration = {
            "name": name,
            "connector.class": "outbox",
            "event.type": "permit.issued",
            "agency": "dpmptsp",
            "connection.url": url,
            "outbox.aggregatetype": "permit",
            "errors.tolerance": "all",
            "poll.interval.ms": 200,
        }
        event_type = "permit.issued"
    return Case(
        name,
        event_type,
        declaration,
        source.add,
        source.add_bad,
        lambda bootstrap: bool(dead_lettered_by(bootstrap, f"simpul.dlq.{event_type}", name)),
        [source.engine.dispose],
    )


# -- file drop ----------------------------------------------------------------------------------
LETTER_COLUMNS = {
    "document_number": "nomor_surat",
    "document_type": "jenis_surat",
    "kelurahan_code": "kode_kelurahan",
    "resident_nik": "nik",
    "purpose": "keperluan",
    "issued_at": "tanggal_terbit",
}


class LetterFiles:
    """Kelurahan Besusu Barat's monthly register of issued letters, exported as CSV."""

    def __init__(self, directory: Path, topology: Any) -> None:
        self.directory = directory
        self.data = PaluData(topology, seed=next(_serial) * 83, residents_count=300)
        self.files = 0

    def row(self) -> dict[str, str]:
        payload = self.data.payload("kelurahan.document.issued", dt.datetime.now(dt.UTC))
        payload["kelurahan_code"] = "7271011004"
        payload["document_number"] = f"F{next(_serial)}-{payload['document_number']}"
        payload["issued_at"] = payload["issued_at"].isoformat()
        return {LETTER_COLUMNS[k]: str(v) for k, v in payload.items()}

    def write(self, rows: list[dict[str, str]], suffix: str = ".csv") -> Path:
        import csv

        self.files += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"register-{self.files:03d}{suffix}"
        partial = path.with_name("." + path.name)  # written aside, then renamed: atomic
        with partial.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(LETTER_COLUMNS.values()))
            writer.writeheader()
            writer.writerows(rows)
        partial.rename(path)
        return path

    def add(self, count: int) -> list[str]:
        rows = [self.row() for _ in range(count)]
        self.write(rows)
        return [r["nomor_surat"] for r in rows]

    def add_bad(self) -> None:
        bad = self.row()
        bad["nik"] = "727101"  # a NIK has 16 digits
        self.write([bad])

    def rejects(self) -> list[Path]:
        return sorted(self.directory.glob("*/*.rejects.csv"))


def file_case(directory: Path, stack: Any) -> Case:
    name = f"contract-file-{next(_serial)}"
    files = LetterFiles(directory, stack.topology)
    declaration = {
        "name": name,
        "connector.class": "file",
        "event.type": "kelurahan.document.issued",
        "agency": "kel-besusu-barat",
        "input.path": str(directory),
        "field.mapping": LETTER_COLUMNS,
        "errors.tolerance": "all",
        "file.minimum.age.ms": 100,
        "poll.interval.ms": 200,
    }
    return Case(
        name,
        "kelurahan.document.issued",
        declaration,
        files.add,
        files.add_bad,
        lambda _bootstrap: any("nik" in p.read_text() for p in files.rejects()),
    )


# -- a third-party kind, installed with pip -----------------------------------------------------
@dataclass
class InstalledExample:
    pip: list[str]

    def uninstall(self) -> None:
        subprocess.run([*self.pip, "uninstall", "--yes", "--quiet", "simpul-tail-connector"])


def install_example_package(workdir: Path) -> InstalledExample:
    """``pip install`` the example package (built from a copy, so the source tree stays clean)."""
    import importlib

    source = workdir / "example_connector"
    shutil.copytree(EXAMPLE_PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "install", "--quiet", "--no-deps", str(source)],
        check=True,
        capture_output=True,
    )
    importlib.invalidate_caches()
    return InstalledExample(pip)


def tail_case(path: Path, stack: Any) -> Case:
    name = f"contract-tail-{next(_serial)}"
    data = PaluData(stack.topology, seed=next(_serial) * 79, residents_count=300)

    def append(lines: list[str]) -> None:
        with path.open("a", encoding="utf-8") as handle:
            handle.writelines(line + "\n" for line in lines)

    def add(count: int) -> list[str]:
        payloads = [
            data.payload("social.recipient.updated", dt.datetime.now(dt.UTC)) for _ in range(count)
        ]
        append([dumps(p) for p in payloads])
        return [p["nik"] for p in payloads]

    declaration = {
        "name": name,
        "connector.class": "tail",
        "event.type": "social.recipient.updated",
        "agency": "dinsos",
        "path": str(path),
        "poll.interval.ms": 200,
        "errors.tolerance": "all",
    }
    return Case(
        name,
        "social.recipient.updated",
        declaration,
        add,
        lambda: append(['{"nik": "7271', json.dumps({"nik": "1"})]),
        lambda bootstrap: bool(
            dead_lettered_by(bootstrap, "simpul.dlq.social.recipient.updated", name)
        ),
    )


# -- HTTP source --------------------------------------------------------------------------------
PTSP_COLUMNS = {"permit_number": "no_izin", "business_name": "nama_usaha", "applicant_nik": "nik"}


def http_case(stack: Any) -> Case:
    """DPMPTSP's PHP permit system POSTs its rows (its own column names) and retries until it
    gets an answer, as a well-behaved client does when the connector is down."""
    import threading
    import uuid

    import httpx

    from connectors.state import ApiKeyStore
    from simpul.cli.services.broker import free_port

    name = f"contract-http-{next(_serial)}"
    port = free_port()
    key = ApiKeyStore(make_engine(stack.settings.store.database_url)).create("dpmptsp")[1]
    source = OutboxSource("sqlite://", stack.topology)  # only for its permit payloads

    def row(payload: dict[str, Any]) -> dict[str, Any]:
        data = json.loads(dumps(payload))
        for field_name, column in PTSP_COLUMNS.items():
            data[column] = data.pop(field_name)
        return data

    def send(rows: list[dict[str, Any]]) -> None:
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4())}

        def retry() -> None:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    response = httpx.post(
                        f"http://127.0.0.1:{port}/records", json=rows, headers=headers, timeout=30
                    )
                    if response.status_code == 202:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)

        threading.Thread(target=retry, daemon=True).start()

    def add(count: int) -> list[str]:
        payloads = [source.payload() for _ in range(count)]
        send([row(p) for p in payloads])
        return [p["permit_number"] for p in payloads]

    def add_bad() -> None:
        payload = source.payload()
        payload["nib"] = "12"
        send([row(payload)])

    declaration = {
        "name": name,
        "connector.class": "http",
        "event.type": "permit.issued",
        "agency": "dpmptsp",
        "listen.host": "127.0.0.1",
        "listen.port": port,
        "field.mapping": PTSP_COLUMNS,
        "errors.tolerance": "all",
    }
    return Case(
        name,
        "permit.issued",
        declaration,
        add,
        add_bad,
        lambda bootstrap: bool(dead_lettered_by(bootstrap, "simpul.dlq.permit.issued", name)),
        [source.engine.dispose],
    )


# -- a paged REST register (BKN's SIASN, faked over real HTTP) ----------------------------------
def rest_case(stack: Any) -> Case:
    """BKN's national register of civil servants, read by changed-since cursor and pages."""
    from tests.support.fake_bkn import BKN_MAPPING, FakeBkn, bkn_record

    name = f"contract-rest-{next(_serial)}"
    bkn = FakeBkn().__enter__()
    data = PaluData(stack.topology, seed=next(_serial) * 73, employees_count=1000)
    employees = iter(data.employees)

    def add(count: int) -> list[str]:
        added = []
        for _ in range(count):
            employee = next(employees)
            bkn.add(bkn_record(employee, dt.datetime.now(dt.UTC)))
            added.append(employee.nip)
            time.sleep(0.002)
        return added

    def add_bad() -> None:
        employee = next(employees)
        bkn.add(bkn_record(employee, dt.datetime.now(dt.UTC), nipBaru=employee.nip[:14]))

    declaration = {
        "name": name,
        "connector.class": "rest",
        "event.type": "hr.employee.updated",
        "agency": "bkpsdm",
        "url": bkn.url,
        "page.size": 2,
        "cursor.field": "tglPerubahan",
        "id.field": "nipBaru",
        "field.mapping": BKN_MAPPING,
        "errors.tolerance": "all",
        "poll.interval.ms": 200,
    }
    return Case(
        name,
        "hr.employee.updated",
        declaration,
        add,
        add_bad,
        lambda bootstrap: bool(dead_lettered_by(bootstrap, "simpul.dlq.hr.employee.updated", name)),
        [lambda: bkn.__exit__(None, None, None)],
    )
