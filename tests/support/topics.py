"""Reading topics back with a plain client, the way an outside auditor would (`read_topic` is
the contract suite's, connectors/testing.py: one reader for both)."""

from __future__ import annotations

from connectors.testing import read_topic
from simpul.topology.model import Topology


def dead_letter_origins(bootstrap: str, topology: Topology) -> dict[tuple[str, str, str], dict]:
    """Distinct dead letters by their origin (topic, partition, offset), with their headers.

    The dead-letter topic is at-least-once too: a worker killed after producing a dead letter
    but before committing produces it again; the origin identifies the copies.
    """
    origins: dict[tuple[str, str, str], dict] = {}
    for et in topology.event_types:
        for message in read_topic(bootstrap, et.topic("dlq")):
            headers = {k: v.decode(errors="replace") for k, v in message.headers}
            origin = (
                headers["simpul_dlq_topic"],
                headers["simpul_dlq_partition"],
                headers["simpul_dlq_offset"],
            )
            origins[origin] = headers
    return origins


def ce_ids_on(bootstrap: str, topics: list[str]) -> set[str]:
    """Distinct ce_ids on `topics`, read from the beginning with a plain client."""
    return {
        dict(message.headers)["ce_id"].decode()
        for topic in topics
        for message in read_topic(bootstrap, topic)
    }


__all__ = ["ce_ids_on", "dead_letter_origins", "read_topic"]
