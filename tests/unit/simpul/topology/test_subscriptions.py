"""Subscriptions: a subscriber never sees a field outside its projection, nor a masked middle."""

from __future__ import annotations

import copy
import io
import json
import re
from typing import Any

import fastavro
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from simpul.topology.model import TopologyError, load_topology, parse_topology
from simpul.topology.subscriptions import (
    MASK_CHAR,
    Mask,
    Subscription,
    mask,
    project,
    subscription_topics,
)
from streams.fanout.plan import SubscriptionError, SubscriptionPlan, out_key
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.unit

PALU = REPO_ROOT / "topology" / "palu.yaml"
SCHEMAS = REPO_ROOT / "schemas"


@pytest.fixture(scope="module")
def plan() -> SubscriptionPlan:
    return SubscriptionPlan.build(load_topology(PALU), SCHEMAS)


@pytest.fixture
def raw() -> dict[str, Any]:
    return yaml.safe_load(PALU.read_text())


def _route(plan: SubscriptionPlan, name: str):  # type: ignore[no-untyped-def]
    return next(r for r in plan.routes if r.subscription.name == name)


def test_nik_is_masked_as_first_four_and_last_four() -> None:
    assert mask("7271011204900003") == "7271••••••••0003"
    assert mask("12345678") == "••••••••"  # too short: nothing shows
    assert mask("7271011204900003", 6, 0) == "727101" + MASK_CHAR * 10


def test_palu_subscriptions_declare_inbox_and_webhook_dead_letter_topics() -> None:
    topics = dict(subscription_topics(load_topology(PALU)))
    assert {"simpul.out.bkd", "simpul.out.dinsos", "simpul.out.kel-ujuna"} <= set(topics)
    assert "simpul.dlq.out.dinsos" in topics  # dinsos has a webhook
    assert "simpul.dlq.out.bkd" not in topics


def test_derived_schema_has_only_projected_fields_and_masked_become_strings(
    plan: SubscriptionPlan,
) -> None:
    route = _route(plan, "dinsos-sktm")
    names = [f["name"] for f in route.schema["fields"]]
    assert names == list(route.subscription.fields)
    assert "purpose" not in names  # the letter's stated purpose is not in the projection
    nik = next(f for f in route.schema["fields"] if f["name"] == "resident_nik")
    assert nik["type"] == "string" and "simpul.identifier" not in nik
    assert route.subject == ("simpul.out.dinsos-simpul.sub.dinsos_sktm.KelurahanDocumentIssued")
    fastavro.parse_schema(route.schema)


def test_filters_equals_prefix_and_in(plan: SubscriptionPlan) -> None:
    sktm = _route(plan, "dinsos-sktm").subscription
    assert sktm.matches({"document_type": "SKTM"})
    assert not sktm.matches({"document_type": "DOMISILI"})
    mamboro = _route(plan, "kel-mamboro-documents").subscription
    assert mamboro.matches({"kelurahan_code": "7271041001", "document_type": "PINDAH"})
    assert not mamboro.matches({"kelurahan_code": "7271041001", "document_type": "SKTM"})
    assert not mamboro.matches({"kelurahan_code": "7271021002", "document_type": "PINDAH"})


def test_masked_key_is_masked_and_unprojected_key_is_withheld(plan: SubscriptionPlan) -> None:
    route = _route(plan, "dinsos-sktm")
    assert out_key(route, {"document_number": "474/1/2026"}, b"474/1/2026") == b"474/1/2026"
    stats = _route(plan, "kominfo-permit-statistics")  # permit_number is not projected
    assert out_key(stats, {"permit_number": "P-1"}, b"P-1") is None


def test_unknown_projected_field_names_its_path(raw: dict[str, Any]) -> None:
    raw["subscriptions"][2]["fields"].append("mother_name")
    topology = parse_topology(raw)
    with pytest.raises(SubscriptionError, match=r"subscriptions\.2\.fields\.5: 'mother_name'"):
        SubscriptionPlan.build(topology, SCHEMAS)


