"""Identifier checks return None when valid and a reason naming what is wrong otherwise."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simpul.identifiers import (
    check_kelurahan_code,
    check_nib,
    check_nik,
    check_nip,
    check_period,
    nik_is_female,
)

pytestmark = pytest.mark.unit

districts = st.sampled_from([f"7271{d:02d}" for d in range(1, 9)])
dates = st.dates(dt.date(1930, 1, 1), dt.date(2025, 12, 31))


@st.composite
def niks(draw: st.DrawFn) -> tuple[str, bool]:
    born = draw(dates)
    female = draw(st.booleans())
    day = born.day + (40 if female else 0)
    serial = draw(st.integers(1, 9999))
    nik = f"{draw(districts)}{day:02d}{born.month:02d}{born.year % 100:02d}{serial:04d}"
    return nik, female


@st.composite
def nips(draw: st.DrawFn) -> str:
    born = draw(st.dates(dt.date(1960, 1, 1), dt.date(2002, 12, 31)))
    years_later = draw(st.integers(18, 40))
    month = draw(st.integers(1, 12))
    sex = draw(st.sampled_from("12"))
    serial = draw(st.integers(1, 999))
    return f"{born:%Y%m%d}{born.year + years_later:04d}{month:02d}{sex}{serial:03d}"


@given(niks())
def test_generated_nik_is_valid_and_sex_is_read_from_the_day(case: tuple[str, bool]) -> None:
    nik, female = case
    assert check_nik(nik) is None
    assert nik_is_female(nik) is female


@given(niks(), st.integers(1, 15))
def test_truncated_nik_names_the_length(case: tuple[str, bool], cut: int) -> None:
    nik = case[0][:-cut]
    assert check_nik(nik) == f"expected 16 digits, got {len(nik)}"


@given(niks(), st.sampled_from("aZ -./"))
def test_nik_with_a_non_digit_is_refused(case: tuple[str, bool], char: str) -> None:
    nik = case[0][:5] + char + case[0][6:]
    assert "non-digit" in (check_nik(nik) or "")


def test_nik_reasons_are_specific() -> None:
    assert check_nik("7271011313900001") == "birth month 13 is not 01-12"
    assert check_nik("7271013102900001") == "birth date 2090-02-31 is not a calendar date"
    assert check_nik("7271017102900001") == "birth date 2090-02-31 is not a calendar date"
    assert check_nik("7271011502900000") == "serial 0000 is not issued"
    assert check_nik("0071011502900001") == "region code 007101 has a zero part"
    assert check_nik(7271011502900001) == "expected a string of 16 digits, got int"  # type: ignore[arg-type]
    assert check_nik("7271012902000001") is None  # 29 February 2000
    assert check_nik("7271016902000001") is None  # a woman born 29 February 2000


@given(nips())
def test_generated_nip_is_valid(nip: str) -> None:
    assert check_nip(nip) is None


def test_nip_reasons_are_specific() -> None:
    assert check_nip("19850312201001100") == "expected 18 digits, got 17"
    assert check_nip("198503122010011001") is None
    assert check_nip("198503122010131001") == "appointment month 13 is not 01-12"
    assert check_nip("198503121980011001") == ("appointment 1980-01 is not after birth 1985-03")
    assert check_nip("198503122010013001") == "sex digit '3' must be 1 (male) or 2 (female)"
    assert check_nip("198503122010011000") == "serial 000 is not issued"
    assert check_nip("198502302010011001") == "birth date 1985-02-30 is not a calendar date"


@given(districts, st.sampled_from("12"), st.integers(1, 999))
def test_kelurahan_and_desa_codes_are_valid(district: str, kind: str, number: int) -> None:
    assert check_kelurahan_code(f"{district}{kind}{number:03d}") is None


def test_kelurahan_code_reasons() -> None:
    assert check_kelurahan_code("7271013001") == (
        "village code 3001 must start with 1 (kelurahan) or 2 (desa)"
    )
    assert check_kelurahan_code("727101100") == "expected 10 digits, got 9"
    assert check_kelurahan_code("7271011000") == "village number 1000 is not issued"


@given(st.integers(10**12, 10**13 - 1))
def test_any_13_digit_nib_is_valid(number: int) -> None:
    assert check_nib(str(number)) is None


def test_nib_and_period_reasons() -> None:
    assert check_nib("12345") == "expected 13 digits, got 5"
    assert check_period("2026-11") is None
    assert check_period("2026-13") == "month 13 is not 01-12"
    assert check_period("11/2026") == "expected YYYY-MM, got '11/2026'"
