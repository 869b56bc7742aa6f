"""batchSize auto, out-of-memory recovery inside the process, and the throughput metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import MakeJob
from transformers import TrainerCallback

from finetune_api.models import FineTuneJobSpec, Hyperparameters
from finetune_trainer import autobatch, throughput
from finetune_trainer.batching import LengthBuckets
from finetune_trainer.training import fingerprint

pytestmark = pytest.mark.trainer


def test_cpu_plan_keeps_the_effective_batch() -> None:
    assert autobatch.cpu_plan(16) == autobatch.BatchPlan(16, 1)
    assert autobatch.cpu_plan(128) == autobatch.BatchPlan(64, 2)
    assert autobatch.cpu_plan(96) == autobatch.BatchPlan(48, 2)
    assert autobatch.effective_batch(Hyperparameters(batchSize="auto")) == 16
    hp = Hyperparameters(batchSize="auto", gradientAccumulationSteps=8)
    assert autobatch.effective_batch(hp) == 128 and autobatch.per_device(hp) == 64


def test_probed_plan_takes_the_largest_size_that_fits() -> None:
    tried: list[int] = []

    def fits(batch: int) -> bool:
        tried.append(batch)
        return batch <= 20

    assert autobatch.probed_plan(64, fits) == autobatch.BatchPlan(16, 4)
    assert tried == [64, 32, 16]
    assert autobatch.probed_plan(48, lambda b: b <= 20) == autobatch.BatchPlan(12, 4)
    assert autobatch.probed_plan(8, lambda b: False) == autobatch.BatchPlan(1, 8)


def test_out_of_memory_errors_are_recognised() -> None:
    assert autobatch.is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    cpu = RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: 9 bytes")
    assert autobatch.is_oom(cpu)
    assert autobatch.is_oom(MemoryError())
    assert not autobatch.is_oom(RuntimeError("shape mismatch"))
    assert not autobatch.is_oom(KeyboardInterrupt())


def test_fingerprint_depends_on_the_effective_batch_only() -> None:
    def spec(batch: int | str, accumulation: int) -> FineTuneJobSpec:
        return FineTuneJobSpec.model_validate(
            {
                "task": "classification",
                "model": {"path": "/m"},
                "dataset": {"train": {"path": "/t.csv"}},
                "hyperparameters": {
                    "batchSize": batch,
                    "gradientAccumulationSteps": accumulation,
                },
            }
        )

    assert fingerprint(spec(16, 1)) == fingerprint(spec(8, 2)) == fingerprint(spec("auto", 1))
    assert fingerprint(spec(8, 1)) != fingerprint(spec(16, 1))


def test_halving_the_batch_keeps_the_optimizer_steps() -> None:
    lengths = np.random.default_rng(0).integers(1, 50, size=333)
    whole = list(LengthBuckets(lengths, 16, seed=3, group=2))
    halves = list(LengthBuckets(lengths, 8, seed=3, group=4))

    def step_rows(batches: list[list[int]], per_step: int) -> list[list[int]]:
        return [
            sorted(row for batch in batches[i : i + per_step] for row in batch)
            for i in range(0, len(batches), per_step)
        ]

    steps, half_steps = step_rows(whole, 2), step_rows(halves, 4)
    assert steps == half_steps


class InjectOOM(TrainerCallback):
    """Raises an out-of-memory error at a step while the batch is above `limit`."""

    def __init__(self, error: BaseException, limit: int, at_step: int) -> None:
        self.error, self.limit, self.at_step = error, limit, at_step
        self.raised = 0
        self.steps_done: list[int] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step >= self.at_step and args.per_device_train_batch_size > self.limit:
            self.raised += 1
            raise self.error

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.steps_done.append(state.global_step)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9"),
    ],
    ids=["cuda", "cpu-allocator"],
)
def test_out_of_memory_halves_the_batch_and_continues_from_the_last_step(
    error: BaseException,
    bert_dir: Path,
    make_job: MakeJob,
    sentiment_data: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    from finetune_trainer.run import run

    train, dev = sentiment_data
    job = make_job(task="classification", model_path=bert_dir, train=train, eval=dev,
                   hyperparameters={"batchSize": 16, "maxSteps": 8, "epochs": 1})  # fmt: skip
    inject = InjectOOM(error, limit=4, at_step=3)
    metrics = run(job, spec_dir=tmp_path, output_dir=tmp_path / "out", callbacks=[inject])
    assert inject.raised == 2  # 16 -> 8 -> 4
    assert inject.steps_done == list(range(1, 9))  # no step repeated, none skipped
    assert metrics["batchSize"] == 4 and metrics["gradientAccumulationSteps"] == 4
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    assert history[-1]["step"] == 8


def test_batch_size_auto_on_cpu_reports_throughput(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from finetune_trainer.run import run

    train, dev = sentiment_data
    hp = {"batchSize": "auto", "gradientAccumulationSteps": 8, "maxSteps": 2}
    job = make_job(task="classification", model_path=bert_dir, train=train, eval=dev,
                   hyperparameters=hp)  # fmt: skip
    metrics = run(job, spec_dir=tmp_path, output_dir=tmp_path / "out")
    assert metrics["batchSize"] == 64 and metrics["gradientAccumulationSteps"] == 2
    assert metrics["gpuHours"] == 0.0 and "mfu" not in metrics
    assert metrics["samplesPerSecond"] > 0
    # SST-like toy rows: 5 words + [CLS]/[SEP] = 7 tokens each
    assert metrics["tokensPerSecond"] == pytest.approx(7 * metrics["samplesPerSecond"])
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert {"batchSize", "tokensPerSecond", "gpuHours", "samplesPerSecond"} <= set(saved)


def test_meter_leaves_out_evaluation_and_saving() -> None:
    import datasets

    now = [0.0]
    meter = throughput.Meter(datasets.Dataset.from_dict({"length": [10, 20]}), lambda: now[0])

    class Args:
        per_device_train_batch_size, gradient_accumulation_steps, world_size = 4, 2, 1

    def at(t: float, event: str) -> None:
        now[0] = t
        getattr(meter, event)(Args(), None, None)

    at(1.0, "on_train_begin")
    at(2.0, "on_step_end")
    at(5.0, "on_evaluate")  # 3 s of evaluation
    at(6.0, "on_step_end")
    at(9.0, "on_save")
    at(10.0, "on_step_end")
    assert meter.loop_seconds == pytest.approx(3.0)
    assert meter.samples == 24 and meter.tokens_per_row == 15.0


def test_peak_table_and_flops_per_token() -> None:
    assert throughput.peak_flops("NVIDIA H200") == 989e12
    assert throughput.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert throughput.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert throughput.peak_flops("Tesla T4") == 65e12
    assert throughput.peak_flops("NVIDIA L4") == 121e12
    assert throughput.peak_flops("Some Future GPU") is None
    model = torch.nn.Sequential(torch.nn.Embedding(100, 8), torch.nn.Linear(8, 4))
    assert throughput.flops_per_token(model) == 6 * 32  # full training: 6N, embeddings out
    model[1].weight.requires_grad_(False)
    assert throughput.flops_per_token(model) == 4 * 32  # frozen (LoRA's base): 4N


def test_concrete_spec_probes_on_gpu_and_keeps_the_effective_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import datasets

    spec = FineTuneJobSpec.model_validate(
        {
            "task": "causal-lm",
            "model": {"path": "/m"},
            "dataset": {"train": {"path": "/t.csv"}},
            "hyperparameters": {"batchSize": "auto", "gradientAccumulationSteps": 4},
        }
    )
    probes: list[tuple[int, int, bool]] = []

    def fits(model: Any, batch: int, length: int, bf16: bool, lm: bool) -> bool:
        probes.append((batch, length, lm))
        return batch <= 16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(autobatch, "fits_on_gpu", fits)
    rows = datasets.Dataset.from_dict({"length": [5, 40, 12]})
    hp = autobatch.concrete_spec(spec, None, rows, bf16=True).hyperparameters
    assert (hp.batch_size, hp.gradient_accumulation_steps) == (16, 4)
    assert probes == [(64, 40, True), (32, 40, True), (16, 40, True)]
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun: the same split on every rank, no probe
    hp = autobatch.concrete_spec(spec, None, rows, bf16=True).hyperparameters
    assert (hp.batch_size, hp.gradient_accumulation_steps) == (64, 1) and len(probes) == 3