def test_masking_a_non_string_field_is_refused(raw: dict[str, Any]) -> None:
    raw["subscriptions"][1]["masked"] = [{"field": "score"}]
    with pytest.raises(SubscriptionError, match=r"subscriptions\.1\.masked\.0\.field: 'score'"):
        SubscriptionPlan.build(parse_topology(raw), SCHEMAS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(purpose="   "), r"subscriptions\.0\.purpose: purpose must say why"),
        (lambda s: s.pop("purpose"), r"subscriptions\.0\.purpose: Field required"),
        (lambda s: s.update(agency="bpbd"), r"subscriptions\.0\.agency: 'bpbd' is not a declared"),
        (
            lambda s: s.update(event_types=["hr.salary.paid"]),
            r"subscriptions\.0\.event_types\.0: 'hr.salary.paid'",
        ),
        (
            lambda s: s.update(masked=[{"field": "name"}]),
            r"masked\.0\.field: 'name' is not in fields",
        ),
        (
            lambda s: s.update(filter=[{"field": "grade", "equals": "III/a", "prefix": "III"}]),
            r"subscriptions\.0\.filter\.0: .*exactly one of equals, prefix, in",
        ),
        (
            lambda s: s.update(webhook={"url": "https://bkd.example/x", "secret": "hunter2"}),
            r"subscriptions\.0\.webhook\.secret_env: Field required",
        ),
    ],
)
def test_bad_subscription_errors_name_the_field(
    raw: dict[str, Any], change: Any, message: str
) -> None:
    change(raw["subscriptions"][0])
    with pytest.raises(TopologyError, match=message):
        parse_topology(raw)


# --- the privacy property ---------------------------------------------------------------

_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40)
)
_nik = st.from_regex(r"\A7271[0-9]{12}\Z")


@settings(max_examples=300, deadline=None)
@given(
    extra=st.dictionaries(st.text(min_size=1, max_size=20), _values, max_size=12),
    nik=_nik,
    fields=st.lists(st.sampled_from(["a", "b", "nik", "c"]), min_size=1, unique=True),
)
def test_projection_never_leaks_a_field_or_a_masked_middle(
    extra: dict[str, Any], nik: str, fields: list[str]
) -> None:
    payload = {**extra, "nik": nik, "a": 1, "b": "x"}
    masks = {"nik": Mask(field="nik")}
    projected = project(payload, fields, masks)
    assert set(projected) == set(fields)
    if "nik" in fields:
        assert re.fullmatch(r"7271•{8}[0-9]{4}", projected["nik"])
        assert projected["nik"][-4:] == nik[-4:]
        assert nik[4:12] not in projected["nik"]
    assert nik not in json.dumps(projected, ensure_ascii=False)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_every_palu_route_sends_exactly_its_projection(
    plan: SubscriptionPlan, data: st.DataObject
) -> None:
    """Whatever a valid event holds, the encoded output decodes to exactly the projection."""
    route = data.draw(st.sampled_from(plan.routes))
    source = json.loads((SCHEMAS / f"{route.event_type}.v1.avsc").read_text())
    payload = data.draw(_record_for(source))
    projected = project(payload, route.subscription.fields, route.masks)
    buffer = io.BytesIO()
    parsed = fastavro.parse_schema(copy.deepcopy(route.schema))
    fastavro.schemaless_writer(buffer, parsed, projected)
    decoded: Any = fastavro.schemaless_reader(io.BytesIO(buffer.getvalue()), parsed, None)
    assert set(decoded) == set(route.subscription.fields)
    for name, rule in route.masks.items():
        original, shown = payload[name], decoded[name]
        first, last = rule.keep_first, rule.keep_last
        assert len(shown) == len(original)
        if len(original) <= first + last:
            assert shown == MASK_CHAR * len(original)
        else:
            hidden = len(original) - first - last
            # Position by position: every character of the middle is replaced.
            assert shown == original[:first] + MASK_CHAR * hidden + original[len(original) - last :]


def _record_for(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    import datetime as dt

    def for_type(avro_type: Any) -> st.SearchStrategy[Any]:
        if isinstance(avro_type, list):
            return st.one_of(*[for_type(t) for t in avro_type])
        if isinstance(avro_type, dict):
            kind = avro_type["type"]
            if kind == "enum":
                return st.sampled_from(avro_type["symbols"])
            if kind == "array":
                return st.lists(for_type(avro_type["items"]), max_size=3)
            if avro_type.get("logicalType") == "timestamp-millis":
                return st.datetimes(
                    min_value=dt.datetime(2000, 1, 1),
                    max_value=dt.datetime(2100, 1, 1),
                    timezones=st.just(dt.UTC),
                ).map(lambda d: d.replace(microsecond=0))
            if avro_type.get("logicalType") == "date":
                return st.dates(min_value=dt.date(2000, 1, 1))
            return for_type(kind)
        return {
            "null": st.none(),
            "string": st.from_regex(r"\A7271[0-9]{12}\Z") | st.text(max_size=30),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "double": st.floats(allow_nan=False),
            "float": st.floats(allow_nan=False, width=32),
            "boolean": st.booleans(),
        }[avro_type]

    return st.fixed_dictionaries({f["name"]: for_type(f["type"]) for f in schema["fields"]})


def test_subscription_model_is_frozen() -> None:
    sub = Subscription(
        name="x-y", agency="bkd", event_types=["hr.employee.updated"], purpose="p", fields=["nip"]
    )
    with pytest.raises(ValueError):
        sub.purpose = "other"  # type: ignore[misc]
