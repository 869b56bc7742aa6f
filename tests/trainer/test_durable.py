"""Durable runs: SIGTERM saves the last completed step, checkpoints at spec.checkpoint.uri
(a path, or s3:// on a real S3 server on 127.0.0.1) are complete or ignored, a restarted
run resumes from the newest complete one and ends at the same total step; bad storage is
one `error:` line naming the field, before training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeJob

from support import s3

pytestmark = pytest.mark.trainer

MARKER = "finetune-complete.json"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[s3.S3Server]:
    server = s3.start()
    try:
        yield server
    finally:
        server.stop()


def _image_command(spec: Path) -> list[str]:
    return [sys.executable, "-m", "finetune_trainer", "--spec", str(spec)]


def _wait_for_step(out: Path, proc: subprocess.Popen[str], step: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = out / "metrics.json"
        try:
            state = json.loads(live.read_text()) if live.is_file() else {}
        except json.JSONDecodeError:
            state = {}
        if ((state.get("progress") or {}).get("step") or 0) >= step:
            return
        assert proc.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.1)
    raise AssertionError("training did not reach the step in time")


def _sigterm_then_rerun(
    job: Any, tmp_path: Path, env: dict[str, str], listing: Any
) -> tuple[list[int], float, str]:
    """Start the image entry point, SIGTERM it mid-run, check exit 143, rerun to the end.
    Returns the complete checkpoint steps after the SIGTERM, the seconds from SIGTERM to
    exit, and the rerun's stdout."""
    out = Path(job.spec.output.path)
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job.dump()))
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        FINETUNE_TERMINATION_LOG=str(tmp_path / "termination-log"),
        **env,
    )
    first = subprocess.Popen(
        _image_command(spec), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_step(out, first, 5, 240)
        sent = time.monotonic()
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        first.kill()
    assert first.returncode == 143, stderr[-3000:]
    assert "SIGTERM: saved checkpoint-" in stderr, stderr[-3000:]
    termination = json.loads((tmp_path / "termination-log").read_text())
    assert termination["phase"] == "Failed" and "SIGTERM" in termination["message"]
    steps = listing()
    assert steps, "no complete checkpoint at checkpoint.uri after SIGTERM"
    # the local copy goes with the pod: the rerun must resume from checkpoint.uri alone
    import shutil

    shutil.rmtree(out)
    second = subprocess.run(
        _image_command(spec), env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr[-3000:]
    return steps, took, second.stdout


def _job(make_job: MakeJob, bert_dir: Path, data: tuple[Path, Path], out: Path, uri: str) -> Any:
    train, dev = data
    return make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters={"maxSteps": 400, "batchSize": 8, "evalSteps": 1000, "loggingSteps": 1},
        output={"path": str(out)},
        checkpoint={"uri": uri, "keep": 2},
    )


def test_sigterm_saves_to_a_checkpoint_path_and_the_rerun_ends_at_the_same_step(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    store = tmp_path / "pvc" / "ckpt"
    job = _job(make_job, bert_dir, sentiment_data, tmp_path / "out", str(store))

    def listing() -> list[int]:
        return sorted(
            int(p.parent.name.split("-")[1]) for p in store.glob(f"checkpoint-*/{MARKER}")
        )

    steps, took, stdout = _sigterm_then_rerun(job, tmp_path, {}, listing)
    assert 5 <= steps[-1] < 400
    assert took < 30  # well inside the default 120 s grace period
    assert f"resuming from checkpoint-{steps[-1]}" in stdout
    assert "[succeeded] step 400/400" in stdout
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    assert max(h["step"] for h in history) == 400
    final = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert final["metrics"]["resumedFromStep"] == steps[-1]  # the operator's Resumed Event


def test_sigterm_saves_to_s3_and_the_rerun_resumes_from_there(
    bert_dir: Path,
    make_job: MakeJob,
    sentiment_data: tuple[Path, Path],
    tmp_path: Path,
    s3_server: s3.S3Server,
) -> None:
    s3_server.make_bucket("runs")
    job = _job(make_job, bert_dir, sentiment_data, tmp_path / "out", "s3://runs/sigterm/ckpt")
    output = job.spec.output.model_copy(update={"uri": "s3://runs/sigterm/out"})
    job = job.model_copy(update={"spec": job.spec.model_copy(update={"output": output})})
    env = s3_server.env()

    def listing() -> list[int]:
        from finetune_trainer.storage import filesystem

        os.environ.update(env)
        fs, root = filesystem("s3://runs/sigterm/ckpt", "test")
        markers = [p for p in fs.find(root) if p.endswith(MARKER)]
        return sorted(int(p.rsplit("/", 2)[-2].split("-")[1]) for p in markers)

    steps, _, stdout = _sigterm_then_rerun(job, tmp_path, env, listing)
    assert f"resuming from checkpoint-{steps[-1]}" in stdout
    assert "[succeeded] step 400/400" in stdout
    # the artifacts landed at output.uri, the marker last; status holds their URIs
    from finetune_trainer.storage import filesystem

    fs, root = filesystem("s3://runs/sigterm/out", "test")
    names = {p[len(root) + 1 :] for p in fs.find(root)}
    assert {"model/model.safetensors", "run.json", "metrics.json", MARKER} <= names
    assert not any(n.startswith("checkpoints/") for n in names)
    termination = json.loads((tmp_path / "termination-log").read_text())
    assert termination["artifacts"]["model"] == "s3://runs/sigterm/out/model"
    uploaded = json.loads(fs.cat_file(f"{root}/metrics.json"))
    assert uploaded["phase"] == "Succeeded"
    assert uploaded["artifacts"]["metrics"] == "s3://runs/sigterm/out/metrics.json"


def test_a_half_written_checkpoint_is_never_chosen_and_keep_bounds_the_rest(
    tmp_path: Path,
) -> None:
    from finetune_trainer.durable import CheckpointStore, fetch_newest

    store = CheckpointStore(str(tmp_path / "store"))
    store.check()
    for step in (10, 20, 30):
        local = tmp_path / "local" / f"checkpoint-{step}"
        local.mkdir(parents=True)
        (local / "model.safetensors").write_bytes(b"x" * step)
        store.upload(local)
        store.mark_complete(local.name, "spec-a", keep=2)
    # an upload cut short: files, no marker, at a newer step
    half = tmp_path / "local" / "checkpoint-40"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    store.upload(half)

    assert [s for s, _ in store.complete("spec-a")] == [20, 30]  # keep 2: 10 is gone
    assert not (tmp_path / "store" / "checkpoint-10").exists()
    assert store.newest("spec-a") == (30, "checkpoint-30")
    assert store.newest("another-spec") is None
    target = tmp_path / "resume"
    target.mkdir()
    chosen = fetch_newest(store, "spec-a", target, None)
    assert chosen == str(target / "checkpoint-30")
    assert (target / "checkpoint-30" / "model.safetensors").read_bytes() == b"x" * 30
    assert not (target / "checkpoint-30" / MARKER).exists()
    # a newer local checkpoint wins over the store's
    assert fetch_newest(store, "spec-a", target, str(target / "checkpoint-35")).endswith("35")
    # the next complete checkpoint clears the half-written one below it; another spec's
    # checkpoint (a changed spec on the same uri) replaces this spec's, as locally
    store.upload(target / "checkpoint-30")  # (re-uploaded under its name)
    later = tmp_path / "local" / "checkpoint-60"
    later.mkdir()
    (later / "model.safetensors").write_bytes(b"b")
    store.upload(later)
    store.mark_complete(later.name, "spec-b", keep=2)
    assert sorted(p.name for p in (tmp_path / "store").iterdir() if p.is_dir()) == ["checkpoint-60"]


def _run_cli(spec: Path, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from finetune_cli.app import main; main()", "run", str(spec)]
    command += ["--output", str(tmp_path / "out")]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        command, env=clean | env, capture_output=True, text=True, timeout=180, cwd=tmp_path
    )


def _spec_file(tmp_path: Path, bert_dir: Path, uri: str, field: str) -> Path:
    from conftest import sentiment_rows, write_rows

    write_rows(tmp_path / "train.csv", sentiment_rows(16, seed=1))
    doc = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bad-store"},
        "spec": {
            "task": "classification",
            "model": {"path": str(bert_dir)},
            "dataset": {"train": {"path": "train.csv"}},
            "hyperparameters": {"maxSteps": 2, "batchSize": 8},
            **(
                {"output": {"uri": uri}}
                if field == "spec.output.uri"
                else {"checkpoint": {"uri": uri}}
            ),
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("case", "uri", "expected"),
    [
        ("bad bucket", "s3://no-such-bucket/x", "the bucket does not exist"),
        ("missing credentials", "s3://runs/x", "no credentials"),
        ("unknown scheme", "nosuchfs://bucket/x", "no filesystem for the URI scheme"),
        ("unreachable endpoint", "s3://runs/x", "the endpoint cannot be reached"),
        ("output bad bucket", "s3://no-such-bucket/out", "the bucket does not exist"),
    ],
)
def test_bad_checkpoint_storage_is_one_error_line_naming_the_field(
    bert_dir: Path, tmp_path: Path, s3_server: s3.S3Server, case: str, uri: str, expected: str
) -> None:
    s3_server.make_bucket("runs")
    env = s3_server.env()
    if case == "missing credentials":
        env = {k: v for k, v in env.items() if "KEY" not in k}
    if case == "unreachable endpoint":
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # nothing listens on the discard port
    started = time.monotonic()
    field = "spec.output.uri" if case.startswith("output") else "spec.checkpoint.uri"
    result = _run_cli(_spec_file(tmp_path, bert_dir, uri, field), env, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"error: {field}: {uri}: ")
    assert expected in lines[0]
    assert "finetune-test-secret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert "step 1/" not in result.stdout  # refused before training
    assert time.monotonic() - started < 120


def test_a_spent_budget_suspends_with_a_checkpoint_and_a_larger_one_finishes(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from finetune_api.models import FineTuneJob
    from finetune_trainer.run import run
    from finetune_trainer.signals import BudgetExhausted

    train, dev = sentiment_data
    out = tmp_path / "out"
    store = tmp_path / "store"
    hp = {"maxSteps": 300, "batchSize": 8, "evalSteps": 1000, "loggingSteps": 10}
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters=hp,
        checkpoint={"uri": str(store)},
        budget={"maxDurationSeconds": 2},
    )
    with pytest.raises(BudgetExhausted) as stopped:
        run(job, spec_dir=tmp_path, output_dir=out)
    step = stopped.value.step
    assert 0 < step < 300
    state = json.loads((out / "metrics.json").read_text())
    assert state["phase"] == "Suspended" and state["reason"] == "BudgetExhausted"
    assert state["message"].startswith(f"budget exhausted at step {step}/300: maxDurationSeconds 2")
    assert (store / f"checkpoint-{step}" / MARKER).is_file()
    spent = json.loads((store / f"checkpoint-{step}" / "finetune-spent.json").read_text())
    assert spent["trainingSeconds"] >= 2

    # The same budget again: already spent, it stops at the next step (time sums over resumes)
    with pytest.raises(BudgetExhausted) as again:
        run(job, spec_dir=tmp_path, output_dir=out)
    assert again.value.step == step + 1

    raised = FineTuneJob.model_validate(
        job.dump() | {"spec": job.spec.dump() | {"budget": {"maxDurationSeconds": 3600}}}
    )
    starts: list[str] = []

    class Record:
        def emit(self, event: Any, state: Any) -> None:
            if event.kind == "start":
                starts.append(event.message)

    run(raised, spec_dir=tmp_path, output_dir=out, sinks=[Record()])
    assert f"resuming from checkpoint-{step + 1}" in starts[0]
    state = json.loads((out / "metrics.json").read_text())
    assert state["phase"] == "Succeeded" and state["progress"]["step"] == 300


def test_max_cost_without_a_price_is_refused_before_training(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from finetune_api.manifest import UserError
    from finetune_trainer.run import run

    train, dev = sentiment_data
    job = make_job(
        task="classification", model_path=bert_dir, train=train, eval=dev, budget={"maxCost": 5}
    )
    os.environ.pop("FINETUNE_GPU_HOUR_PRICE", None)
    with pytest.raises(UserError, match=r"^spec.budget.maxCost: no price per GPU-hour"):
        run(job, spec_dir=tmp_path, output_dir=tmp_path / "out")
