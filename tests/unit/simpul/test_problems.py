"""A payload problem is a value: its field and reason are read, never split out of the text."""

from __future__ import annotations

import json

import pytest

from simpul.codec import AvroSchema
from simpul.errors import Problem
from simpul.validation import check_avro, check_identifiers

pytestmark = pytest.mark.unit

SCHEMA = AvroSchema.from_text(
    1,
    json.dumps(
        {
            "type": "record",
            "name": "DeathRegistered",
            "namespace": "simpul.population.v1",
            "fields": [
                {"name": "nik", "type": "string", "simpul.identifier": "nik"},
                {"name": "certificate_number", "type": "string"},
            ],
        }
    ),
)


def test_a_bad_nik_is_a_problem_naming_its_field() -> None:
    [problem] = check_identifiers({"nik": "nik"}, {"nik": "72710112345"})
    assert isinstance(problem, Problem)
    assert problem.field == "nik"
    assert problem.reason and problem.reason in problem
    assert problem == f"nik: {problem.reason}"  # reads as the text it always was


def test_avro_problems_name_the_field_the_schema_refused() -> None:
    problems = check_avro(SCHEMA, {"nik": 7271, "certificate_number": "AL.123", "extra": 1})
    assert {p.field for p in problems} == {"extra", "nik"}
    assert all(p == f"{p.field}: {p.reason}" for p in problems)


NULLABLE = AvroSchema.from_text(
    2,
    json.dumps(
        {
            "type": "record",
            "name": "Letter",
            "namespace": "simpul.kelurahan.v1",
            "fields": [
                {"name": "number", "type": "string"},
                {"name": "note", "type": ["null", "string"], "default": None},
            ],
        }
    ),
)


@pytest.mark.parametrize("note", [None, "for the school"])
def test_a_value_of_either_union_branch_is_no_problem(note: str | None) -> None:
    assert check_avro(NULLABLE, {"number": "470/12", "note": note}) == []


def test_a_value_of_no_union_branch_names_its_field() -> None:
    problems = check_avro(NULLABLE, {"number": "470/12", "note": 12})
    assert problems  # one per branch it is not: "expected null", "expected string"
    assert {p.field for p in problems} == {"note"}
    assert all("<12>" in p.reason for p in problems)


def test_a_plain_string_from_outside_is_read_as_field_and_reason() -> None:
    problem = Problem.of("line 4: not JSON")
    assert (problem.field, problem.reason, str(problem)) == (
        "line 4",
        "not JSON",
        "line 4: not JSON",
    )
    assert Problem.of(problem) is problem
    bare = Problem.of("unreadable")
    assert (bare.field, str(bare)) == ("", "unreadable")
