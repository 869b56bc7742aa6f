"""A sweep's objective is checked against the metrics its template's runs report, before
any trial starts: one rule (finetune_api.task_metrics), in `finetune sweep` and the
operator (which parse with the same models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from finetune_api.manifest import SpecError, parse
from finetune_api.models import HyperparameterSweepSpec
from finetune_api.task_metrics import reported_metrics
from finetune_cli.app import app
from finetune_operator.handlers_sweep import parse_sweep

pytestmark = pytest.mark.unit

SPACE = {"hyperparameters.learningRate": {"type": "float", "low": 1e-5, "high": 1e-3}}


def sweep_spec(metric: str, **template: Any) -> dict[str, Any]:
    base = {
        "task": "classification",
        "model": {"path": "/m"},
        "dataset": {"train": {"path": "t.tsv"}},
    }
    return {
        "template": base | template,
        "objective": {"metric": metric, "direction": "maximize"},
        "searchSpace": SPACE,
    }


def test_a_misspelt_objective_is_refused_with_a_suggestion() -> None:
    with pytest.raises(SpecError) as err:
        parse(HyperparameterSweepSpec, sweep_spec("acuracy"), "spec.")
    message = str(err.value)
    assert message.startswith("spec.objective: metric 'acuracy' is not reported by a")
    assert "classification trial; did you mean 'accuracy'?" in message
    assert "it reports: accuracy, " in message and "f1Macro" in message


@pytest.mark.parametrize(
    ("metric", "template", "ok"),
    [
        ("accuracy", {}, True),
        ("evalLoss", {}, True),
        ("perplexity", {}, False),  # classification reports no perplexity
        ("perplexity", {"task": "causal-lm"}, True),
        ("accuracy", {"task": "causal-lm"}, False),
        ("bleu", {"task": "causal-lm"}, False),  # only with a targetColumn
        (
            "bleu",
            {"task": "causal-lm", "dataset": {"train": {"path": "t"}, "targetColumn": "r"}},
            True,
        ),
        ("int8Accuracy", {}, False),
        ("int8Accuracy", {"quantization": {"mode": "qat"}}, True),
        ("teacherAccuracy", {"distillation": {"teacher": {"path": "/t"}}}, True),
        ("sparsity", {"pruning": {"sparsity": 0.5}}, True),
        ("denseAccuracy", {"pruning": {"sparsity": 0.5}}, False),  # gradual: no dense model
        ("denseAccuracy", {"pruning": {"sparsity": 0.5, "schedule": "one-shot"}}, True),
    ],
)
def test_what_each_task_and_option_reports(metric: str, template: dict[str, Any], ok: bool) -> None:
    doc = sweep_spec(metric, **template)
    if ok:
        parse(HyperparameterSweepSpec, doc)
    else:
        with pytest.raises(SpecError, match=f"metric '{metric}' is not reported"):
            parse(HyperparameterSweepSpec, doc)


def test_the_operator_parses_with_the_same_rule() -> None:
    body = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "HyperparameterSweep",
        "metadata": {"name": "s", "namespace": "ns"},
        "spec": sweep_spec("acuracy"),
    }
    with pytest.raises(SpecError, match=r"spec\.objective: metric 'acuracy'"):
        parse_sweep(body)


def test_finetune_sweep_refuses_before_any_trial(tmp_path: Path) -> None:
    doc = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "HyperparameterSweep",
        "metadata": {"name": "s"},
        "spec": sweep_spec("acuracy"),
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["sweep", str(path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: spec.objective: metric")
    assert not (tmp_path / "out").exists()  # nothing started


def test_every_task_reports_the_common_metrics() -> None:
    for task in ("classification", "causal-lm", "masked-lm"):
        assert {"trainLoss", "evalLoss", "samplesPerSecond"} <= reported_metrics(task)
