"""Join events for the join logic's pure-function tests: an employee, an assessment, a letter,
a death, as the joins service receives them."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from simpul.envelope import Envelope
from simpul.topology.model import Topology
from streams.ingest.pipeline import RawRecord
from streams.joins.state import JoinEvent, JoinLogic

NIP = "198503122010011003"


NIK = "7271025203880002"


T0 = dt.datetime(2026, 11, 1, 8, tzinfo=dt.UTC)


def logic(topology: Topology, name: str, wait_s: float = 10) -> JoinLogic:
    join = next(j for j in topology.joins if j.name == name)
    return JoinLogic(join, topology.event_type(join.output), wait_s)


def event(
    type_name: str, payload: dict[str, Any], at: dt.datetime = T0, since: float = 0.0
) -> JoinEvent:
    envelope = Envelope(type=type_name, source="/agency/x", id=str(uuid.uuid4()), time=at)
    record = RawRecord(f"simpul.valid.{type_name}", 0, 0, b"k", b"v", envelope.to_headers())
    return JoinEvent(record, envelope, payload, since)


def employee(grade: str, at: dt.datetime = T0) -> JoinEvent:
    payload = {
        "nip": NIP,
        "name": "Siti Lamadjido",
        "unit_code": "DISDIK-02",
        "position": "Guru Ahli Muda",
        "grade": grade,
        "status": "ACTIVE",
        "updated_at": at,
    }
    return event("hr.employee.updated", payload, at)


def assessment(since: float = 0.0) -> JoinEvent:
    payload = {
        "assessment_id": f"EKIN-{uuid.uuid4().hex[:6]}",
        "nip": NIP,
        "period": "2026-10",
        "rating": "AS_EXPECTED",
        "score": 95.0,
        "assessor_nip": "197801012005011002",
    }
    return event("hr.performance.assessed", payload, T0, since)


def recipient(status: str, at: dt.datetime = T0) -> JoinEvent:
    payload = {"nik": NIK, "programs": ["PKH"], "status": status, "kelurahan_code": "7271021002"}
    return event("social.recipient.updated", payload, at)


def sktm(document_type: str = "SKTM", since: float = 0.0) -> JoinEvent:
    payload = {
        "document_number": f"470/{uuid.uuid4().hex[:5]}/1002/2026",
        "document_type": document_type,
        "kelurahan_code": "7271021002",
        "resident_nik": NIK,
        "purpose": "Beasiswa",
        "issued_at": T0,
    }
    return event("kelurahan.document.issued", payload, T0, since)


def death(since: float = 0.0) -> JoinEvent:
    payload = {
        "nik": NIK,
        "date_of_death": dt.date(2026, 10, 30),
        "kelurahan_code": "7271021002",
        "certificate_number": "7271-KM-30102026-0001",
    }
    return event("population.death.registered", payload, T0, since)
