"""The delivery audit log finds a changed or deleted row and answers "who got my data"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update

from simpul.db import make_engine
from sinks.audit import AuditEntry, AuditLog, delivery_audit, receipts_for, verify

pytestmark = pytest.mark.integration

KEY = "test-audit-key-0123456789"
NIK = "7271014507900003"
OTHER_NIK = "7271020101850001"


def _entry(nik: str | None, agency: str = "dinsos", ce_id: str = "e-1") -> AuditEntry:
    return AuditEntry(
        ce_id=ce_id,
        event_type="kelurahan.document.issued",
        agency=agency,
        subscription=f"{agency}-sktm",
        purpose="Check poverty letters (SKTM) against DTKS",
        fields=["document_number", "resident_nik"],
        channel="inbox",
        outcome="delivered",
        subject=nik,
    )


def _fill(url: str, heads: Path | None = None) -> tuple[AuditLog, AuditLog]:
    engine = make_engine(url)
    first = AuditLog(engine, KEY, "worker-a", heads, export_s=0.001)
    second = AuditLog(engine, KEY, "worker-b", heads, export_s=0.001)
    first.record([_entry(NIK, ce_id="e-1"), _entry(OTHER_NIK, ce_id="e-2")])
    second.record([_entry(NIK, agency="kel-ujuna", ce_id="e-3")])
    first.record([_entry(None, ce_id="e-4"), _entry(NIK, ce_id="e-5")])
    return first, second


def test_untouched_chains_verify_and_hold_no_raw_nik(store_url: str) -> None:
    first, _ = _fill(store_url)
    engine = make_engine(store_url)
    report = verify(engine, KEY)
    assert (report.chains, report.rows, report.problems) == (2, 5, [])
    with engine.connect() as conn:
        for row in conn.execute(select(delivery_audit)):
            assert NIK not in " ".join(str(v) for v in row)
    assert [r.seq for r in _chain(engine, first.chain_id)] == [1, 2, 3, 4]


def _chain(engine, chain_id):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(
            select(delivery_audit)
            .where(delivery_audit.c.chain_id == chain_id)
            .order_by(delivery_audit.c.seq)
        ).all()


def test_changed_row_is_named(store_url: str) -> None:
    first, _ = _fill(store_url)
    engine = make_engine(store_url)
    target = _chain(engine, first.chain_id)[1]
    with engine.begin() as conn:
        conn.execute(
            update(delivery_audit)
            .where(delivery_audit.c.id == target.id)
            .values(purpose="(nothing to see)")
        )
    problems = verify(engine, KEY).problems
    assert [str(p) for p in problems] == [
        f"row id {target.id} (chain {first.chain_id}, seq 2): "
        "content does not match row_hash (changed)"
    ]


def test_deleted_middle_row_and_deleted_tail_are_found(store_url: str) -> None:
    first, second = _fill(store_url)
    engine = make_engine(store_url)
    rows = _chain(engine, first.chain_id)
    with engine.begin() as conn:
        conn.execute(delete(delivery_audit).where(delivery_audit.c.id == rows[1].id))
        conn.execute(delete(delivery_audit).where(delivery_audit.c.chain_id == second.chain_id))
    problems = verify(engine, KEY).problems
    messages = sorted(str(p) for p in problems)
    assert any(
        f"row id {rows[2].id} (chain {first.chain_id}, seq 3): rows with seq 2..2 are missing" in m
        for m in messages
    )
    assert any(f"chain {second.chain_id}" in m and "rows at the end" in m for m in messages)


def test_subject_lookup_finds_a_person_only_with_the_key(store_url: str) -> None:
    _fill(store_url)
    engine = make_engine(store_url)
    found = receipts_for(engine, KEY, NIK)
    assert sorted(r.ce_id for r in found) == ["e-1", "e-3", "e-5"]
    assert {r.agency for r in found} == {"dinsos", "kel-ujuna"}
    assert found[0].fields == ["document_number", "resident_nik"]
    assert receipts_for(engine, "another-key-0123456789", NIK) == []
    assert [r.ce_id for r in receipts_for(engine, KEY, OTHER_NIK)] == ["e-2"]


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SIMPUL_DATABASE_URL": url,
        "SIMPUL_AUDIT_KEY": KEY,
        "SIMPUL_AUDIT_HEADS_FILE": str(Path(url.rsplit("/", 1)[1]).with_suffix(".nope")),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "simpul", "audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_verify_exits_1_naming_the_row_and_subject_prints_who(pg_url: str) -> None:
    from simpul import dbmigrate

    dbmigrate.upgrade(pg_url)
    first, _ = _fill(pg_url)
    ok = _cli(pg_url, "verify")
    assert ok.returncode == 0, ok.stderr
    assert "5 rows in 2 chain(s) verified" in ok.stdout
    who = _cli(pg_url, "subject", NIK)
    assert who.returncode == 0, who.stderr
    assert "3 deliveries of data about 7271••••••••0003" in who.stdout
    assert "kel-ujuna" in who.stdout and "SKTM" in who.stdout
    bad = _cli(pg_url, "subject", "7271")
    assert bad.returncode == 2 and "identifier:" in bad.stderr
    engine = make_engine(pg_url)
    target = _chain(engine, first.chain_id)[0]
    with engine.begin() as conn:
        conn.execute(
            update(delivery_audit).where(delivery_audit.c.id == target.id).values(agency="bkd")
        )
        assert conn.scalar(select(func.count()).select_from(delivery_audit)) == 5
    tampered = _cli(pg_url, "verify")
    assert tampered.returncode == 1
    assert f"row id {target.id} (chain {first.chain_id}, seq 1)" in tampered.stderr


def test_rewritten_row_with_a_recomputed_unkeyed_hash_is_still_found(store_url: str) -> None:
    """An insider who rewrites a row and recomputes its hash without the key is caught."""
    import hashlib

    first, _ = _fill(store_url)
    engine = make_engine(store_url)
    target = _chain(engine, first.chain_id)[0]
    forged = hashlib.sha256(b"anything the insider can compute").hexdigest()
    with engine.begin() as conn:
        conn.execute(
            update(delivery_audit)
            .where(delivery_audit.c.id == target.id)
            .values(agency="bkd", row_hash=forged)
        )
    reasons = [p.reason for p in verify(engine, KEY).problems]
    assert "content does not match row_hash (changed)" in reasons
    assert verify(engine, "a-different-key-0123456789").problems  # the key is what checks


def test_whole_chain_or_tail_deleted_with_its_head_is_found_by_the_exported_heads(
    store_url: str, tmp_path: Path
) -> None:
    from sinks.audit import delivery_audit_chains

    heads = tmp_path / "audit-heads.jsonl"
    first, second = _fill(store_url, heads)
    engine = make_engine(store_url)
    assert verify(engine, KEY, heads).problems == []  # nothing legitimate is flagged
    with engine.begin() as conn:
        # An insider removes worker-b's chain entirely, head row included ...
        conn.execute(delete(delivery_audit).where(delivery_audit.c.chain_id == second.chain_id))
        conn.execute(
            delete(delivery_audit_chains).where(delivery_audit_chains.c.chain_id == second.chain_id)
        )
        # ... and cuts worker-a's tail, rewriting its head row to match.
        rows = _chain(engine, first.chain_id)
        conn.execute(delete(delivery_audit).where(delivery_audit.c.id == rows[-1].id))
        conn.execute(
            update(delivery_audit_chains)
            .where(delivery_audit_chains.c.chain_id == first.chain_id)
            .values(last_seq=rows[-2].seq, last_hash=rows[-2].row_hash)
        )
    assert verify(engine, KEY).problems == []  # the database alone cannot tell
    messages = [str(p) for p in verify(engine, KEY, heads).problems]
    assert any(second.chain_id in m and "deleted whole" in m for m in messages), messages
    assert any(first.chain_id in m and "rows up to it were deleted" in m for m in messages)
    # A forged line in the heads file is refused, not trusted.
    with heads.open("a") as out:
        out.write('{"chain_id":"x","writer":"w","seq":1,"hash":"0","at":"now","mac":"00"}\n')
    assert any("does not verify" in str(p) for p in verify(engine, KEY, heads).problems)
