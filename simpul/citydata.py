"""Realistic, generated city data for examples, the simulator, tests and benchmarks; never
real people.

In the core because a product surface needs it: the HTTP ingress's catalogue shows a valid
generated example of every type (`connectors.ingress.catalogue`).

Residents live in the topology's kelurahan (their NIK carries its kecamatan code); each event
comes from the agency the topology names as its producer, and only from onboarded agencies.
The same residents (NIK) and civil servants (NIP) recur across event types, so joins match.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from simpul.identifiers import check_nik, check_nip
from simpul.topology.model import Topology

FIRST_NAMES_M = [
    "Muhammad",
    "Ahmad",
    "Rahmat",
    "Andi",
    "Moh.",
    "Fadli",
    "Irwan",
    "Syamsul",
    "Hendra",
    "Arif",
    "Rizal",
    "Taufik",
    "Yusuf",
    "Abdul",
    "Iqbal",
    "Ridwan",
]
FIRST_NAMES_F = [
    "Siti",
    "Nur",
    "Dewi",
    "Fitri",
    "Sri",
    "Rahmawati",
    "Nurhayati",
    "Ayu",
    "Indah",
    "Wahyuni",
    "Hasnah",
    "Kartini",
    "Nirwana",
    "Megawati",
    "Sitti",
    "Ani",
]
LAST_NAMES = [
    "Lamasitudju",
    "Tombolotutu",
    "Lasadindi",
    "Pettalolo",
    "Mangge",
    "Djanggola",
    "Lamakarate",
    "Pakamundi",
    "Daeng Malewa",
    "Latjeba",
    "Bantilan",
    "Tanjumbulu",
    "Saleh",
    "Hasan",
    "Rauf",
    "Mustafa",
    "Ramli",
    "Lapadjalai",
    "Masyhuddin",
]
UNITS = {
    "4.01.01": "Sekretariat Daerah",
    "5.01.01": "BKPSDM",
    "2.18.01": "DPMPTSP",
    "1.06.01": "Dinas Sosial",
    "2.12.01": "Dukcapil",
    "5.02.01": "BKD",
    "2.16.01": "Diskominfo",
    "1.01.01": "Dinas Pendidikan",
    "1.02.01": "Dinas Kesehatan",
}
POSITIONS = [
    "Analis Kepegawaian",
    "Pranata Komputer",
    "Penata Perizinan",
    "Pekerja Sosial",
    "Administrator Database Kependudukan",
    "Bendahara",
    "Kepala Seksi",
    "Kepala Bidang",
    "Guru Ahli Pertama",
    "Perawat Terampil",
    "Arsiparis",
]
GRADES = ["II/a", "II/c", "III/a", "III/b", "III/c", "III/d", "IV/a", "IV/b"]
PERMIT_TYPES = ["PBG", "SLF", "SIP_DOKTER", "SIP_BIDAN", "IZIN_REKLAME", "SIUP_MIKRO", "TDUP"]
BUSINESS = [
    "Warung Kaledo",
    "Toko Bawang Goreng",
    "Bengkel",
    "Apotek",
    "Kios Tenun Donggala",
    "Rumah Makan Uta Dada",
    "Laundry",
    "Percetakan",
    "Klinik Pratama",
    "Kedai Kopi",
]
PURPOSES = {
    "SKTM": ["keringanan biaya sekolah", "berobat di RSUD Undata", "beasiswa kuliah"],
    "DOMISILI": ["pembukaan rekening bank", "pendaftaran sekolah"],
    "SKU": ["pengajuan KUR", "izin usaha mikro"],
    "PENGANTAR_SKCK": ["melamar pekerjaan"],
    "PINDAH": ["pindah ke Kabupaten Sigi"],
}
DISTRICT_CODES = [f"7271{d:02d}" for d in range(1, 9)]

#: Share of simulated traffic per event type.
WEIGHTS = {
    "hr.employee.updated": 15,
    "hr.performance.assessed": 15,
    "permit.issued": 15,
    "kelurahan.document.issued": 25,
    "social.recipient.updated": 20,
    "population.death.registered": 10,
}


@dataclass(frozen=True, slots=True)
class Resident:
    nik: str
    name: str
    kelurahan_code: str


@dataclass(frozen=True, slots=True)
class Employee:
    nip: str
    name: str
    unit_code: str


def make_nik(rng: random.Random, district_code: str) -> str:
    female = rng.random() < 0.5
    birth = dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(0, 365 * 55))
    day = birth.day + (40 if female else 0)
    born = f"{day:02d}{birth.month:02d}{birth.year % 100:02d}"
    nik = f"{district_code}{born}{rng.randrange(1, 10000):04d}"
    assert check_nik(nik) is None, nik
    return nik


def bank_account_ref(region_code: str, nip: str) -> str:
    """A generated salary account at the province's regional bank (BPD), stable per NIP."""
    digits = int(hashlib.sha256(nip.encode()).hexdigest()[:12], 16) % 10**10
    return f"BPD{region_code[:2]}-{digits:010d}"


