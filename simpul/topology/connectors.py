"""The connector declaration model, in the shape Kafka Connect users know.

A connector is configuration plus one class. The common keys (``name``, ``connector.class``,
``tasks.max``, ``event.type``, ``agency``, ``field.mapping``, ``errors.*``) are checked here,
against the topology; the keys of one kind (``connection.url``, ``mode``, ``path`` ...) are
checked by that kind's own options model when the runtime or `simpul topology check` resolves
the kind through the ``simpul.connectors`` entry points.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simpul import yamltext

if TYPE_CHECKING:
    from simpul.topology.model import Topology

_CONNECTOR_NAME = r"^[a-z][a-z0-9-]{1,62}$"
_KIND_NAME = r"^[a-z][a-z0-9_.-]{0,62}$"


class ConnectorSpec(BaseModel):
    """One declared connector. Unknown keys are the kind's own options, checked by the kind."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    name: Annotated[str, Field(pattern=_CONNECTOR_NAME)]
    kind: Annotated[str, Field(alias="connector.class", pattern=_KIND_NAME)]
    tasks_max: Annotated[int, Field(alias="tasks.max", ge=1, le=64)] = 1
    event_type: Annotated[str, Field(alias="event.type", min_length=3)]
    agency: Annotated[str, Field(min_length=2)]
    field_mapping: Annotated[dict[str, str], Field(alias="field.mapping")] = {}
    errors_tolerance: Annotated[Literal["none", "all"], Field(alias="errors.tolerance")] = "none"
    errors_retry_timeout_ms: Annotated[int, Field(alias="errors.retry.timeout", ge=-1)] = -1
    dlq_topic: Annotated[
        str | None, Field(alias="errors.deadletterqueue.topic.name", pattern=r"^[A-Za-z0-9._-]+$")
    ] = None

    @property
    def options(self) -> dict[str, Any]:
        """The kind-specific keys, as declared."""
        return dict(self.model_extra or {})

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"simpul.dlq.{self.event_type}"

    def declared(self) -> dict[str, Any]:
        """The configuration as Kafka Connect's ``GET /connectors/{name}`` shows it."""
        data = self.model_dump(by_alias=True, exclude_none=True)
        data["tasks.max"] = str(self.tasks_max)
        return data


def check_connectors(topology: Topology, specs: list[ConnectorSpec], prefix: str) -> list[str]:
    """Cross-checks against the topology, each as ``<prefix>.<i>.<field>: reason``."""
    problems = []
    names: set[str] = set()
    for i, spec in enumerate(specs):
        where = f"{prefix}.{i}"
        if spec.name in names:
            problems.append(f"{where}.name: connector {spec.name!r} declared more than once")
        names.add(spec.name)
        etype = topology.types_by_name.get(spec.event_type)
        if etype is None:
            known = ", ".join(sorted(topology.types_by_name))
            problems.append(
                f"{where}.event.type: unknown event type {spec.event_type!r}; known: {known}"
            )
        if spec.agency not in topology.agencies_by_code:
            problems.append(f"{where}.agency: unknown agency {spec.agency!r}")
        elif etype is not None and not any(
            fnmatch.fnmatchcase(spec.agency, p) for p in etype.producers
        ):
            problems.append(
                f"{where}.agency: {spec.agency} may not produce {spec.event_type} "
                f"(producers: {', '.join(etype.producers)})"
            )
    return problems


class ConnectorConfigError(ValueError):
    """A connector declaration is invalid; the message lists each field and the reason."""


def _invalid(problems: list[str]) -> str:
    return "connector declarations are invalid:\n  " + "\n  ".join(problems)


def _format(error: ValidationError, prefix: str) -> list[str]:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "")
        lines.append(f"{path}: {item['msg'].removeprefix('Value error, ')}")
    return lines


def load_connector_files(
    directory: Path, region_code: str | None = None
) -> list[tuple[str, list[ConnectorSpec]]]:
    """Connector declarations from ``directory/*.yaml``: each file holds ``connectors: [...]``.

    A file that names a ``region_code`` applies only to that city's topology, so one
    directory can hold the connectors of several cities; a file without one applies to all.

    Raises `ConnectorConfigError` naming the file and the field path of every problem.
    """
    found: list[tuple[str, list[ConnectorSpec]]] = []
    problems: list[str] = []
    if not directory.is_dir():
        return found
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            data = yamltext.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            problems.append(f"{path}: cannot read: {error}")
            continue
        scope = data.get("region_code") if isinstance(data, dict) else None
        if region_code is not None and scope is not None and str(scope) != region_code:
            continue
        items = data.get("connectors") if isinstance(data, dict) else None
        if not isinstance(items, list):
            problems.append(f"{path}: connectors: expected a list of connector declarations")
            continue
        specs = []
        for i, item in enumerate(items):
            try:
                specs.append(ConnectorSpec.model_validate(item))
            except ValidationError as error:
                problems.extend(f"{path}: {line}" for line in _format(error, f"connectors.{i}"))
        found.append((str(path), specs))
    if problems:
        raise ConnectorConfigError(
            "connector declarations are invalid:\n  " + "\n  ".join(problems)
        )
    return found


def all_connectors(topology: Topology, directory: Path) -> list[ConnectorSpec]:
    """The topology's connectors plus those in ``directory``, checked together."""
    return [spec for spec, _ in located_connectors(topology, directory)]


def located_connectors(topology: Topology, directory: Path) -> list[tuple[ConnectorSpec, str]]:
    """Every connector with where it is declared (``connectors.2`` or ``<file>: connectors.0``),
    so later errors (a kind's options) name the place to fix."""
    specs = list(topology.connectors)
    located = [(spec, f"connectors.{i}") for i, spec in enumerate(specs)]
    for origin, file_specs in load_connector_files(directory, topology.region_code):
        specs.extend(file_specs)
        located.extend((spec, f"{origin}: connectors.{i}") for i, spec in enumerate(file_specs))
    problems = []
    for line in check_connectors(topology, specs, "connectors"):
        # Re-address the line to the file and index the connector came from.
        head, _, rest = line.partition(": ")
        index = int(head.split(".")[1])
        field_path = ".".join(head.split(".")[2:])
        problems.append(f"{located[index][1]}.{field_path}: {rest}")
    if problems:
        raise ConnectorConfigError(_invalid(problems))
    return located
