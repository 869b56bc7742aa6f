"""The Grafana dashboard and the PrometheusRule use only what the operator exports.

Every metric name in every PromQL expression must be produced by the operator's
registry (finetune_operator.metrics.metric_names()), and every label matcher or
grouping label must be a label that metric has.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator import metrics

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "monitoring" / "grafana-dashboard.json"
RULES = ROOT / "deploy" / "monitoring" / "prometheusrule.yaml"

PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes",
    "clamp", "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "delta",
    "deriv", "floor", "group", "histogram_quantile", "idelta", "increase", "irate",
    "label_replace", "label_values", "last_over_time", "max", "max_over_time", "min",
    "min_over_time", "quantile", "quantile_over_time", "rate", "resets", "round", "scalar",
    "sort", "sort_desc", "stddev", "sum", "sum_over_time", "time", "timestamp", "topk", "vector",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "bool", "inf", "nan"}  # fmt: skip


def exported_labels() -> dict[str, set[str]]:
    """Sample name -> label names, from the metric objects the operator registers."""
    from prometheus_client.metrics import MetricWrapperBase

    out: dict[str, set[str]] = {}
    for obj in vars(metrics.Instruments()).values():
        if isinstance(obj, MetricWrapperBase):
            labels = set(obj._labelnames)
            out[obj._name] = labels
            if obj._type == "counter":  # prometheus_client strips _total from _name
                out[f"{obj._name}_total"] = labels
            if obj._type == "histogram":
                out[f"{obj._name}_bucket"] = labels | {"le"}
                out[f"{obj._name}_sum"] = labels
                out[f"{obj._name}_count"] = labels
    return out


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash["panels"]):
        for t in p.get("targets", []):
            yield f"panel {p['title']!r} {t['refId']}", t["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            yield f"variable {var['name']}", query


def rule_exprs() -> Iterator[tuple[str, str]]:
    rule = yaml.safe_load(RULES.read_text())
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            yield f"rule {r.get('alert') or r.get('record')}", str(r["expr"])


def all_exprs() -> list[tuple[str, str]]:
    return list(dashboard_exprs()) + list(rule_exprs())


def parse(expr: str) -> tuple[set[str], set[tuple[str, str]], set[str]]:
    """-> (metric names, (metric, matcher label) pairs, grouping labels)."""
    # Grafana's label_values(<selector>, <label>): a selector plus a label it must have.
    lv = re.fullmatch(r"\s*label_values\((.+),\s*([a-zA-Z_]\w*)\s*\)\s*", expr, re.S)
    if lv:
        expr = f"group by ({lv.group(2)}) ({lv.group(1)})"
    text = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables ($__rate_interval, ${x})
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # string literals
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    matchers: set[tuple[str, str]] = set()
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", text):
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)):
            matchers.add((m.group(1), label))
    grouping: set[str] = set()
    for m in re.finditer(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text
    ):
        grouping |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word in KEYWORDS:
            assert call is None or word in PROMQL_FUNCTIONS, f"unknown PromQL function {word}"
            continue
        names.add(word)
    return names, matchers, grouping


def test_parser_finds_names_labels_and_skips_functions() -> None:
    names, matchers, grouping = parse(
        "histogram_quantile(0.99, sum by (le, kind) (rate(finetune_reconcile_seconds_bucket"
        '[$__rate_interval]))) > 2 and on (namespace) foo{phase="Failed", x=~"a|b"} offset 1h'
    )
    assert names == {"finetune_reconcile_seconds_bucket", "foo"}
    assert matchers == {("foo", "phase"), ("foo", "x")}
    assert grouping == {"le", "kind", "namespace"}


def test_sources_have_expressions() -> None:
    assert len(list(dashboard_exprs())) >= 8
    assert len(list(rule_exprs())) >= 2


@pytest.mark.parametrize(("where", "expr"), all_exprs(), ids=[w for w, _ in all_exprs()])
def test_every_metric_name_is_exported(where: str, expr: str) -> None:
    names, matchers, grouping = parse(expr)
    assert names, f"{where}: no metric in {expr!r}"
    known = metrics.metric_names()
    assert names <= known, f"{where}: not exported by the operator: {sorted(names - known)}"
    labels = exported_labels()
    for metric, label in matchers:
        assert label in labels[metric], f"{where}: {metric} has no label {label!r}"
    all_labels = set().union(*(labels[n] for n in names))
    assert grouping <= all_labels, f"{where}: unknown grouping labels {grouping - all_labels}"


def test_label_values_match_what_the_operator_writes() -> None:
    """Phase and state values in matchers are the ones the operator uses."""
    for where, expr in all_exprs():
        for value in re.findall(r'phase=~?"([^"]+)"', expr):
            assert set(value.split("|")) <= set(metrics.PHASES), where
        for value in re.findall(r'state=~?"([^"]+)"', expr):
            assert set(value.split("|")) <= set(metrics.SWEEP_STATES), where


def test_dashboard_covers_the_brief() -> None:
    used = set()
    for _, expr in dashboard_exprs():
        used |= parse(expr)[0]
    assert {
        "finetune_job_phase",
        "finetune_job_metric",
        "finetune_sweep_best_value",
        "finetune_reconcile_seconds_bucket",
        "finetune_job_gpu_seconds_total",
        "finetune_job_cost_total",
        "finetune_job_oom_retries",
    } <= used
    titles = " ".join(p["title"].lower() for p in json.loads(DASHBOARD.read_text())["panels"])
    for words in ("phase", "loss", "accuracy", "best", "reconcile", "throughput", "mfu", "gpu"):
        assert words in titles


def test_dashboard_is_importable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    # The data source is a variable, so the JSON imports into any Grafana.
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_rules_are_well_formed() -> None:
    rule = yaml.safe_load(RULES.read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"FineTuneJobFailed", "HyperparameterSweepStalled"} <= set(alerts)
    for name, r in alerts.items():
        assert r["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert r["annotations"]["summary"] and r["annotations"]["description"], name
        assert re.fullmatch(r"\d+[smh]", r["for"]), name
