"""Compatibility modes over the avro package's checker: the whole change × mode matrix."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from simpul.registry.compatibility import MODES, InvalidSchema, check

pytestmark = pytest.mark.unit

V1: dict[str, Any] = {
    "type": "record",
    "name": "PermitIssued",
    "namespace": "simpul.permit.v1",
    "fields": [
        {"name": "permit_number", "type": "string"},
        {"name": "applicant_nik", "type": "string", "simpul.identifier": "nik"},
        {"name": "floor_count", "type": "int"},
        {
            "name": "status",
            "type": {"type": "enum", "name": "Status", "symbols": ["ACTIVE", "REVOKED"]},
        },
    ],
}


def changed(edit: Callable[[dict[str, Any]], None]) -> str:
    schema = copy.deepcopy(V1)
    edit(schema)
    return json.dumps(schema)


def _fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return schema["fields"]


#: change → (new schema, BACKWARD ok, FORWARD ok) against V1.
CHANGES: dict[str, tuple[str, bool, bool]] = {
    "field added with a default": (
        changed(lambda s: _fields(s).append({"name": "note", "type": "string", "default": ""})),
        True,
        True,
    ),
    "field added without a default": (
        changed(lambda s: _fields(s).append({"name": "note", "type": "string"})),
        False,
        True,
    ),
    "field removed": (changed(lambda s: _fields(s).pop(2)), True, False),
    "type promoted int to long": (
        changed(lambda s: _fields(s)[2].update(type="long")),
        True,
        False,
    ),
    "enum symbol added": (
        changed(lambda s: _fields(s)[3]["type"].update(symbols=["ACTIVE", "REVOKED", "FROZEN"])),
        True,
        False,
    ),
    "field renamed with an alias": (
        changed(lambda s: _fields(s)[1].update(name="nik", aliases=["applicant_nik"])),
        True,
        False,
    ),
    "field renamed without an alias": (
        changed(lambda s: _fields(s)[1].update(name="nik")),
        False,
        False,
    ),
}


def expected(mode: str, backward: bool, forward: bool) -> bool:
    base = mode.removesuffix("_TRANSITIVE")
    return {
        "BACKWARD": backward,
        "FORWARD": forward,
        "FULL": backward and forward,
        "NONE": True,
    }[base]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("change", CHANGES)
def test_change_is_judged_by_mode(change: str, mode: str) -> None:
    new, backward, forward = CHANGES[change]
    problems = check(new, [(1, json.dumps(V1))], mode)
    assert (not problems) is expected(mode, backward, forward), [p.explain() for p in problems]


def test_explanation_names_the_field_and_the_direction() -> None:
    new, _, _ = CHANGES["field added without a default"]
    [problem] = check(new, [(3, json.dumps(V1))], "BACKWARD")
    assert problem.field == "note"
    assert "no default" in problem.explain()
    assert "version 3" in problem.explain()

    new, _, _ = CHANGES["type promoted int to long"]
    [problem] = check(new, [(1, json.dumps(V1))], "FORWARD")
    assert problem.field == "floor_count"
    assert "readers still on version 1" in problem.explain()

    new, _, _ = CHANGES["enum symbol added"]
    [problem] = check(new, [(1, json.dumps(V1))], "FORWARD")
    assert problem.field == "status" and "FROZEN" in problem.explain()


def test_transitive_modes_check_every_version_not_only_the_latest() -> None:
    v2 = changed(lambda s: _fields(s).append({"name": "note", "type": "string", "default": ""}))
    # v3 drops the default: it reads v2 data (which has the field) but not v1 data.
    v3 = changed(lambda s: _fields(s).append({"name": "note", "type": "string"}))
    history = [(1, json.dumps(V1)), (2, v2)]
    assert check(v3, history, "BACKWARD") == []
    [problem] = check(v3, history, "BACKWARD_TRANSITIVE")
    assert problem.version == 1 and problem.field == "note"
    assert check(v3, history, "FULL") == []
    assert check(v3, history, "FULL_TRANSITIVE")


def test_first_version_and_none_mode_accept_anything() -> None:
    new, _, _ = CHANGES["field renamed without an alias"]
    assert check(new, [], "FULL_TRANSITIVE") == []
    assert check(new, [(1, json.dumps(V1))], "NONE") == []


def test_invalid_schema_and_unknown_mode_are_refused_with_a_reason() -> None:
    with pytest.raises(InvalidSchema, match="not valid JSON"):
        check("{not json", [], "BACKWARD")
    with pytest.raises(InvalidSchema, match="not a valid Avro schema"):
        check('{"type": "record", "name": "X", "fields": [{"name": "a"}]}', [], "BACKWARD")
    with pytest.raises(ValueError, match="compatibility: 'SIDEWAYS'"):
        check(json.dumps(V1), [], "SIDEWAYS")


def test_several_problems_each_name_their_own_field() -> None:
    def edit(schema: dict[str, Any]) -> None:
        _fields(schema)[1]["name"] = "nik"
        _fields(schema)[2]["type"] = "string"
        _fields(schema).append({"name": "note", "type": "string"})

    problems = check(changed(edit), [(1, json.dumps(V1))], "BACKWARD")
    by_field = {p.field: p for p in problems}
    assert set(by_field) == {"nik", "floor_count", "note"}
    assert by_field["floor_count"].kind == "type_mismatch"
    assert "string" in by_field["floor_count"].explain()
    assert by_field["note"].kind == "reader_field_missing_default_value"
