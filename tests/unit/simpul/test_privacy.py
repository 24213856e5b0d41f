"""Personal data minimised: identifiers masked in reasons, logs and the dead_letters table;
unmasked identifiers only with a named legal basis; retention declared on DLQ and inboxes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from simpul.errors import InvalidMessage
from simpul.identifiers import mask_identifiers, mask_log_records
from simpul.topology.model import Topology, load_topology
from simpul.topology.subscriptions import Mask
from streams.fanout.plan import SubscriptionError, SubscriptionPlan
from tests.support.paths import REPO_ROOT

NIK = "7271054507910003"
NIP = "198507172010011003"


@pytest.mark.unit
def test_reasons_never_carry_a_raw_nik_or_nip() -> None:
    error = InvalidMessage("join", "join.timeout", f"join x: no recipient with nik {NIK}")
    assert NIK not in error.reason and "7271••••••••0003" in error.reason
    assert mask_identifiers(f"nip {NIP}") == "nip 1985••••••••••1003"
    assert mask_identifiers("727105450791000") == "7271•••••••1000"  # a broken NIK too
    # Codes that are not personal data stay readable: kelurahan (10) and NIB (13 digits).
    assert mask_identifiers("kelurahan 7271051001, nib 9120001234567") == (
        "kelurahan 7271051001, nib 9120001234567"
    )
    shown = mask_identifiers(NIK)
    assert sum(c.isdigit() for c in shown) == 8


@pytest.mark.unit
def test_log_records_are_masked_whoever_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    mask_log_records()
    with caplog.at_level(logging.INFO):
        logging.getLogger("some.library").info("resident %s moved", NIK)
    assert NIK not in caplog.text and "7271••••••••0003" in caplog.text


@pytest.mark.unit
def test_mask_shows_at_most_eight_digits() -> None:
    with pytest.raises(ValueError, match="shows at most 8"):
        Mask(field="nik", keep_first=6, keep_last=4)
    Mask(field="nik", keep_first=4, keep_last=4)


@pytest.mark.unit
def test_unmasked_identifier_needs_a_legal_basis(tmp_path: Path, topology: Topology) -> None:

    schemas = REPO_ROOT / "schemas"
    SubscriptionPlan.build(topology, schemas)  # palu.yaml names its legal bases
    raw = yaml.safe_load((REPO_ROOT / "topology" / "palu.yaml").read_text())
    for sub in raw["subscriptions"]:
        if sub["name"] == "dinsos-deaths":
            del sub["legal_basis"]
    path = tmp_path / "palu.yaml"
    path.write_text(yaml.safe_dump(raw))
    changed = load_topology(path)
    with pytest.raises(SubscriptionError) as caught:
        SubscriptionPlan.build(changed, schemas)
    assert "legal_basis: dinsos-deaths receives nik (NIK) of population.death.registered" in str(
        caught.value
    )


@pytest.mark.unit
def test_dead_letter_and_inbox_topics_declare_retention(topology: Topology) -> None:
    assert topology.topic_config("simpul.dlq.permit.issued") == {"retention.ms": "2592000000"}
    assert topology.topic_config("simpul.out.dinsos") == {"retention.ms": "1209600000"}
    assert topology.topic_config("simpul.in.permit.issued") == {}


@pytest.mark.integration
def test_topics_apply_sets_retention_on_new_and_existing_topics(broker, topology) -> None:  # type: ignore[no-untyped-def]
    from kafka.admin import ConfigResource, ConfigResourceType

    from simpul.topics import admin_client, apply_topics

    apply_topics(topology, broker.bootstrap)
    apply_topics(topology, broker.bootstrap)  # again: idempotent
    admin = admin_client(broker.bootstrap)
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, "simpul.dlq.permit.issued")]
        )
    finally:
        admin.close()
    text = str(described)
    if text == "{'topic': {'simpul.dlq.permit.issued': {}}}":
        pytest.skip("this broker keeps no topic configs (the embedded Tansu); Apache Kafka does")
    assert "retention.ms" in text and "2592000000" in text
