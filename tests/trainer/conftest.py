"""Shared fixtures for trainer tests: the tiny models and toy data of support.tiny_models."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.tiny_models import (  # re-exported: tests import them from conftest
    DOMAIN,
    FILLER,
    QA,
    sentiment_rows,
    tiny_bert,
    tiny_gpt2,
    topic_rows,
    write_rows,
)

__all__ = ["DOMAIN", "FILLER", "QA", "sentiment_rows", "topic_rows", "write_rows"]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine
    spinning OpenMP workers make every step many times slower under contention."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


MakeJob = Callable[..., Any]


@pytest.fixture
def make_job() -> MakeJob:
    """make_job(task=..., model_path=..., train=..., eval=..., **spec overrides) -> FineTuneJob."""
    from finetune_api.models import FineTuneJob

    def make(
        *,
        task: str,
        model_path: Path,
        train: Path,
        eval: Path | None = None,
        name: str = "t",
        hyperparameters: dict[str, Any] | None = None,
        dataset: dict[str, Any] | None = None,
        **spec: Any,
    ) -> FineTuneJob:
        hp = {"learningRate": 5e-3, "epochs": 3, "batchSize": 8, "maxLength": 32, "loggingSteps": 2}
        ds: dict[str, Any] = {"train": {"path": str(train)}}
        if eval is not None:
            ds["eval"] = {"path": str(eval)}
        doc = {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name},
            "spec": {
                "task": task,
                "model": {"path": str(model_path)},
                "dataset": ds | (dataset or {}),
                "hyperparameters": hp | (hyperparameters or {}),
                **spec,
            },
        }
        return FineTuneJob.model_validate(doc)

    return make


@pytest.fixture
def sentiment_data(tmp_path: Path) -> tuple[Path, Path]:
    return (
        write_rows(tmp_path / "data" / "train.csv", sentiment_rows(96, seed=1)),
        write_rows(tmp_path / "data" / "dev.csv", sentiment_rows(32, seed=2)),
    )


def train_losses(run_dir: Path) -> list[float]:
    """The logged training losses of a finished run, in step order."""
    history = json.loads((run_dir / "log_history.json").read_text())
    return [float(h["loss"]) for h in history if "loss" in h]
