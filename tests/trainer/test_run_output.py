"""`finetune run`'s output in a log file (not a terminal): lines, no bars, no library noise."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MakeJob

pytestmark = pytest.mark.trainer


def test_run_local_into_a_file_has_lines_and_no_bars(
    bert_dir: Path,
    make_job: MakeJob,
    sentiment_data: tuple[Path, Path],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from finetune_trainer.run import run_local

    train, dev = sentiment_data
    hp = {"maxSteps": 4, "loggingSteps": 2, "evalSteps": 4}
    job = make_job(
        task="classification", model_path=bert_dir, train=train, eval=dev, hyperparameters=hp
    )
    run_local(job, spec_dir=tmp_path, output=tmp_path / "out")
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert (
        lines[1].startswith("[start] classification")
        and "new classification head: 2 labels" in lines[1]
    )
    assert [line.split()[0] for line in lines[2:5]] == ["[progress]", "[progress]", "[evaluation]"]
    for noise in ("it/s]", "examples/s]", "\r", "LOAD REPORT", "_C_mxfp8", "_pytree"):
        assert noise not in out + err, noise
