"""Every trainer failure ends in one clear `error:` line on stderr, never a traceback.

A failure is injected in each stage (spec parse, data load, tokenizer load, model load,
training, evaluation, saving, and a user error raised mid-training, when a progress bar
holds the cursor) of both entry points, `finetune run FILE` and the image's
`python -m finetune_trainer --spec FILE`, each a real process. Stages past the spec run
a valid tiny job; the failure comes from a `sitecustomize` on PYTHONPATH that replaces
one library call with one that raises, as a bug, an out-of-memory or a full disk would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import sentiment_rows, write_rows

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

FINETUNE = Path(sys.executable).with_name("finetune")

# Installed at interpreter start-up in the child process (never in this one).
SITECUSTOMIZE = """
import errno, os

stage = os.environ.get("INJECT_STAGE", "")


def _raise(exc):
    def boom(*args, **kwargs):
        raise exc
    return boom


if stage:
    import torch
    import transformers

    if stage == "tokenizer":
        transformers.AutoTokenizer.from_pretrained = _raise(
            RuntimeError("injected: tokenizer file is corrupt"))
    elif stage == "model":
        transformers.PreTrainedModel.from_pretrained = classmethod(_raise(
            RuntimeError("injected: weights do not match the config")))
    elif stage == "training":
        transformers.Trainer.training_step = _raise(
            torch.OutOfMemoryError("injected: CUDA out of memory"))
    elif stage == "evaluation":
        transformers.Trainer.evaluate = _raise(RuntimeError("injected: eval crashed"))
    elif stage == "training-user":  # an error the user can fix, raised mid-training
        from finetune_trainer.errors import DataError

        transformers.Trainer.training_step = _raise(DataError("injected: row 7 is unusable"))
    elif stage == "saving":  # a full disk after part of the model was written
        def save_partly(self, save_directory, *args, **kwargs):
            os.makedirs(save_directory, exist_ok=True)
            with open(os.path.join(save_directory, "model.safetensors"), "wb") as f:
                f.write(b"the first bytes")
            raise OSError(errno.ENOSPC, "injected: No space left on device")

        transformers.PreTrainedModel.save_pretrained = save_partly
    else:
        raise SystemExit(f"unknown INJECT_STAGE {stage}")
"""

# stage -> (what breaks the job, text the error line must carry)
STAGES: dict[str, tuple[dict[str, Any], str]] = {
    "spec": ({"hyperparameters": {"learningRate": -1}}, "learningRate"),
    "data": ({"dataset": {"train": {"path": "missing.csv"}}}, "missing.csv"),
    "tokenizer": ({}, "injected: tokenizer file is corrupt"),
    "model": ({}, "injected: weights do not match the config"),
    "training": ({}, "injected: CUDA out of memory"),
    "evaluation": ({}, "injected: eval crashed"),
    "saving": ({}, "model: no space left on device while saving the model; nothing of it"),
    "training-user": ({}, "injected: row 7 is unusable"),
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, bert_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("error-paths")
    write_rows(root / "train.csv", sentiment_rows(24, seed=1))
    write_rows(root / "dev.csv", sentiment_rows(8, seed=2))
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (root / "model").symlink_to(bert_dir)
    return root


def _spec(root: Path, stage: str, entry: str) -> Path:
    broken, _ = STAGES[stage]
    spec: dict[str, Any] = {
        "task": "classification",
        "model": {"path": "model"},
        "dataset": {"train": {"path": "train.csv"}, "eval": {"path": "dev.csv"}},
        "hyperparameters": {"maxSteps": 2, "batchSize": 8, "maxLength": 16, "loggingSteps": 1},
        "output": {"path": str(root / f"out-{entry}-{stage}")},
    }
    for key, value in broken.items():
        spec[key] = {**spec[key], **value}
    doc = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob"}
    doc |= {"metadata": {"name": f"{stage}-fails"}, "spec": spec}
    path = root / f"{entry}-{stage}.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML: both entry points read it
    return path


ENTRIES = ("cli", "image")


def _pythonpath(site: Path) -> str:
    """The injecting sitecustomize first, then whatever this session imports from."""
    return os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])


USER_ERRORS = ("spec", "data", "training-user", "saving")  # exit 2; the rest exit 1


def _run(root: Path, stage: str, entry: str) -> subprocess.CompletedProcess[str]:
    spec = _spec(root, stage, entry)
    env = {k: v for k, v in os.environ.items() if k != "FINETUNE_DEBUG"}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": _pythonpath(root / "site"),
        "INJECT_STAGE": "" if stage in ("spec", "data") else stage,
        "FINETUNE_TERMINATION_LOG": str(root / f"termination-{entry}-{stage}"),
    }
    if entry == "cli":
        command = [str(FINETUNE), "run", str(spec)]
    else:
        command = [sys.executable, "-m", "finetune_trainer", "--spec", str(spec)]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(workspace: Path) -> dict[tuple[str, str], subprocess.CompletedProcess[str]]:
    """Every (stage, entry) run at once, one per core (each is a process)."""
    cases = [(stage, entry) for stage in STAGES for entry in ENTRIES]
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        done = pool.map(lambda case: _run(workspace, *case), cases)
        return dict(zip(cases, done, strict=True))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_failure_in_each_stage_ends_in_one_error_line(
    workspace: Path,
    runs: dict[tuple[str, str], subprocess.CompletedProcess[str]],
    stage: str,
    entry: str,
) -> None:
    proc = runs[stage, entry]
    everything = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), everything[-3000:]
    assert "Traceback" not in everything, everything[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert STAGES[stage][1] in errors[0]
    # Only a UserError is the user's to fix (exit 2); the rest name where they were raised.
    assert (proc.returncode == 2) is (stage in USER_ERRORS)
    if proc.returncode == 1:
        assert "(at " in errors[0] and "FINETUNE_DEBUG=1" in errors[0]
    if entry == "image":
        message = json.loads((workspace / f"termination-image-{stage}").read_text())
        assert message["phase"] == "Failed" and STAGES[stage][1] in message["message"]
    if stage == "saving":  # all or nothing: no partial model/ (atomic.py)
        out = workspace / f"out-{entry}-{stage}"
        assert str(out / "model") in errors[0]
        assert not [p.name for p in out.iterdir() if "model" in p.name]


def test_finetune_debug_shows_the_traceback(workspace: Path) -> None:
    spec = _spec(workspace, "tokenizer", "debug")
    env = dict(os.environ, HF_HUB_OFFLINE="1", FINETUNE_DEBUG="1", INJECT_STAGE="tokenizer")
    env["PYTHONPATH"] = _pythonpath(workspace / "site")
    proc = subprocess.run(
        [sys.executable, "-m", "finetune_trainer", "--spec", str(spec)],
        cwd=workspace,
        env=env | {"FINETUNE_TERMINATION_LOG": str(workspace / "termination-debug")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "injected: tokenizer file is corrupt" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: RuntimeError:")