def make_nip(rng: random.Random) -> str:
    birth = dt.date(1966, 1, 1) + dt.timedelta(days=rng.randrange(0, 365 * 34))
    appointed = dt.date(birth.year + rng.randrange(22, 36), rng.randrange(1, 13), 1)
    nip = f"{birth:%Y%m%d}{appointed:%Y%m}{rng.choice('12')}{rng.randrange(1, 1000):03d}"
    assert check_nip(nip) is None, nip
    return nip


@dataclass
class PaluData:
    """A generated city: residents, civil servants, and payload factories per event type.

    Named for Kota Palu, the first city; any topology works (`CityData` is the same class).
    """

    topology: Topology
    seed: int = 7271
    residents_count: int = 5000
    employees_count: int = 800
    rng: random.Random = field(init=False)
    residents: list[Resident] = field(init=False)
    employees: list[Employee] = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        kelurahan = [k.code for k in self.topology.kelurahan] or ["7271011004"]
        self.residents = []
        for _ in range(self.residents_count):
            kel = self.rng.choice(kelurahan)
            self.residents.append(Resident(make_nik(self.rng, kel[:6]), self._name(), kel))
        self.employees = [
            Employee(make_nip(self.rng), self._name(), self.rng.choice(list(UNITS)))
            for _ in range(self.employees_count)
        ]
        self._offices = {
            a.kelurahan_code: a.code
            for a in self.topology.agencies
            if a.kelurahan_code and a.onboarded
        }
        self._producers = {t.name: self._producer(t.producers) for t in self.topology.event_types}
        self._any_office = self.topology.offices_issue_for_any_kelurahan
        # A second onboarded producer of staff records (Kota Kupang's `bkn`, BKN's national
        # register beside BKPP's SIMPEG) sends its own view of staff already known locally.
        self._national = self._second_producer("hr.employee.updated")
        self._local_staff: dict[str, dict[str, Any]] = {}
        # id() of the national records handed out, to send each from the national agency.
        self._national_ids: set[tuple[int, str, dt.datetime]] = set()
        self._serial = 0
        # Who has been published, so that the joins (docs/joins.md) find partners: most
        # assessments are of employees already known, some deaths are of recipients.
        self._known_employees: list[Employee] = []
        self._recipients: list[Resident] = []

    def _name(self) -> str:
        first = self.rng.choice(FIRST_NAMES_M + FIRST_NAMES_F)
        return f"{first} {self.rng.choice(LAST_NAMES)}"

    def _next(self) -> int:
        self._serial += 1
        return self._serial

    def _producer(self, patterns: list[str]) -> str | None:
        """The first onboarded agency the topology lets produce a type."""
        for agency in self.topology.agencies:
            if (
                agency.onboarded
                and not agency.system
                and not agency.kelurahan_code
                and any(fnmatch.fnmatchcase(agency.code, p) for p in patterns)
            ):
                return agency.code
        return None

    def _second_producer(self, event_type: str) -> str | None:
        if event_type not in self.topology.types_by_name:
            return None
        first = self._producers.get(event_type)
        etype = self.topology.event_type(event_type)
        return next(
            (
                a.code
                for a in self.topology.agencies
                if a.onboarded
                and not a.system
                and not a.kelurahan_code
                and a.code != first
                and etype.may_produce(a.code)
            ),
            None,
        )

    @property
    def simulated_types(self) -> list[str]:
        """Event types some onboarded agency of this city sends (weights in `WEIGHTS`)."""
        return [
            name
            for name in WEIGHTS
            if name in self.topology.types_by_name
            and (self._offices if name == "kelurahan.document.issued" else self._producers[name])
        ]

    def intruder(self, event_type: str) -> str:
        """An agency that may not produce ``event_type`` (for unauthorized test traffic)."""
        etype = self.topology.event_type(event_type)
        candidates = [a.code for a in self.topology.agencies if not etype.may_produce(a.code)]
        return "kominfo" if "kominfo" in candidates else candidates[0]

    def producer_of(self, event_type: str, payload: dict[str, Any]) -> str:
        if event_type == "kelurahan.document.issued":
            return self._offices[payload.get("issuing_kelurahan_code") or payload["kelurahan_code"]]
        mark = (id(payload), payload.get("nip"), payload.get("updated_at"))
        if self._national and mark in self._national_ids:
            self._national_ids.discard(mark)
            return self._national
        producer = self._producers.get(event_type)
        if producer is None:
            raise KeyError(f"no onboarded agency of {self.topology.city} produces {event_type}")
        return producer

    def payload(self, event_type: str, now: dt.datetime) -> dict[str, Any]:
        rng = self.rng
        now = now.replace(microsecond=(now.microsecond // 1000) * 1000)
        if event_type == "hr.employee.updated":
            if self._national and self._local_staff and rng.random() < 0.25:
                return self._national_record(now)
            e = rng.choice(self.employees)
            self._known_employees.append(e)
            record = {
                "nip": e.nip,
                "name": e.name,
                "unit_code": e.unit_code,
                "position": rng.choice(POSITIONS),
                "grade": rng.choice(GRADES),
                "status": rng.choices(["ACTIVE", "ON_LEAVE", "RETIRED"], [90, 7, 3])[0],
                "updated_at": now,
                "bank_account_ref": bank_account_ref(self.topology.region_code, e.nip),
            }
            if self._national:
                self._local_staff[e.nip] = record
            return record
        if event_type == "hr.performance.assessed":
            known = self._known_employees and rng.random() < 0.9
            e = rng.choice(self._known_employees if known else self.employees)
            boss = rng.choice(self.employees)
            period = f"{now.year}-{now.month:02d}"
            return {
                "assessment_id": f"EKIN-{period}-{e.nip[-6:]}-{self._next()}",
                "nip": e.nip,
                "period": period,
                "rating": rng.choices(["ABOVE", "AS_EXPECTED", "BELOW"], [20, 70, 10])[0],
                "score": round(rng.uniform(60, 115), 2),
                "assessor_nip": boss.nip,
            }
        if event_type == "permit.issued":
            r = rng.choice(self.residents)
            number = f"503/{self._next():05d}/DPMPTSP/{now.year}"
            return {
                "permit_number": number,
                "permit_type": rng.choice(PERMIT_TYPES),
                "nib": f"{rng.randrange(10**12, 10**13)}",
                "applicant_nik": r.nik,
                "business_name": f"{rng.choice(BUSINESS)} {r.name.split()[-1]}",
                "kelurahan_code": r.kelurahan_code,
                "issued_at": now,
                "valid_until": (now + dt.timedelta(days=365 * 5)).date()
                if rng.random() < 0.7
                else None,
                "signature_digest": hashlib.sha256(number.encode()).hexdigest(),
            }
        if event_type == "kelurahan.document.issued":
            kel = rng.choice(sorted(self._offices))
            r = rng.choice(
                [x for x in self.residents[:500] if x.kelurahan_code == kel] or self.residents
            )
            doc_type = rng.choices(list(PURPOSES), [35, 25, 20, 10, 10])[0]
            letter = {
                "document_number": f"470/{self._next():05d}/{kel[-4:]}/{now.year}",
                "document_type": doc_type,
                "kelurahan_code": kel,
                "resident_nik": r.nik,
                "purpose": rng.choice(PURPOSES[doc_type]),
                "issued_at": now,
            }
            # Where any office may issue for any resident (Kota Kupang's Soda Molek), a
            # third of letters are for residents of another kelurahan.
            if self._any_office and rng.random() < 0.3:
                other = rng.choice(self.residents)
                if other.kelurahan_code != kel:
                    letter["resident_nik"] = other.nik
                    letter["kelurahan_code"] = other.kelurahan_code
                    letter["issuing_kelurahan_code"] = kel
            return letter
        if event_type == "social.recipient.updated":
            r = rng.choice(self.residents)
            self._recipients.append(r)
            programs = sorted(rng.sample(["PKH", "BPNT", "PBI_JK", "ATENSI"], rng.randrange(0, 3)))
            return {
                "nik": r.nik,
                "programs": programs,
                "disability_category": rng.choice(["PHYSICAL", "SENSORY", "INTELLECTUAL"])
                if rng.random() < 0.08
                else None,
                "kelurahan_code": r.kelurahan_code,
                "status": rng.choices(["ACTIVE", "SUSPENDED", "GRADUATED"], [85, 10, 5])[0],
                "updated_at": now,
            }
        if event_type == "population.death.registered":
            recipient = self._recipients and rng.random() < 0.3
            r = rng.choice(self._recipients if recipient else self.residents)
            return {
                "nik": r.nik,
                "date_of_death": (now - dt.timedelta(days=rng.randrange(1, 30))).date(),
                "kelurahan_code": r.kelurahan_code,
                "certificate_number": (
                    f"{self.topology.region_code}-KM-{now:%d%m%Y}-{self._next():04d}"
                ),
            }
        raise KeyError(f"no generator for event type {event_type!r}")

    def _national_record(self, now: dt.datetime) -> dict[str, Any]:
        """The national register's view of a known employee: the same master data mostly, a
        rank already promoted there now and then, and no salary account (BKN holds none)."""
        local = self._local_staff[self.rng.choice(sorted(self._local_staff))]
        record = {**local, "updated_at": now, "bank_account_ref": None}
        if self.rng.random() < 0.15:
            record["grade"] = GRADES[min(GRADES.index(local["grade"]) + 1, len(GRADES) - 1)]
        self._national_ids.add((id(record), record["nip"], now))
        return record

    def corrupt(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A payload broken in one known way (only for the payload-level kinds)."""
        broken = dict(payload)
        if kind == "bad_nik":
            field_name = (
                next(f for f in ("nik", "resident_nik", "applicant_nik") if f in broken)
                if any(f in broken for f in ("nik", "resident_nik", "applicant_nik"))
                else None
            )
            if field_name is None:  # types without a NIK get a broken NIP instead
                broken["nip"] = broken["nip"][:-1]
            else:
                broken[field_name] = broken[field_name][:15]
        elif kind == "bad_kelurahan":
            if "kelurahan_code" in broken:
                broken["kelurahan_code"] = broken["kelurahan_code"][:6] + "9001"
            else:
                broken["nip"] = "19" + broken["nip"][2:8] + "00" + broken["nip"][10:]
        return broken


CityData = PaluData
