"""Every manifest in examples/ runs locally as written: its own data (bundled under
examples/data), only the model path set (a tiny model here), artifacts under ./runs/NAME.
Each goes through the local entry point (`finetune run`'s, or `finetune sweep`'s) for one
training step, then evaluates and saves as a full run does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api.manifest import load_manifest
from finetune_api.models import FineTuneJob, HyperparameterSweep

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _kind(path: Path) -> str:
    return str(next(d for d in yaml.safe_load_all(path.read_text()) if d)["kind"])


FILES = sorted(EXAMPLES.glob("*.yaml"))
JOB_FILES = [p for p in FILES if _kind(p) == "FineTuneJob"]
SWEEP_FILES = [p for p in FILES if _kind(p) == "HyperparameterSweep"]
ONE_STEP = "spec.hyperparameters.maxSteps=1"


def _model_for(job: FineTuneJob, bert_dir: Path, gpt2_dir: Path, llama_dir: Path) -> Path:
    """A chat or preference example needs a model with a chat template: the tiny Llama."""
    spec = job.spec
    if spec.dataset.format != "text" or spec.method.type != "sft":
        return llama_dir
    return gpt2_dir if spec.task.value == "causal-lm" else bert_dir


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.tiny_models import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, bert_dir: Path) -> Path:
    """The run the distillation example learns from (its first step: sst2-minilm)."""
    from finetune_trainer.run import run

    out = tmp_path_factory.mktemp("teacher") / "sst2-minilm"
    job = load_manifest(
        EXAMPLES / "sst2-minilm.yaml", FineTuneJob, [f"spec.model.path={bert_dir}", ONE_STEP]
    )
    run(job, spec_dir=EXAMPLES, output_dir=out)
    return out


def test_the_examples_are_all_here() -> None:
    names = {p.name for p in FILES}
    assert {"sst2-minilm.yaml", "lora-causal-lm.yaml", "mlm-domain-adaptation.yaml"} <= names
    assert {"qat-classification.yaml", "multinode-sst2.yaml", "sweep-sst2.yaml"} <= names
    assert len(JOB_FILES) >= 7 and SWEEP_FILES


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_each_job_example_runs_locally_as_written(
    path: Path,
    bert_dir: Path,
    gpt2_dir: Path,
    llama_dir: Path,
    teacher: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from finetune_cli.launch import default_output

    monkeypatch.chdir(tmp_path)  # as a user in a fresh clone's root: ./runs/NAME
    plain = load_manifest(path, FineTuneJob)
    assert plain.spec.output.path is None, "a local run must write under ./runs/NAME"
    assert default_output(plain) == Path("runs") / plain.metadata.name
    overrides = [f"spec.model.path={_model_for(plain, bert_dir, gpt2_dir, llama_dir)}"]
    if plain.spec.distillation is not None:  # the documented other teacher: a run directory
        overrides.append(f"spec.distillation.teacher.path={teacher}")
    job = load_manifest(path, FineTuneJob, [*overrides, ONE_STEP])
    out = tmp_path / "runs" / job.metadata.name
    if job.spec.resources.nodes > 1:
        from finetune_cli.launch import run_workers

        metrics = run_workers(job, spec_dir=EXAMPLES, output=None)
        assert metrics["worldSize"] == job.spec.resources.nodes
    else:
        from finetune_trainer.run import run_local

        metrics = run_local(job, spec_dir=EXAMPLES)
    state = json.loads((out / "metrics.json").read_text())
    assert state["phase"] == "Succeeded" and state["progress"]["step"] == 1
    assert "evalLoss" in metrics and (out / "run.json").is_file()


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_each_sweep_example_runs_locally_as_written(
    path: Path, bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_cli.sweep_local import run_sweep

    monkeypatch.chdir(tmp_path)
    overrides = [
        f"spec.template.model.path={bert_dir}",
        "spec.template.hyperparameters.maxSteps=1",
        "spec.maxTrials=1",
        "spec.parallelism=1",
    ]
    sweep = load_manifest(path, HyperparameterSweep, overrides)
    result: Any = run_sweep(sweep, spec_dir=EXAMPLES)
    assert result.output.resolve() == (tmp_path / "runs" / sweep.metadata.name).resolve()
    (record,) = result.records
    assert record.status.value == "Succeeded", record.message
