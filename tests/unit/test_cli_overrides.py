"""`--set` on the shipped examples: one source of a model/data source replaces the other;
a sweep's trial fields are addressed under spec.template."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_api.manifest import SpecError, load_manifest
from finetune_api.models import FineTuneJob, HyperparameterSweep
from finetune_cli.app import app

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_model_path_replaces_model_name_as_the_example_header_says() -> None:
    job = load_manifest(
        EXAMPLES / "sst2-minilm.yaml", FineTuneJob, ["spec.model.path=/models/minilm"]
    )
    assert job.spec.model.path == "/models/minilm"
    assert job.spec.model.name is None


def test_model_name_replaces_model_path(tmp_path: Path) -> None:
    text = (EXAMPLES / "sst2-minilm.yaml").read_text()
    text = text.replace("name: sentence-transformers/all-MiniLM-L6-v2", "path: /models/x")
    manifest = tmp_path / "job.yaml"
    manifest.write_text(text)
    job = load_manifest(manifest, FineTuneJob, ["spec.model.name=bert-base-uncased"])
    assert (job.spec.model.name, job.spec.model.path) == ("bert-base-uncased", None)


def test_data_path_replaces_hub_and_its_config(tmp_path: Path) -> None:
    text = (EXAMPLES / "sst2-minilm.yaml").read_text()
    text = text.replace("train: {path: data/sst2/train.tsv}", "train: {hub: glue, config: sst2}")
    manifest = tmp_path / "job.yaml"
    manifest.write_text(text)
    assert load_manifest(manifest, FineTuneJob).spec.dataset.train.hub == "glue"
    job = load_manifest(manifest, FineTuneJob, ["spec.dataset.train.path=train.tsv"])
    train = job.spec.dataset.train
    # a relative path given with --set is the shell's: against the current directory
    assert (train.path, train.hub, train.config) == (str(Path.cwd() / "train.tsv"), None, None)
    job = load_manifest(manifest, FineTuneJob, ["spec.dataset.eval.hub=imdb"])
    assert (job.spec.dataset.eval.hub, job.spec.dataset.eval.path) == ("imdb", None)  # type: ignore[union-attr]


def test_a_uri_replaces_a_name_or_path_and_back() -> None:
    overrides = [
        "spec.model.uri=s3://models/minilm",
        "spec.dataset.train.uri=hf://datasets/o/d/t.csv",
    ]
    job = load_manifest(EXAMPLES / "sst2-minilm.yaml", FineTuneJob, overrides)
    assert (job.spec.model.uri, job.spec.model.name) == ("s3://models/minilm", None)
    train = job.spec.dataset.train
    assert (train.uri, train.path) == ("hf://datasets/o/d/t.csv", None)
    back = load_manifest(
        EXAMPLES / "sst2-minilm.yaml", FineTuneJob, [*overrides, "spec.model.path=/m"]
    )
    assert (back.spec.model.path, back.spec.model.uri) == ("/m", None)


def test_sweep_template_overrides_and_a_hint_for_the_job_form() -> None:
    sweep = EXAMPLES / "sweep-sst2.yaml"
    spec = load_manifest(
        sweep,
        HyperparameterSweep,
        ["spec.template.hyperparameters.epochs=1", "spec.template.model.path=/models/m"],
    )
    assert spec.spec.template.hyperparameters.epochs == 1
    assert spec.spec.template.model.path == "/models/m"
    with pytest.raises(SpecError, match=r"spec\.template\.hyperparameters\.epochs=\.\.\."):
        load_manifest(sweep, HyperparameterSweep, ["spec.hyperparameters.epochs=1"])
    assert load_manifest(sweep, HyperparameterSweep, ["spec.maxTrials=3"]).spec.max_trials == 3


def test_sweep_help_example_is_a_sweep_path() -> None:
    result = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "spec.template.hyperparameters.epochs=1" in result.output
    assert "--set spec.hyperparameters.epochs" not in result.output
