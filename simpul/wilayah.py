"""Kemendagri's code list of administrative areas (kode wilayah), shipped as data, read offline.

``simpul/data/wilayah.csv.gz`` holds every province, kabupaten/kota, kecamatan and
kelurahan/desa with its Kemendagri code and name, converted from the ``db/wilayah.sql`` of
github.com/cahyadsn/wilayah (source, edition and commit in ``simpul/data/README.md`` and
`EDITION`). `build` is the converter: ``python -m simpul.wilayah build wilayah.sql OUT.csv.gz``.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).parent / "data" / "wilayah.csv.gz"

#: Where the data comes from; repeated in simpul/data/README.md and in generated topologies.
EDITION = "Kepmendagri No. 300.2.2-2430 Tahun 2025"
SOURCE = (
    "github.com/cahyadsn/wilayah db/wilayah.sql, commit "
    "b7ad440 (file last changed d68e8d5, 2026-02-13)"
)

# One row of the SQL dump: ('72.71.01.1004','Besusu Barat') -- names escape ' as ''.
_ROW = re.compile(r"\('([0-9.]+)','((?:[^']|'')*)'\)")
_REGENCY = re.compile(r"^([0-9]{2})\.?([0-9]{2})$")


@dataclass(frozen=True, slots=True)
class Village:
    """A kelurahan (code 1xxx) or desa (2xxx), with its 10-digit code."""

    code: str
    name: str
    district_code: str
    district: str

    @property
    def is_desa(self) -> bool:
        return self.code[6] == "2"


@dataclass(frozen=True, slots=True)
class District:
    """A kecamatan (kemantren in Kota Yogyakarta, distrik in Papua), 6-digit code."""

    code: str
    name: str


@dataclass(frozen=True, slots=True)
class Regency:
    """A kabupaten or kota with its kecamatan and kelurahan/desa."""

    code: str
    name: str
    province: str
    districts: tuple[District, ...]
    villages: tuple[Village, ...]

    @property
    def kelurahan(self) -> list[Village]:
        return [v for v in self.villages if not v.is_desa]

    @property
    def desa(self) -> list[Village]:
        return [v for v in self.villages if v.is_desa]

    @property
    def is_kota(self) -> bool:
        return self.name.startswith("Kota ")


class UnknownRegion(LookupError):
    """A kode wilayah that names no kabupaten/kota in the shipped list."""


def parse_sql(text: str) -> Iterator[tuple[str, str]]:
    """``(dotted code, name)`` for every row of cahyadsn/wilayah's ``wilayah.sql``."""
    for match in _ROW.finditer(text):
        yield match.group(1), match.group(2).replace("''", "'").strip()


def build(sql_path: Path, out_path: Path) -> int:
    """Convert the SQL dump to the shipped gzip CSV (``kode,nama``; dotted codes); row count."""
    rows = sorted(parse_sql(sql_path.read_text(encoding="utf-8")))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["kode", "nama"])
    writer.writerows(rows)
    # mtime=0: the same input gives the same bytes, so a rebuild shows no diff.
    out_path.write_bytes(gzip.compress(buffer.getvalue().encode("utf-8"), mtime=0))
    return len(rows)


@lru_cache(maxsize=1)
def _rows() -> tuple[tuple[str, str], ...]:
    with gzip.open(DATA_FILE, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        return tuple((code, name) for code, name in reader)


def normalise_region_code(code: str) -> str:
    """``"72.71"`` or ``"7271"`` -> ``"7271"``; a clear error for anything else."""
    match = _REGENCY.fullmatch(code.strip())
    if not match:
        raise UnknownRegion(
            f"kode wilayah {code!r}: expected a kabupaten/kota code such as 72.71 or 7271"
        )
    return match.group(1) + match.group(2)


def regency(code: str) -> Regency:
    """The kabupaten/kota ``code`` (``72.71`` or ``7271``) with every kecamatan and village."""
    digits = normalise_region_code(code)
    dotted = f"{digits[:2]}.{digits[2:]}"
    names = dict(_rows())
    if dotted not in names:
        raise UnknownRegion(f"kode wilayah {code!r}: no kabupaten/kota {dotted} in {EDITION}")
    districts: dict[str, District] = {}
    villages = []
    for full, name in _rows():
        parts = full.split(".")
        if full.startswith(dotted + ".") and len(parts) == 3:
            districts[full] = District("".join(parts), name)
        elif full.startswith(dotted + ".") and len(parts) == 4:
            district = districts.get(".".join(parts[:3]))
            villages.append(
                Village(
                    "".join(parts),
                    name,
                    "".join(parts[:3]),
                    district.name if district else names.get(".".join(parts[:3]), ""),
                )
            )
    return Regency(
        digits,
        names[dotted],
        names.get(digits[:2], ""),
        tuple(districts.values()),
        tuple(sorted(villages, key=lambda v: v.code)),
    )


#: Province codes of Central (WITA) and Eastern (WIT) Indonesia Time; the rest keep WIB.
_WITA = {"51", "52", "53", "63", "64", "65", "71", "72", "73", "74", "75", "76"}
_WIT = {"81", "82", "91", "92", "93", "94", "95", "96"}


def timezone_for(region_code: str) -> str:
    """The IANA zone of a kabupaten/kota: Asia/Jakarta (WIB), Asia/Makassar (WITA) or
    Asia/Jayapura (WIT), by its province (UU/Keppres 41/1987 on Indonesia's time zones)."""
    province = normalise_region_code(region_code)[:2]
    if province in _WITA:
        return "Asia/Makassar"
    return "Asia/Jayapura" if province in _WIT else "Asia/Jakarta"


def regencies() -> Iterable[tuple[str, str]]:
    """``(4-digit code, name)`` of every kabupaten/kota."""
    for code, name in _rows():
        if len(code) == 5:
            yield code.replace(".", ""), name


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "build":
        print("usage: python -m simpul.wilayah build <wilayah.sql> <out.csv.gz>", file=sys.stderr)
        return 2
    count = build(Path(argv[1]), Path(argv[2]))
    print(f"{count} rows written to {argv[2]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
