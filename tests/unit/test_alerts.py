"""Alert rules and the Grafana dashboard only name metrics (and labels) the API exports;
promtool (Prometheus's own checker) accepts the rules and its rule tests pass."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import serve.app
import serve.ops_metrics  # noqa: F401

OBSERVABILITY = Path(__file__).resolve().parents[2] / "cluster" / "observability"
ALERTS = OBSERVABILITY / "alerts.yml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
PROMETHEUS_OWN = {"up": {"job", "instance"}}  # made by Prometheus for every scrape target
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum")}
_SELECTOR = re.compile(r"\b(agora_[a-z0-9_]+|up)\b(\{[^}]*\})?")
_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!=|!~|=)")


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, for every metric registered by the API's modules."""
    names: dict[str, set[str]] = dict(PROMETHEUS_OWN)
    for collector in list(REGISTRY._collector_to_names):
        labels = set(getattr(collector, "_labelnames", ()))
        describe = getattr(collector, "describe", None)
        for family in describe() if describe else ():
            suffixes = SUFFIXES.get(family.type, ("",))
            for suffix in suffixes:
                names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def _check_expr(expr: str, metrics: dict[str, set[str]]) -> list[str]:
    problems = []
    found = _SELECTOR.findall(expr)
    if not found:
        problems.append(f"names no metric: {expr}")
    for name, selector in found:
        if name not in metrics:
            problems.append(f"{name} is not exported")
            continue
        unknown = set(_LABEL.findall(selector)) - metrics[name]
        if unknown:
            problems.append(f"{name} has no label {sorted(unknown)}")
    return problems


def _rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def test_exported_names_are_found():
    metrics = exported()
    assert "agora_http_requests_total" in metrics and "agora_dependency_up" in metrics
    assert metrics["agora_http_request_seconds_bucket"] == {"route", "le"}
    assert _check_expr("agora_nope_total", metrics) == ["agora_nope_total is not exported"]
    assert _check_expr('agora_http_requests_total{path="/"}', metrics)


def test_every_alert_names_exported_metrics_and_labels():
    metrics = exported()
    rules = _rules()
    assert len(rules) >= 7
    problems = {rule["alert"]: _check_expr(rule["expr"], metrics) for rule in rules}
    assert not any(problems.values()), problems


def test_the_seeds_p1_p2_list_is_covered():
    by_name = {rule["alert"]: rule for rule in _rules()}
    for name, severity, threshold in (
        ("AgoraApiDown", "P1", "== 0"),
        ("AgoraDependencyDown", "P1", "== 0"),
        ("AgoraPaymentFailuresHigh", "P1", "> 0.05"),
        ("AgoraErrorRateHigh", "P1", "> 0.01"),
        ("AgoraLatencyP99High", "P2", "> 1"),
        ("AgoraConsumerLag", "P2", "> 60"),
        ("AgoraDiskAlmostFull", "P2", "> 0.9"),
    ):
        rule = by_name[name]
        assert rule["labels"]["severity"] == severity, name
        assert threshold in rule["expr"], name
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"], name


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_checks_and_unit_tests_the_rules():
    check = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=OBSERVABILITY,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_the_dashboard_queries_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    metrics = exported()
    panels = dashboard["panels"]
    assert len(panels) >= 10
    assert len({p["id"] for p in panels}) == len(panels)
    problems = {}
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            found = _check_expr(target["expr"], metrics)
            if found:
                problems[panel["title"]] = found
    assert not problems, problems
