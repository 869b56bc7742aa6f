"""A table of malformed manifests: refused by the CRD schema (as `kubectl apply`
would) and by `finetune run`/`finetune sweep` with a message naming the field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from finetune_api.models import FineTuneJob
from finetune_cli.app import app

pytestmark = pytest.mark.unit

# The real kube-apiserver's dry-run create (tests/conftest.py server_validate).
Validate = Callable[[dict[str, Any]], list[str]]

JOB: dict[str, Any] = {
    "apiVersion": "finetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "good"},
    "spec": {
        "task": "classification",
        "model": {"name": "bert-base-uncased"},
        "dataset": {"train": {"path": "/data/train.csv"}},
        "hyperparameters": {"learningRate": 5e-5, "batchSize": 16},
    },
}
SWEEP: dict[str, Any] = {
    "apiVersion": "finetune.dev/v1alpha1",
    "kind": "HyperparameterSweep",
    "metadata": {"name": "good-sweep"},
    "spec": {
        "template": copy.deepcopy(JOB["spec"]),
        "searchSpace": {
            "hyperparameters.learningRate": {
                "type": "float",
                "low": 1e-5,
                "high": 1e-3,
                "log": True,
            },
            "hyperparameters.batchSize": {"type": "categorical", "choices": [8, 16]},
        },
        "maxTrials": 4,
        "parallelism": 2,
    },
}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


_DELETE = object()

# (id, base, mutation, words that must appear in both error messages)
CASES = [
    ("wrong-type", JOB, _set("spec.hyperparameters.learningRate", "fast"), ["learningRate"]),
    ("unknown-field", JOB, _set("spec.hyperparameters.learning_rate", 1e-4), ["learning_rate"]),
    ("unknown-top", JOB, _set("spec.trainer", {}), ["trainer"]),
    ("missing-model", JOB, _set("spec.model", _DELETE), ["model"]),
    ("model-empty", JOB, _set("spec.model", {}), ["model"]),
    ("both-name-and-path", JOB, _set("spec.model", {"name": "a", "path": "/b"}), ["model"]),
    (
        "both-path-and-uri",
        JOB,
        _set("spec.model", {"path": "/b", "uri": "s3://m/b"}),
        ["exactly one of model.name, model.path or model.uri"],
    ),
    ("model-uri-no-scheme", JOB, _set("spec.model", {"uri": "bucket/m"}), ["uri"]),
    (
        "data-path-and-uri",
        JOB,
        _set("spec.dataset.train", {"path": "t.csv", "uri": "s3://d/t.csv"}),
        ["exactly one of path, hub or uri"],
    ),
    ("hub-repo-no-namespace", JOB, _set("spec.output", {"hubRepo": "just-a-name"}), ["hubRepo"]),
    ("negative-lr", JOB, _set("spec.hyperparameters.learningRate", -1e-4), ["learningRate"]),
    ("zero-batch", JOB, _set("spec.hyperparameters.batchSize", 0), ["batchSize"]),
    ("huge-batch", JOB, _set("spec.hyperparameters.batchSize", 5000), ["batchSize"]),
    ("word-batch", JOB, _set("spec.hyperparameters.batchSize", "big"), ["batchSize"]),
    ("bad-task", JOB, _set("spec.task", "summarization"), ["task"]),
    ("bad-precision", JOB, _set("spec.hyperparameters.precision", "int4"), ["precision"]),
    ("eval-fraction", JOB, _set("spec.dataset.evalFraction", 1.5), ["evalFraction"]),
    ("no-train", JOB, _set("spec.dataset.train", _DELETE), ["train"]),
    ("train-two-sources", JOB, _set("spec.dataset.train", {"path": "a", "hub": "b"}), ["train"]),
    (
        "qat-on-lm",
        JOB,
        lambda d: d["spec"].update(task="causal-lm", quantization={"mode": "qat"}),
        ["qat"],
    ),
    (
        "distillation-on-lm",
        JOB,
        lambda d: d["spec"].update(task="causal-lm", distillation={"teacher": {"name": "t"}}),
        ["distillation"],
    ),
    ("dpo-on-classification", JOB, _set("spec.method", {"type": "dpo"}), ["method.type"]),
    (
        "orpo-on-masked-lm",
        JOB,
        lambda d: d["spec"].update(task="masked-lm", method={"type": "orpo"}),
        ["method.type"],
    ),
    ("bad-method", JOB, _set("spec.method", {"type": "ppo"}), ["type"]),
    (
        "zero-beta",
        JOB,
        lambda d: d["spec"].update(task="causal-lm", method={"type": "dpo", "beta": 0}),
        ["beta"],
    ),
    (
        "chat-format-on-classification",
        JOB,
        _set("spec.dataset.format", "messages"),
        ["dataset.format"],
    ),
    (
        "bad-format",
        JOB,
        lambda d: (
            d["spec"].update(task="causal-lm") or d["spec"]["dataset"].update(format="chatml")
        ),
        ["format"],
    ),
    (
        "assistant-loss-on-text",
        JOB,
        lambda d: d["spec"].update(task="causal-lm", loss="assistant"),
        ["loss"],
    ),
    (
        "qlora-with-qat",
        JOB,
        lambda d: d["spec"].update(lora={"quantizeBase": "nf4"}, quantization={"mode": "qat"}),
        ["quantizeBase", "qat"],
    ),
    (
        "qlora-with-fsdp",
        JOB,
        lambda d: d["spec"].update(
            task="causal-lm", lora={"quantizeBase": "nf4"}, distributed={"strategy": "fsdp"}
        ),
        ["quantizeBase"],
    ),
    ("qlora-bad-mode", JOB, _set("spec.lora", {"quantizeBase": "int4"}), ["quantizeBase"]),
    ("distillation-no-teacher", JOB, _set("spec.distillation", {"alpha": 0.5}), ["teacher"]),
    (
        "teacher-name-and-path",
        JOB,
        _set("spec.distillation", {"teacher": {"name": "t", "path": "/t"}}),
        ["teacher", "model.name"],
    ),
    (
        "distillation-alpha-over-1",
        JOB,
        _set("spec.distillation", {"teacher": {"name": "t"}, "alpha": 1.5}),
        ["alpha"],
    ),
    (
        "distillation-zero-temperature",
        JOB,
        _set("spec.distillation", {"teacher": {"name": "t"}, "temperature": 0}),
        ["temperature"],
    ),
    ("pruning-sparsity-too-high", JOB, _set("spec.pruning", {"sparsity": 0.99}), ["sparsity"]),
    ("pruning-bad-method", JOB, _set("spec.pruning", {"method": "random"}), ["method"]),
    (
        "pruning-heads-gradual",
        JOB,
        _set("spec.pruning", {"method": "heads", "schedule": "gradual"}),
        ["one-shot"],
    ),
    (
        "pruning-with-qat",
        JOB,
        lambda d: d["spec"].update(pruning={"sparsity": 0.5}, quantization={"mode": "qat"}),
        ["pruning with quantization"],
    ),
    (
        "pruning-with-lora",
        JOB,
        lambda d: d["spec"].update(pruning={"sparsity": 0.5}, lora={"rank": 4}),
        ["pruning with lora"],
    ),
    ("bad-quantity", JOB, _set("spec.resources", {"cpu": "lots"}), ["cpu"]),
    ("negative-gpus", JOB, _set("spec.resources", {"gpus": -1}), ["gpus"]),
    ("lora-rank-zero", JOB, _set("spec.lora", {"rank": 0}), ["rank"]),
    (
        "bad-secret-env",
        JOB,
        _set("spec.secrets", [{"env": "1X", "secretRef": {"name": "s", "key": "k"}}]),
        ["env"],
    ),
    (
        "search-path-missing",
        SWEEP,
        _set(
            "spec.searchSpace.hyperparameters.learningRat",
            {"type": "float", "low": 0.1, "high": 0.2},
        ),
        ["searchSpace"],
    ),
    ("parallelism-over-max", SWEEP, _set("spec.parallelism", 10), ["parallelism"]),
    (
        "categorical-no-choices",
        SWEEP,
        _set("spec.searchSpace.hyperparameters.batchSize", {"type": "categorical"}),
        ["choices"],
    ),
    (
        "float-low-above-high",
        SWEEP,
        _set(
            "spec.searchSpace.hyperparameters.learningRate",
            {"type": "float", "low": 0.5, "high": 0.1},
        ),
        ["low"],
    ),
    (
        "log-nonpositive",
        SWEEP,
        _set(
            "spec.searchSpace.hyperparameters.learningRate",
            {"type": "float", "low": 0, "high": 0.1, "log": True},
        ),
        ["log"],
    ),
    ("bad-sampler", SWEEP, _set("spec.sampler", {"type": "bayes"}), ["sampler"]),
    ("bad-direction", SWEEP, _set("spec.objective", {"direction": "up"}), ["direction"]),
    (
        "template-negative-lr",
        SWEEP,
        _set("spec.template.hyperparameters.learningRate", -1),
        ["learningRate"],
    ),
]


def _fix_search_path(doc: dict[str, Any]) -> None:
    """_set splits on dots; searchSpace keys contain dots, so rebuild that map by hand."""
    space = doc["spec"].get("searchSpace")
    if not isinstance(space, dict):
        return
    fixed: dict[str, Any] = {}
    for key, value in space.items():
        if key == "hyperparameters" and isinstance(value, dict):
            for sub, dist in value.items():
                fixed[f"hyperparameters.{sub}"] = dist
        else:
            fixed[key] = value
    doc["spec"]["searchSpace"] = fixed


def _bad(base: dict[str, Any], mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    if base is SWEEP:
        # mutate through a nested view of the dotted keys, then flatten again
        space = doc["spec"]["searchSpace"]
        doc["spec"]["searchSpace"] = {
            "hyperparameters": {k.split(".", 1)[1]: v for k, v in space.items()}
        }
        mutate(doc)
        _fix_search_path(doc)
    else:
        mutate(doc)
    return doc


@pytest.mark.cluster
def test_the_base_manifests_are_good(tmp_path: Path, server_validate: Validate) -> None:
    assert server_validate(JOB) == []
    auto = _bad(JOB, _set("spec.hyperparameters.batchSize", "auto"))
    assert server_validate(auto) == []
    assert FineTuneJob.model_validate(auto).spec.hyperparameters.batch_size == "auto"
    assert server_validate(SWEEP) == []
    assert _bad(SWEEP, lambda d: None) == SWEEP


@pytest.mark.parametrize(("case", "base", "mutate", "words"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.cluster
def test_crd_schema_rejects(
    case: str, base: dict[str, Any], mutate: Any, words: list[str], server_validate: Validate
) -> None:
    errors = server_validate(_bad(base, mutate))
    assert errors, f"{case}: the CRD schema accepted a bad manifest"
    text = "\n".join(errors)
    assert any(w in text for w in words), text


@pytest.mark.parametrize(("case", "base", "mutate", "words"), CASES, ids=[c[0] for c in CASES])
def test_cli_rejects_with_field_name(
    case: str, base: dict[str, Any], mutate: Any, words: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_bad(base, mutate)))
    command = "run" if base is JOB else "sweep"
    result = CliRunner().invoke(app, [command, str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ")
    assert any(w in result.stderr for w in words), result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no YAML document"),
        ("kind: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "expected exactly one FineTuneJob",
        ),
    ],
)
def test_cli_rejects_unusable_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(content)
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert message in result.stderr


def test_cli_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "cannot read the file" in result.stderr


def test_set_override_bad_syntax(tmp_path: Path) -> None:
    path = tmp_path / "j.yaml"
    path.write_text(yaml.safe_dump(JOB))
    result = CliRunner().invoke(app, ["run", str(path), "--set", "spec.hyperparameters"])
    assert result.exit_code == 2
    assert "expected PATH=VALUE" in result.stderr


def test_set_override_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "j.yaml"
    path.write_text(yaml.safe_dump(JOB))
    result = CliRunner().invoke(
        app, ["run", str(path), "--set", "spec.hyperparameters.batchSize=-3"]
    )
    assert result.exit_code == 2
    assert "spec.hyperparameters.batchSize" in result.stderr
