"""The central store as evidence: who signed a stored event, checked again from the row."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from simpul.codec import unframe
from simpul.db import dumps
from simpul.errors import InvalidMessage
from simpul.registry.resolver import SchemaResolver
from simpul.registry.store import SchemaStore
from simpul.signing import KEYID_HEADER, PROOF_HEADER, SIGNATURE_HEADER, KeyRing
from sinks.central_store import event_log


@dataclass(slots=True)
class Evidence:
    """One stored event's signature and what checking it again found."""

    ce_id: str
    type: str
    source: str
    received_at: dt.datetime
    key_id: str | None
    signer: str | None
    gateway: str | None
    signature: str | None
    key_state_now: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return self.signature is not None and not self.problems


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def verify_stored_event(engine: Engine, keyring: KeyRing, ce_id: str) -> Evidence | None:
    """Re-verify the stored signature over the stored signed bytes, as of the time the event
    was received, and check that those bytes decode to the stored payload. None: no event."""
    with engine.connect() as conn:
        row = conn.execute(select(event_log).where(event_log.c.ce_id == ce_id)).mappings().first()
    if row is None:
        return None
    received = _aware(row["received_at"])
    evidence = Evidence(
        ce_id=row["ce_id"],
        type=row["type"],
        source=row["source"],
        received_at=received,
        key_id=row["key_id"],
        signer=row["signer"],
        gateway=row["gateway"],
        signature=row["signature"],
    )
    if row["signature"] is None or row["signed_headers"] is None:
        evidence.problems.append("stored without a signature (before signing was introduced)")
        return evidence
    signed: dict[str, Any] = row["signed_headers"]
    headers = [(name, str(value).encode()) for name, value in signed.items()]
    headers.append((SIGNATURE_HEADER, row["signature"].encode()))
    if row["signature_proof"] is not None:  # signed in a batch: the event's path to the root
        headers.append((PROOF_HEADER, row["signature_proof"].encode()))
    value = base64.b64decode(row["signed_value"]) if row["signed_value"] else None
    try:
        attestation = keyring.verify(headers, row["key"].encode(), value, now=received)
    except InvalidMessage as error:
        evidence.problems.append(f"{error.code}: {error.reason}")
    else:
        if attestation.key_id != row["key_id"] or attestation.signer != row["signer"]:
            evidence.problems.append(
                f"the signature is by {attestation.key_id} ({attestation.signer}), the row "
                f"says {row['key_id']} ({row['signer']})"
            )
    for name, column in (("ce_id", "ce_id"), ("ce_source", "source"), ("ce_type", "type")):
        if signed.get(name) != row[column]:
            evidence.problems.append(f"{column}: the row differs from the signed {name}")
    if signed.get(KEYID_HEADER) != row["key_id"]:
        evidence.problems.append("key_id: the row differs from the signed ce_keyid")
    if value is not None:
        schema = SchemaResolver(SchemaStore(engine)).by_id(row["schema_id"])
        decoded = schema.decode_body(unframe(value)[1])
        if dumps(decoded) != dumps(row["payload"]):
            evidence.problems.append("payload: the stored payload differs from the signed value")
    entry = keyring.get(row["key_id"]) if row["key_id"] else None
    evidence.key_state_now = entry.state(dt.datetime.now(dt.UTC)) if entry else "unknown"
    return evidence
