"""The resolver never refuses an id on the word of a source that was down."""

from __future__ import annotations

import json

import pytest

from simpul.errors import InvalidMessage
from simpul.registry.resolver import SchemaResolver

pytestmark = pytest.mark.unit

SUBJECT = "simpul.in.permit.issued-value"


def schema_text(extra: int) -> str:
    fields = [{"name": "permit_number", "type": "string"}]
    fields += [{"name": f"field_{i}", "type": "int", "default": 0} for i in range(extra)]
    return json.dumps({"type": "record", "name": "PermitIssued", "fields": fields})


class FlakyRegistry:
    """A `SchemaSource` that behaves as `RegistryClient` does: while down, what it answered
    before comes from its cache (the subject's ids), and what it never saw raises."""

    def __init__(self) -> None:
        self.down = False
        self.schemas = {1: schema_text(0)}
        self.subjects = {SUBJECT: {1}, "simpul.in.hr.employee.updated-value": {7}}
        self.schemas[7] = schema_text(3)
        self._cached: dict[str, set[int]] = {}

    def schema(self, schema_id: int) -> str | None:
        if self.down:
            raise ConnectionError("registry did not answer")
        return self.schemas.get(schema_id)

    def latest(self, subject: str) -> tuple[int, int] | None:
        ids = self.subjects.get(subject)
        return (max(ids), len(ids)) if ids else None

    def subject_ids(self, subject: str) -> set[int]:
        if self.down:
            return self._cached[subject]  # the client's stale answer
        self._cached[subject] = set(self.subjects.get(subject, set()))
        return self._cached[subject]


def test_an_id_registered_while_the_registry_was_down_is_not_refused() -> None:
    registry = FlakyRegistry()
    resolver = SchemaResolver(registry)
    assert resolver.belongs_to(1, SUBJECT)
    registry.down = True
    registry.schemas[2] = schema_text(1)  # registered straight into the store meanwhile
    registry.subjects[SUBJECT].add(2)
    with pytest.raises(ConnectionError):  # the caller retries; nothing is remembered
        resolver.belongs_to(2, SUBJECT)
    registry.down = False
    assert resolver.belongs_to(2, SUBJECT)


def test_an_id_of_another_subject_is_refused_and_an_unknown_one_is_invalid() -> None:
    resolver = SchemaResolver(FlakyRegistry())
    assert not resolver.belongs_to(7, SUBJECT)
    assert not resolver.belongs_to(7, SUBJECT)  # remembered, not read again
    with pytest.raises(InvalidMessage) as unknown:
        resolver.belongs_to(99, SUBJECT)
    assert unknown.value.code == "schema.unknown_id"


def test_cached_answers_only_what_was_read_before_and_never_asks_the_source() -> None:
    registry = FlakyRegistry()
    resolver = SchemaResolver(registry)
    assert resolver.cached(1) is None
    schema = resolver.by_id(1)
    registry.down = True  # the deliverer's fast path must not touch the store
    assert resolver.cached(1) is schema
    assert resolver.cached(7) is None
