"""What the publisher and the worker both know about event types: schema, key, identifiers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simpul.codec import AvroSchema
from simpul.errors import Problem
from simpul.registry.resolver import SchemaResolver
from simpul.topology.model import Agency, EventType, Topology
from simpul.validation import check_avro, check_identifiers, identifier_fields


class EventCatalog:
    """Topology plus schemas: is this payload acceptable for this type from this agency?"""

    def __init__(self, topology: Topology, resolver: SchemaResolver) -> None:
        self.topology = topology
        self.resolver = resolver
        self._identifiers: dict[int, dict[str, str]] = {}

    def latest_schema(self, type_name: str) -> AvroSchema:
        return self.resolver.latest(self.topology.event_type(type_name).subject)

    def identifiers(self, schema: AvroSchema) -> dict[str, str]:
        found = self._identifiers.get(schema.id)
        if found is None:
            found = self._identifiers[schema.id] = identifier_fields(schema.definition)
        return found

    def payload_problems(
        self,
        event_type: EventType,
        schema: AvroSchema,
        payload: Mapping[str, Any],
        *,
        decoded: bool = False,
    ) -> list[Problem]:
        """Type and identifier problems, each naming its field; empty when acceptable.

        ``decoded=True`` says the payload was just decoded with ``schema``, so its Avro types
        are right by construction and only the identifier rules are checked.
        """
        problems = [] if decoded else check_avro(schema, payload)
        if not problems:
            problems = check_identifiers(self.identifiers(schema), payload)
            if event_type.key not in payload:
                problems.append(Problem(event_type.key, "key field missing"))
        return problems

    def scope_problem(self, agency: Agency, payload: Mapping[str, Any]) -> Problem | None:
        """A kelurahan office reports for its own kelurahan; where the topology lets offices
        issue for residents of other kelurahan, a letter names the issuing office's kelurahan
        in ``issuing_kelurahan_code`` and the resident's in ``kelurahan_code``."""
        own = agency.kelurahan_code
        resident = payload.get("kelurahan_code")
        issuing = payload.get("issuing_kelurahan_code")
        if not own:
            return None
        if issuing and issuing != own:
            return Problem(
                "issuing_kelurahan_code", f"{agency.code} issues for {own}, not {issuing}"
            )
        if resident and resident != own:
            if not self.topology.offices_issue_for_any_kelurahan:
                return Problem(
                    "kelurahan_code", f"{agency.code} may only report for {own}, not {resident}"
                )
            if not issuing:
                return Problem(
                    "issuing_kelurahan_code",
                    f"required when {agency.code} ({own}) issues for a resident of {resident}",
                )
        return None
