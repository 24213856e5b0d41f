"""The join logic as pure functions, and the ``joins:`` topology section's checks."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import yaml

from simpul.topology.model import Topology, TopologyError, parse_topology
from streams.joins.state import Effects, JoinPartition, derived_id
from tests.support.join_events import (
    NIK,
    NIP,
    T0,
    assessment,
    death,
    employee,
    logic,
    recipient,
    sktm,
)
from tests.support.stack import TOPOLOGY_FILE

pytestmark = pytest.mark.unit


def test_assessment_waits_for_its_employee_then_joins(topology: Topology) -> None:
    join, state, effects = logic(topology, "tpp-allowance-basis"), JoinPartition(), Effects()
    left = assessment()
    join.on_left(state, left, effects)
    assert effects.waits == 1 and not effects.derived and state.pending_count == 1
    right = employee("IV/a")
    join.on_right(state, right, effects)
    assert state.pending_count == 0
    (out,) = effects.derived
    assert out.type == "hr.allowance.basis" and out.key == NIP
    assert out.payload["grade"] == "IV/a" and out.payload["score"] == 95.0
    assert out.payload["assessment_event_id"] == left.envelope.id
    assert out.envelope.id == derived_id("tpp-allowance-basis", left.envelope.id, right.envelope.id)
    assert out.envelope.source == "/agency/simpul"
    # Changelog: the waiting left written, then deleted; the right written.
    assert [c.event is None for c in effects.changes] == [False, False, True]


def test_the_latest_employee_record_wins_and_an_older_one_is_ignored(topology: Topology) -> None:
    join, state, effects = logic(topology, "tpp-allowance-basis"), JoinPartition(), Effects()
    join.on_right(state, employee("III/a", T0), effects)
    join.on_right(state, employee("III/b", T0 + dt.timedelta(days=30)), effects)
    join.on_right(state, employee("II/d", T0 - dt.timedelta(days=30)), effects)  # late, older
    join.on_left(state, assessment(), effects)
    assert [d.payload["grade"] for d in effects.derived] == ["III/b"]
    assert len(effects.changes) == 2  # the stale record changed nothing


def test_a_redelivered_waiting_assessment_waits_once(topology: Topology) -> None:
    join, state, effects = logic(topology, "tpp-allowance-basis"), JoinPartition(), Effects()
    left = assessment()
    join.on_left(state, left, effects)
    join.on_left(state, left, effects)
    assert state.pending_count == 1 and effects.waits == 1


def test_an_assessment_without_employee_is_dead_lettered_after_the_wait(
    topology: Topology,
) -> None:
    join, state = logic(topology, "tpp-allowance-basis", wait_s=30), JoinPartition()
    join.on_left(state, assessment(since=100.0), Effects())
    early = Effects()
    join.expire(state, 129.0, early)
    assert not early.expired and state.pending_count == 1
    late = Effects()
    join.expire(state, 130.0, late)
    ((_left, reason),) = late.expired
    assert reason == (
        f"join tpp-allowance-basis: no hr.employee.updated with nip {NIP} arrived within 30 s"
    )
    assert late.timeouts == {"dead_letter": 1} and state.pending_count == 0
    assert late.changes[0].event is None


@pytest.mark.parametrize(
    ("status", "emitted"),
    [("ACTIVE", False), ("SUSPENDED", True), ("GRADUATED", True), ("REMOVED", True)],
)
def test_sktm_requests_verification_unless_the_resident_is_an_active_recipient(
    topology: Topology, status: str, emitted: bool
) -> None:
    join, state, effects = logic(topology, "sktm-verification"), JoinPartition(), Effects()
    join.on_right(state, recipient(status), effects)
    join.on_left(state, sktm(), effects)
    assert bool(effects.derived) is emitted
    if emitted:
        assert effects.derived[0].payload["recipient_status"] == status
        assert effects.derived[0].key == NIK


def test_sktm_for_someone_without_a_dtks_entry_is_requested_when_the_wait_runs_out(
    topology: Topology,
) -> None:
    join, state, effects = logic(topology, "sktm-verification", 60), JoinPartition(), Effects()
    left = sktm(since=0.0)
    join.on_left(state, left, effects)
    assert not effects.derived
    join.expire(state, 60.0, effects)
    (out,) = effects.derived
    assert out.payload["recipient_status"] is None and out.payload["recipient_event_id"] is None
    assert out.envelope.id == derived_id("sktm-verification", left.envelope.id, None)


def test_other_letters_take_no_part_in_the_sktm_join(topology: Topology) -> None:
    join, state, effects = logic(topology, "sktm-verification"), JoinPartition(), Effects()
    join.on_left(state, sktm("DOMISILI"), effects)
    assert state.pending_count == 0 and not effects.changes


def test_death_of_a_recipient_is_derived_and_of_a_non_recipient_dropped(
    topology: Topology,
) -> None:
    join, state, effects = logic(topology, "recipient-deceased", 5), JoinPartition(), Effects()
    join.on_left(state, death(since=0.0), effects)
    join.expire(state, 5.0, effects)
    assert not effects.derived and not effects.expired and effects.timeouts == {"drop": 1}
    join.on_right(state, recipient("REMOVED"), effects)
    join.on_left(state, death(), effects)
    assert not effects.derived  # struck off the register already
    join.on_right(state, recipient("ACTIVE", T0 + dt.timedelta(days=1)), effects)
    join.on_left(state, death(), effects)
    (out,) = effects.derived
    assert out.payload["programs"] == ["PKH"] and out.payload["recipient_status"] == "ACTIVE"


def test_state_rebuilt_from_its_changelog_equals_the_state(topology: Topology) -> None:
    join, state, effects = logic(topology, "tpp-allowance-basis"), JoinPartition(), Effects()
    join.on_right(state, employee("III/a"), effects)
    waiting = assessment()
    waiting.payload["nip"] = "199001012015032001"
    join.on_left(state, waiting, effects)
    join.on_left(state, assessment(), effects)  # joined at once: no state change
    rebuilt = JoinPartition()
    for change in effects.changes:
        join.restore(rebuilt, change.key, change.event)
    assert rebuilt.right == state.right and rebuilt.pending == state.pending


def _raw() -> dict[str, Any]:
    return yaml.safe_load(TOPOLOGY_FILE.read_text())


def _error(raw: dict[str, Any]) -> str:
    with pytest.raises(TopologyError) as caught:
        parse_topology(raw)
    return str(caught.value)


def test_palu_declares_three_joins_with_their_topics(topology: Topology) -> None:
    assert [j.name for j in topology.joins] == [
        "tpp-allowance-basis",
        "sktm-verification",
        "recipient-deceased",
    ]
    assert ("simpul.join.sktm-verification.left", 4) in topology.join_topics()
    assert topology.event_type("hr.allowance.basis").entity is None


def test_a_join_on_an_undeclared_type_is_refused() -> None:
    raw = _raw()
    raw["joins"][0]["right"]["type"] = "hr.employee.created"
    assert "joins.0.right: 'hr.employee.created' is not a declared event type" in _error(raw)


def test_a_right_side_keyed_by_another_field_is_refused() -> None:
    raw = _raw()
    raw["joins"][1]["right"]["key"] = "kelurahan_code"
    assert "joins.1.right.key: 'kelurahan_code' must be the key of" in _error(raw)


def test_a_bad_field_mapping_is_refused() -> None:
    raw = _raw()
    raw["joins"][0]["fields"]["grade"] = "employee.grade"
    assert "joins.0.fields: grade: 'employee.grade' is not left.<field>" in _error(raw)


def test_emitting_on_timeout_needs_an_unmatched_join() -> None:
    raw = _raw()
    raw["joins"][0]["on_timeout"] = "emit"
    assert "on_timeout: 'emit' needs emit: unmatched" in _error(raw)


def test_a_derived_type_must_be_produced_by_simpul() -> None:
    raw = _raw()
    for event_type in raw["event_types"]:
        if event_type["name"] == "hr.allowance.basis":
            event_type["producers"] = ["bkd"]
    assert "joins.0.output: hr.allowance.basis must list 'simpul'" in _error(raw)


def test_range_assignment_gives_each_process_the_same_partitions_of_every_input(
    topology: Topology,
) -> None:
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor

    class Cluster:
        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0, 1, 2, 3}

    inputs = sorted(
        {t.topic("valid") for t in topology.event_types if t.entity}
        | {name for name, _ in topology.join_topics() if name.endswith(".left")}
    )
    members = {
        m: RangePartitionAssignor.metadata(inputs) for m in ("joins-a", "joins-b", "joins-c")
    }
    assignment = RangePartitionAssignor.assign(Cluster(), members)  # type: ignore[arg-type]
    for member in members:
        per_topic = {topic: set(parts) for topic, parts in assignment[member].assignment}
        assert len(set(map(frozenset, per_topic.values()))) == 1, per_topic


def _service(tmp_path: Any, raw: dict[str, Any]) -> Any:
    from simpul import dbmigrate
    from simpul.catalog import EventCatalog
    from simpul.db import make_engine
    from simpul.registry.resolver import SchemaResolver
    from simpul.registry.store import SchemaStore, register_all
    from simpul.settings import Settings
    from streams.joins.service import JoinService
    from tests.support.stack import SCHEMAS_DIR

    url = f"sqlite:///{tmp_path / 'store.db'}"
    dbmigrate.upgrade(url)
    topology = parse_topology(raw)
    register_all(SchemaStore(make_engine(url)), topology, SCHEMAS_DIR)
    catalog = EventCatalog(topology, SchemaResolver(SchemaStore(make_engine(url))))
    return JoinService(Settings(database_url=url), topology, catalog)


def test_a_derived_event_is_sent_to_simpul_in_as_a_framed_cloudevent(tmp_path: Any) -> None:
    from simpul.codec import unframe
    from simpul.envelope import Envelope as Env

    service = _service(tmp_path, _raw())
    join, state, effects = service.logics[0], JoinPartition(), Effects()
    join.on_right(state, employee("III/d"), effects)
    join.on_left(state, assessment(), effects)
    sends = service._effect_sends(join, 2, effects)
    (changelog,) = [s for s in sends if s.topic == "simpul.join.tpp-allowance-basis.state"]
    assert changelog.partition == 2 and changelog.key == f"R\x00{NIP}".encode()
    (out,) = [s for s in sends if s.topic == "simpul.in.hr.allowance.basis"]
    envelope = Env.from_headers(out.headers)
    assert envelope.source == "/agency/simpul" and envelope.type == "hr.allowance.basis"
    schema_id, body = unframe(out.value)
    payload = service.catalog.resolver.by_id(schema_id).decode_body(body)
    assert payload["grade"] == "III/d" and out.key == NIP.encode()


def test_a_mapping_that_yields_an_invalid_event_dead_letters_the_left(tmp_path: Any) -> None:
    raw = _raw()
    raw["joins"][0]["fields"]["period"] = "left.rating"  # "AS_EXPECTED" is no YYYY-MM
    service = _service(tmp_path, raw)
    join, state, effects = service.logics[0], JoinPartition(), Effects()
    join.on_right(state, employee("III/d"), effects)
    join.on_left(state, assessment(), effects)
    sends = service._effect_sends(join, 0, effects)
    assert not [s for s in sends if s.topic.startswith("simpul.in.")]
    (letter,) = [s for s in sends if s.topic == "simpul.dlq.hr.performance.assessed"]
    headers = dict(letter.headers)
    assert headers["simpul_dlq_stage"] == b"join" and headers["simpul_dlq_code"] == b"join.output"
    assert b"period" in headers["simpul_dlq_reason"] and letter.key == NIP.encode()
