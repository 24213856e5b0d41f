"""Validation of Indonesian civil identifiers as pure functions that return the reason.

Each check returns ``None`` when the value is valid and a short English reason otherwise,
so callers can prefix the field name: ``f"{field}: {reason}"``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

_DIGITS = re.compile(r"[0-9]+")

Check = Callable[[str], str | None]


def _digits(value: object, length: int) -> str | None:
    if not isinstance(value, str):
        return f"expected a string of {length} digits, got {type(value).__name__}"
    if not _DIGITS.fullmatch(value):
        return f"expected {length} digits, got non-digit characters in {value!r}"
    if len(value) != length:
        return f"expected {length} digits, got {len(value)}"
    return None


def _date_or_reason(year: int, month: int, day: int, what: str) -> str | None:
    try:
        dt.date(year, month, day)
    except ValueError:
        return f"{what} {year:04d}-{month:02d}-{day:02d} is not a calendar date"
    return None


def check_nik(value: str) -> str | None:
    """NIK (Nomor Induk Kependudukan): 16 digits.

    Region (6: province, regency, district), birth date DDMMYY with 40 added to the day for
    women, then a 4-digit serial that is never 0000.
    """
    if reason := _digits(value, 16):
        return reason
    if value[:2] == "00" or value[2:4] == "00" or value[4:6] == "00":
        return f"region code {value[:6]} has a zero part"
    day, month, year = int(value[6:8]), int(value[8:10]), int(value[10:12])
    if day > 40:
        day -= 40
    if not 1 <= month <= 12:
        return f"birth month {month:02d} is not 01-12"
    # Two-digit year: any century is possible, so 2000 (a leap year) admits 29 February.
    if reason := _date_or_reason(2000 + year, month, day, "birth date"):
        return reason
    if value[12:] == "0000":
        return "serial 0000 is not issued"
    return None


def nik_is_female(value: str) -> bool:
    return int(value[6:8]) > 40


def check_nip(value: str) -> str | None:
    """NIP (civil servant number): 18 digits.

    Birth date YYYYMMDD, appointment (TMT CPNS) YYYYMM, sex 1 (male) or 2 (female), then a
    3-digit serial that is never 000.
    """
    if reason := _digits(value, 18):
        return reason
    year, month, day = int(value[0:4]), int(value[4:6]), int(value[6:8])
    if reason := _date_or_reason(year, month, day, "birth date"):
        return reason
    a_year, a_month = int(value[8:12]), int(value[12:14])
    if not 1 <= a_month <= 12:
        return f"appointment month {a_month:02d} is not 01-12"
    if (a_year, a_month) <= (year, month):
        return f"appointment {a_year:04d}-{a_month:02d} is not after birth {year:04d}-{month:02d}"
    if value[14] not in "12":
        return f"sex digit {value[14]!r} must be 1 (male) or 2 (female)"
    if value[15:] == "000":
        return "serial 000 is not issued"
    return None


def check_kelurahan_code(value: str) -> str | None:
    """Kelurahan/desa code: 10 digits.

    Province (2), regency/city (2), district (2), then 1xxx for a kelurahan or 2xxx for a desa.
    """
    if reason := _digits(value, 10):
        return reason
    if value[:2] == "00" or value[2:4] == "00" or value[4:6] == "00":
        return f"region code {value[:6]} has a zero part"
    if value[6] not in "12":
        return f"village code {value[6:]} must start with 1 (kelurahan) or 2 (desa)"
    if value[7:] == "000":
        return f"village number {value[6:]} is not issued"
    return None


def check_nib(value: str) -> str | None:
    """NIB (Nomor Induk Berusaha, business identity from OSS): 13 digits."""
    return _digits(value, 13)


_PERIOD = re.compile(r"([0-9]{4})-([0-9]{2})")


def check_period(value: str) -> str | None:
    """A month as YYYY-MM (e-Kinerja assessment period)."""
    if not isinstance(value, str) or not (m := _PERIOD.fullmatch(value)):
        return f"expected YYYY-MM, got {value!r}"
    if not 1 <= int(m.group(2)) <= 12:
        return f"month {m.group(2)} is not 01-12"
    return None


#: Identifier kinds a schema field can declare with ``"simpul.identifier": "<kind>"``.
CHECKS: dict[str, Check] = {
    "nik": check_nik,
    "nip": check_nip,
    "kelurahan_code": check_kelurahan_code,
    "nib": check_nib,
    "period": check_period,
}


_IDENTIFIER_RUN = re.compile(r"(?<!\d)\d{14,20}(?!\d)")
MASK_CHAR = "•"


def mask_identifiers(text: str) -> str:
    """Mask every run of 14-20 digits (a NIK, a NIP, or a broken one) to its first and last
    four, as subscriptions mask: for dead-letter reasons, logs and the dead_letters table."""
    return _IDENTIFIER_RUN.sub(lambda m: m[0][:4] + MASK_CHAR * (len(m[0]) - 8) + m[0][-4:], text)


def mask_log_records() -> None:
    """Every log record of this process, whoever logs it, has its NIK/NIP masked (the message
    is formatted once, here, then masked). Installed by the CLI for every command."""
    import logging

    previous = logging.getLogRecordFactory()
    if getattr(previous, "_simpul_masking", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return record
        masked = mask_identifiers(message)
        if masked != message:
            record.msg, record.args = masked, None
        return record

    # A mark on the function says it is installed; mypy does not model function attributes.
    factory._simpul_masking = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
