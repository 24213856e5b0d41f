"""Declares the topology's topics through kafka-python's admin client; idempotent."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import TopicAlreadyExistsError

from simpul.kafka_clients import kafka_python_options
from simpul.settings import Settings
from simpul.topology.model import Topology
from simpul.topology.subscriptions import subscription_topics


@dataclass(frozen=True, slots=True)
class TopicChange:
    topic: str
    partitions: int
    action: str  # "created" | "exists" | "partitions increased" | "has more partitions"


def admin_client(bootstrap: str | Settings) -> KafkaAdminClient:
    return KafkaAdminClient(**kafka_python_options(bootstrap), client_id="simpul-admin")


def apply_topics(topology: Topology, bootstrap: str | Settings) -> list[TopicChange]:
    """Create missing topics and grow partition counts; never deletes or shrinks."""
    admin = admin_client(bootstrap)
    try:
        existing = _partition_counts(admin)
        changes: list[TopicChange] = []
        declared = topology.topics() + subscription_topics(topology)
        missing = [(t, p) for t, p in declared if t not in existing]
        if missing:
            # A concurrent `topics apply` may have created some already: that is success too.
            # Join state changelogs are compacted; dead letters and inboxes have a retention.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [
                        NewTopic(t, p, topology.replication, topic_configs=topology.topic_config(t))
                        for t, p in missing
                    ],
                    timeout_ms=30_000,
                )
            changes += [TopicChange(t, p, "created") for t, p in missing]
        for topic, partitions in declared:
            have = existing.get(topic)
            if have is None:
                continue
            if have < partitions:
                admin.create_partitions({topic: NewPartitions(partitions)})
                changes.append(TopicChange(topic, partitions, "partitions increased"))
            elif have > partitions:
                changes.append(TopicChange(topic, have, "has more partitions"))
            else:
                changes.append(TopicChange(topic, have, "exists"))
        _apply_retention(admin, topology, [t for t, _ in declared if t in existing])
        return changes
    finally:
        admin.close()


def _apply_retention(admin: KafkaAdminClient, topology: Topology, topics: list[str]) -> None:
    """Existing dead-letter and inbox topics get the declared retention too (idempotent)."""
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, t, configs=config)
        for t in topics
        if "retention.ms" in (config := topology.topic_config(t))
    ]
    if resources:
        admin.alter_configs(resources)


def _partition_counts(admin: KafkaAdminClient) -> dict[str, int]:
    names = [n for n in admin.list_topics() if n.startswith("simpul.")]
    if not names:
        return {}
    return {d["name"]: len(d["partitions"]) for d in admin.describe_topics(names)}
