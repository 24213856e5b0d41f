"""The delivery audit log: one hash-chained row per event and recipient, in the central store.

Each writer (a fan-out service, a webhook deliverer) appends to a chain of its own
(``chain_id``), so several workers never contend for one "last row". A row's hash covers its
content and the previous row's hash; the chain's head (last sequence number and hash) is kept
in ``delivery_audit_chains`` in the same transaction, so a changed row, a deleted row and a
deleted tail are all found by `verify`. NIK/NIP are stored only as a keyed HMAC
(``subject_hash``): the table holds no raw identifiers, yet `simpul audit subject <NIK>` finds
a person's rows through the index.

Against an insider with write access to the database: row hashes are keyed (HMAC-SHA256 with
a key derived from the installation's audit key), so a rewritten row cannot be given a
matching hash without the key; and each writer exports its chain head (sequence number and
hash, itself MAC'd) at intervals to a file outside the database (``audit_heads_file``), so
deleting a whole chain, or its tail together with its head row, is still found by `verify`.

Delivery guarantee: rows are written before the offsets of the messages they describe are
committed, so a crash may record a re-delivered message twice (it was delivered twice), never
zero times.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    Row,
    String,
    Table,
    Text,
    UniqueConstraint,
    select,
    update,
)

from simpul.db import metadata
from sinks.base import Buffered

GENESIS = "0" * 64

delivery_audit = Table(
    "delivery_audit",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("chain_id", String(80), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("ce_id", String(255), nullable=False),
    Column("event_type", String(128), nullable=False),
    Column("agency", String(64), nullable=False),
    Column("subscription", String(64), nullable=False),
    Column("purpose", Text, nullable=False),
    Column("fields", Text, nullable=False),
    Column("channel", String(16), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("detail", Text, nullable=True),
    Column("subject_hash", String(64), nullable=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("row_hash", String(64), nullable=False),
    UniqueConstraint("chain_id", "seq"),
    Index("ix_delivery_audit_subject_hash", "subject_hash"),
    Index("ix_delivery_audit_ce_id", "ce_id"),
)

delivery_audit_chains = Table(
    "delivery_audit_chains",
    metadata,
    Column("chain_id", String(80), primary_key=True),
    Column("writer", String(128), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("last_hash", String(64), nullable=False),
)


# Not frozen: a frozen dataclass's __init__ costs 4x (made per event on the hot path).
@dataclass(slots=True)
class AuditEntry:
    """What one recipient got of one event, and what became of it."""

    ce_id: str
    event_type: str
    agency: str
    subscription: str
    purpose: str
    fields: Sequence[str]
    channel: str  # "inbox" | "webhook"
    outcome: str  # "delivered" | "dead_lettered"
    subject: str | None = None  # raw NIK/NIP; only its HMAC is stored
    detail: str | None = None
    subject_hash: str | None = None  # already hashed (copied from the inbox row)


def subject_hash(key: str, identifier: str) -> str:
    return hmac.new(key.encode(), identifier.strip().encode(), hashlib.sha256).hexdigest()


def _utc_naive(value: dt.datetime) -> dt.datetime:
    # SQLite returns naive datetimes, PostgreSQL aware ones: hash one form.
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _derived(key: str, purpose: str) -> bytes:
    """One key per use of the audit key (subject hashes, row hashes, exported heads)."""
    return hmac.new(key.encode(), f"simpul-audit-{purpose}".encode(), hashlib.sha256).digest()


def row_hash(prev_hash: str, row: dict[str, object], key: str) -> str:
    recorded = _utc_naive(cast(dt.datetime, row["recorded_at"]))
    return _hash(prev_hash, row, recorded.isoformat(timespec="microseconds"), _derived(key, "row"))


def _hash(prev_hash: str, row: dict[str, object], recorded: str, row_key: bytes) -> str:
    content = json.dumps(
        [
            row["chain_id"],
            row["seq"],
            row["ce_id"],
            row["event_type"],
            row["agency"],
            row["subscription"],
            row["purpose"],
            row["fields"],
            row["channel"],
            row["outcome"],
            row["detail"],
            row["subject_hash"],
            recorded,
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    message = f"{prev_hash}\n{content}".encode()
    return hmac.new(row_key, message, hashlib.sha256).hexdigest()


def head_mac(key: str, head: dict[str, object]) -> str:
    body = json.dumps(
        [head["chain_id"], head["writer"], head["seq"], head["hash"], head["at"]],
        separators=(",", ":"),
    )
    return hmac.new(_derived(key, "head"), body.encode(), hashlib.sha256).hexdigest()


def export_head(path: Path, key: str, chain_id: str, writer: str, seq: int, hash_: str) -> None:
    """Append one MAC'd chain head to the heads file (one JSON line; O_APPEND)."""
    head: dict[str, object] = {
        "chain_id": chain_id,
        "writer": writer,
        "seq": seq,
        "hash": hash_,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    head["mac"] = head_mac(key, head)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(json.dumps(head, separators=(",", ":")) + "\n")


def read_heads(path: Path, key: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The newest exported head per chain, and the lines that fail their MAC."""
    heads: dict[str, dict[str, Any]] = {}
    forged: list[str] = []
    if not path.exists():
        return heads, forged
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            head = json.loads(line)
            ok = hmac.compare_digest(str(head.get("mac", "")), head_mac(key, head))
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            forged.append(f"{path.name} line {number}: head does not verify (changed or forged)")
            continue
        current = heads.get(head["chain_id"])
        if current is None or head["seq"] >= current["seq"]:
            heads[head["chain_id"]] = head
    return heads, forged


class AuditLog(Buffered["AuditEntry", None]):
    """One writer's chain. `record` is blocking (run it in a thread) and thread-safe; as a
    `Sink`, `flush` records the added entries."""

    def __init__(
        self,
        engine: Engine,
        key: str,
        writer: str,
        heads_file: Path | None = None,
        export_s: float = 10.0,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.key = key
        self._row_key = _derived(key, "row")  # once, not per row
        self.writer = writer
        self.heads_file = heads_file
        self.export_s = export_s
        self._exported_at = 0.0
        self._exported_seq = 0
        self.chain_id = f"{writer[:60]}-{uuid.uuid4().hex[:12]}"
        self.seq = 0
        self.last_hash = GENESIS
        self._lock = threading.Lock()
        self._fields: dict[tuple[str, ...], str] = {}
        self._hmac = hmac.new(key.encode(), digestmod=hashlib.sha256)

    def _subject_hash(self, identifier: str) -> str:
        """`subject_hash` with the key schedule computed once."""
        mac = self._hmac.copy()
        mac.update(identifier.strip().encode())
        return mac.hexdigest()

    def _write(self, batch: Sequence[AuditEntry]) -> None:
        self.record(batch)

    def record(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            return
        with self._lock:
            now = dt.datetime.now(dt.UTC)
            # Once per batch, not per row: every row of a batch shares its time.
            recorded = _utc_naive(now).isoformat(timespec="microseconds")
            seq, last = self.seq, self.last_hash
            rows = []
            for entry in entries:
                seq += 1
                names = tuple(entry.fields)
                fields = self._fields.get(names)
                if fields is None:
                    fields = self._fields[names] = json.dumps(list(names), separators=(",", ":"))
                row: dict[str, object] = {
                    "chain_id": self.chain_id,
                    "seq": seq,
                    "ce_id": entry.ce_id,
                    "event_type": entry.event_type,
                    "agency": entry.agency,
                    "subscription": entry.subscription,
                    "purpose": entry.purpose,
                    "fields": fields,
                    "channel": entry.channel,
                    "outcome": entry.outcome,
                    "detail": entry.detail,
                    "subject_hash": entry.subject_hash
                    or (self._subject_hash(entry.subject) if entry.subject else None),
                    "recorded_at": now,
                }
                row["prev_hash"] = last
                row["row_hash"] = last = _hash(last, row, recorded, self._row_key)
                rows.append(row)
            with self.engine.begin() as conn:
                if self.seq == 0:
                    conn.execute(
                        delivery_audit_chains.insert().values(
                            chain_id=self.chain_id,
                            writer=self.writer,
                            started_at=now,
                            last_seq=seq,
                            last_hash=last,
                        )
                    )
                else:
                    conn.execute(
                        update(delivery_audit_chains)
                        .where(delivery_audit_chains.c.chain_id == self.chain_id)
                        .values(last_seq=seq, last_hash=last)
                    )
                if self.engine.dialect.name == "postgresql":
                    # COPY: SQLAlchemy's executemany cost more than hashing the rows.
                    columns = list(rows[0])
                    stamp = now.isoformat()  # COPY parses it; dumping datetimes cost more
                    raw: Any = conn.connection.driver_connection
                    with (
                        raw.cursor() as cursor,
                        cursor.copy(
                            f"COPY delivery_audit ({', '.join(columns)}) FROM STDIN"
                        ) as copy,
                    ):
                        for row in rows:
                            row["recorded_at"] = stamp
                            copy.write_row(list(row.values()))
                else:
                    conn.execute(delivery_audit.insert(), rows)
            # Only advance once the rows are in: a failed write is retried with the same links.
            first = self.seq == 0
            self.seq, self.last_hash = seq, last
            if first or time.monotonic() - self._exported_at >= self.export_s:
                self.export()

    def export(self) -> None:
        """Write this chain's head outside the database (the first one at once, so that a
        chain deleted whole is found too)."""
        if self.heads_file is None or self.seq == self._exported_seq:
            return
        export_head(self.heads_file, self.key, self.chain_id, self.writer, self.seq, self.last_hash)
        self._exported_at, self._exported_seq = time.monotonic(), self.seq


def inbox_subjects(engine: Engine, entries: Sequence[AuditEntry]) -> list[AuditEntry]:
    """Fill in each entry's subject hash from the fan-out's inbox row of the same event and
    subscription: the webhook deliverer sees only the projected (maybe masked) record, and
    sending the hash along in a header would let a subscriber link masked events."""
    wanted = {e.ce_id for e in entries if e.subject is None and e.subject_hash is None}
    if not wanted:
        return list(entries)
    a = delivery_audit.c
    with engine.connect() as conn:
        found = {
            (r.ce_id, r.subscription): r.subject_hash
            for r in conn.execute(
                select(a.ce_id, a.subscription, a.subject_hash).where(
                    a.ce_id.in_(sorted(wanted)), a.channel == "inbox"
                )
            )
        }
    return [
        dataclasses.replace(e, subject_hash=found.get((e.ce_id, e.subscription)))
        if e.ce_id in wanted
        else e
        for e in entries
    ]


@dataclass(frozen=True, slots=True)
class Problem:
    chain_id: str
    row_id: int | None
    seq: int | None
    reason: str

    def __str__(self) -> str:
        where = f"row id {self.row_id} (chain {self.chain_id}, seq {self.seq})"
        if self.row_id is None:
            where = f"chain {self.chain_id}" + (f", seq {self.seq}" if self.seq else "")
        return f"{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    chains: int
    rows: int
    problems: list[Problem]


def verify(
    engine: Engine, key: str, heads_file: Path | None = None, batch: int = 10_000
) -> VerifyReport:
    """Walk every chain in order; report changed rows, missing rows and a cut-off tail; with
    ``heads_file``, also chains and tails deleted together with their head rows."""
    a = delivery_audit.c
    problems: list[Problem] = []
    exported, forged = read_heads(heads_file, key) if heads_file else ({}, [])
    problems += [Problem("(heads file)", None, None, reason) for reason in forged]
    hashes_at: dict[tuple[str, int], str] = {}
    rows_seen = 0
    with engine.connect() as conn:
        heads = {
            r.chain_id: (r.last_seq, r.last_hash)
            for r in conn.execute(select(delivery_audit_chains))
        }
        chains = sorted(set(heads) | set(conn.scalars(select(a.chain_id).distinct())))
    wanted = {(h["chain_id"], h["seq"]) for h in exported.values()}
    for chain_id in chains:
        expected_seq, prev = 1, GENESIS
        for row in _rows(engine, chain_id, batch):
            rows_seen += 1
            data = dict(row._mapping)
            if data["seq"] != expected_seq:
                problems.append(
                    Problem(
                        chain_id,
                        data["id"],
                        data["seq"],
                        f"rows with seq {expected_seq}..{data['seq'] - 1} are missing (deleted)",
                    )
                )
            elif data["prev_hash"] != prev:
                problems.append(
                    Problem(chain_id, data["id"], data["seq"], "prev_hash does not link")
                )
            if (data["chain_id"], data["seq"]) in wanted:
                hashes_at[(data["chain_id"], data["seq"])] = data["row_hash"]
            if row_hash(data["prev_hash"], data, key) != data["row_hash"]:
                problems.append(
                    Problem(
                        chain_id,
                        data["id"],
                        data["seq"],
                        "content does not match row_hash (changed)",
                    )
                )
            expected_seq, prev = data["seq"] + 1, data["row_hash"]
        head = heads.get(chain_id)
        if head is None:
            problems.append(Problem(chain_id, None, None, "chain head missing (deleted)"))
        elif head[0] != expected_seq - 1 or head[1] != prev:
            problems.append(
                Problem(
                    chain_id,
                    None,
                    expected_seq - 1 if expected_seq > 1 else None,
                    f"chain ends at seq {expected_seq - 1} but its head says {head[0]}: "
                    "rows at the end are missing (deleted) or the head was changed",
                )
            )
    for chain_id, exp in sorted(exported.items()):
        if chain_id not in chains:
            problems.append(
                Problem(
                    chain_id,
                    None,
                    exp["seq"],
                    f"chain of {exp['writer']} exported with {exp['seq']} rows is not in "
                    "the database (deleted whole)",
                )
            )
        elif hashes_at.get((chain_id, exp["seq"])) != exp["hash"]:
            problems.append(
                Problem(
                    chain_id,
                    None,
                    exp["seq"],
                    f"the exported head (seq {exp['seq']}, {exp['at']}) is not in the "
                    "chain: rows up to it were deleted or rewritten",
                )
            )
    return VerifyReport(len(chains), rows_seen, problems)


def _rows(engine: Engine, chain_id: str, batch: int) -> Iterator[Row[Any]]:
    """Keyset pagination: millions of rows without holding them or a server-side cursor."""
    a = delivery_audit.c
    after = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                select(delivery_audit)
                .where(a.chain_id == chain_id, a.seq > after)
                .order_by(a.seq)
                .limit(batch)
            ).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].seq


@dataclass(frozen=True, slots=True)
class Receipt:
    recorded_at: dt.datetime
    agency: str
    subscription: str
    purpose: str
    event_type: str
    ce_id: str
    fields: list[str]
    channel: str
    outcome: str


def receipts_for(engine: Engine, key: str, identifier: str, limit: int = 1000) -> list[Receipt]:
    """Who received this person's data, when and why: newest first, through the index."""
    a = delivery_audit.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                a.recorded_at,
                a.agency,
                a.subscription,
                a.purpose,
                a.event_type,
                a.ce_id,
                a.fields,
                a.channel,
                a.outcome,
            )
            .where(a.subject_hash == subject_hash(key, identifier))
            .order_by(a.recorded_at.desc(), a.id.desc())
            .limit(limit)
        ).all()
    return [
        Receipt(
            r.recorded_at,
            r.agency,
            r.subscription,
            r.purpose,
            r.event_type,
            r.ce_id,
            json.loads(r.fields),
            r.channel,
            r.outcome,
        )
        for r in rows
    ]
