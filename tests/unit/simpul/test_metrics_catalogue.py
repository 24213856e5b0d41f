"""The metrics catalogue is closed and documented; dashboard, alerts and compose are valid."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from simpul import metrics
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.unit

DOCS = REPO_ROOT / "docs" / "operations.md"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "simpul.json"
PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
CODE_DIRS = ("simpul", "streams", "sinks", "connectors")
PROMETHEUS_CLASSES = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
#: Series Prometheus itself or prometheus_client's default collectors provide.
STANDARD = {"up", "scrape_duration_seconds", "process_", "python_"}
#: PromQL words that are not metric names.
PROMQL_WORDS = {
    "sum", "by", "rate", "irate", "increase", "histogram_quantile", "max", "min", "count",
    "avg", "time", "deriv", "and", "or", "unless", "without", "le", "on", "ignoring",
    "humanizePercentage", "topk", "bottomk", "abs", "clamp_min", "absent",
}  # fmt: skip


def catalogue() -> dict[str, str]:
    """Exported metric name -> type, for every metric defined in simpul/metrics.py."""
    found = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            name = family.name + ("_total" if family.type == "counter" else "")
            found[name] = family.type
    return found


def documented() -> dict[str, str]:
    """Metric name -> the row's "area" cell, from the table in docs/operations.md."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(r"^\|\s*`(simpul_[a-z0-9_]+)`\s*\|([^|]*)\|([^|]*)\|", line)
        if match:
            rows[match.group(1)] = match.group(3).strip()
    return rows


def test_metrics_are_constructed_only_in_the_catalogue_module() -> None:
    offenders = []
    for folder in CODE_DIRS:
        for path in (REPO_ROOT / folder).rglob("*.py"):
            if path == REPO_ROOT / "simpul" / "metrics.py":
                continue
            tree = ast.parse(path.read_text(), str(path))
            names = {
                alias.asname or alias.name
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "") == "prometheus_client"
                for alias in node.names
                if alias.name in PROMETHEUS_CLASSES
            }
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                direct = isinstance(func, ast.Name) and func.id in names
                dotted = (
                    isinstance(func, ast.Attribute)
                    and func.attr in PROMETHEUS_CLASSES
                    and isinstance(func.value, ast.Name)
                    and func.value.id in {"prometheus_client", "prom"}
                )
                if direct or dotted:
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert offenders == [], f"metrics constructed outside simpul/metrics.py: {offenders}"


def test_metric_names_follow_prometheus_conventions() -> None:
    units = ("_seconds", "_bytes", "_events", "_messages", "_records", "_rows", "_ratio")
    problems = []
    for name, kind in catalogue().items():
        if not re.fullmatch(r"simpul_[a-z][a-z0-9_]*[a-z0-9]", name):
            problems.append(f"{name}: want simpul_ prefix and snake_case")
        if kind == "counter" and not name.endswith("_total"):
            problems.append(f"{name}: a counter ends in _total")
        if kind != "counter" and name.endswith("_total"):
            problems.append(f"{name}: only counters end in _total")
        if kind in {"histogram", "summary"} and not name.endswith(units):
            problems.append(f"{name}: a {kind} names its base unit ({', '.join(units)})")
        if re.search(r"_(milliseconds|ms|minutes|hours|kilobytes|megabytes|percent)(_|$)", name):
            problems.append(f"{name}: use base units (seconds, bytes, ratio)")
        if "timestamp" in name and not name.endswith("_timestamp_seconds"):
            problems.append(f"{name}: a timestamp is _timestamp_seconds")
    assert problems == []


def test_every_metric_is_in_the_documented_table() -> None:
    code, docs = catalogue(), documented()
    assert len(code) >= 14
    missing = sorted(set(code) - set(docs))
    assert missing == [], f"add a row to the metrics table in docs/operations.md: {missing}"
    # A documented metric not in the code must say which issue provides it.
    ghosts = sorted(n for n in set(docs) - set(code) if "issue" not in docs[n])
    assert ghosts == [], f"documented but not in simpul/metrics.py: {ghosts}"


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS}


def _known(name: str, names: set[str]) -> bool:
    base = re.sub(r"_(bucket|count|sum)$", "", name)
    return (
        name in names
        or base in names
        or name in STANDARD
        or any(name.startswith(p) for p in STANDARD if p.endswith("_"))
    )


def test_dashboard_loads_and_queries_only_catalogued_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = set(documented())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("throughput by event type", "agency", "dead-letter", "p50", "lag", "webhook"):
        assert topic in titles, topic
    assert "freshness" in titles
    assert any("histogram_quantile(0.99" in e for e in exprs)
    unknown = {n for e in exprs for n in _metric_names(e) if not _known(n, names)}
    assert unknown == set()
    provider = yaml.safe_load(
        (REPO_ROOT / "deploy/grafana/provisioning/dashboards/simpul.yaml").read_text()
    )
    datasource = yaml.safe_load(
        (REPO_ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {datasource["datasources"][0]["uid"]}


def _rules() -> list[dict[str, object]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_cover_the_operational_failures_with_catalogued_metrics() -> None:
    rules = {str(r["alert"]): str(r["expr"]) for r in _rules()}
    assert {
        "SimpulDeadLettersRising",
        "SimpulConsumerLagGrowing",
        "SimpulAgencySilent",
        "SimpulWebhookFailing",
        "SimpulStoreDown",
        "SimpulStoreErrors",
    } <= set(rules)
    names = set(documented())
    unknown = {n for e in rules.values() for n in _metric_names(e) if not _known(n, names)}
    assert unknown == set()


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (`apt-get install prometheus` provides it)")
    return path


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    promtool = _promtool()
    check = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in check.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stdout + config.stderr
