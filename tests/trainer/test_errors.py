"""Bad input gets a UserError naming the file, row or column; never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MakeJob, sentiment_rows, write_rows

pytestmark = pytest.mark.trainer


def _run(job: object, tmp_path: Path) -> None:
    from finetune_trainer.run import run

    run(job, spec_dir=tmp_path, output_dir=tmp_path / "out")  # type: ignore[arg-type]


def _error(job: object, tmp_path: Path) -> str:
    from finetune_api.manifest import UserError

    with pytest.raises(UserError) as err:
        _run(job, tmp_path)
    return str(err.value)


def test_missing_label_column_lists_the_columns(
    bert_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    rows = [{"sentence": r["text"], "sentiment": r["label"]} for r in sentiment_rows(10)]
    train = write_rows(tmp_path / "train.csv", rows)
    msg = _error(
        make_job(
            task="classification",
            model_path=bert_dir,
            train=train,
            dataset={"textColumn": "sentence"},
        ),
        tmp_path,
    )
    assert "train.csv" in msg and "'label'" in msg and "sentence, sentiment" in msg


def test_missing_text_column(bert_dir: Path, make_job: MakeJob, tmp_path: Path) -> None:
    train = write_rows(tmp_path / "train.jsonl", [{"body": "x", "label": 1}] * 4)
    msg = _error(make_job(task="masked-lm", model_path=bert_dir, train=train), tmp_path)
    assert "train.jsonl" in msg and "textColumn 'text'" in msg and "body" in msg


def test_empty_dataset(bert_dir: Path, make_job: MakeJob, tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\n")
    msg = _error(make_job(task="classification", model_path=bert_dir, train=train), tmp_path)
    assert "train.csv" in msg and "empty" in msg


def test_unreadable_file(bert_dir: Path, make_job: MakeJob, tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "fine", "label": 1}\n{not json at all\n')
    msg = _error(make_job(task="classification", model_path=bert_dir, train=train), tmp_path)
    assert "train.jsonl" in msg and "cannot read" in msg


def test_missing_file_and_unknown_extension(
    bert_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    msg = _error(
        make_job(task="classification", model_path=bert_dir, train=tmp_path / "nope.csv"), tmp_path
    )
    assert "nope.csv" in msg and "no such file" in msg
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    msg = _error(make_job(task="classification", model_path=bert_dir, train=odd), tmp_path)
    assert "data.xlsx" in msg and "unknown format" in msg


def test_eval_label_never_seen_in_train(bert_dir: Path, make_job: MakeJob, tmp_path: Path) -> None:
    train = write_rows(tmp_path / "train.csv", sentiment_rows(10))
    dev_rows = [*sentiment_rows(4), {"text": "good film", "label": "neutral"}]
    dev = write_rows(tmp_path / "dev.csv", dev_rows)
    msg = _error(
        make_job(task="classification", model_path=bert_dir, train=train, eval=dev), tmp_path
    )
    assert "dev.csv" in msg and "row 5" in msg and "'neutral'" in msg and "neg, pos" in msg


def test_missing_value_names_the_row(bert_dir: Path, make_job: MakeJob, tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,pos\n,neg\nbad,neg\n")
    msg = _error(make_job(task="classification", model_path=bert_dir, train=train), tmp_path)
    assert "row 2" in msg and "'text'" in msg


def test_model_path_that_does_not_exist(make_job: MakeJob, tmp_path: Path) -> None:
    train = write_rows(tmp_path / "train.csv", sentiment_rows(10))
    msg = _error(
        make_job(task="classification", model_path=tmp_path / "no-model", train=train), tmp_path
    )
    assert "no-model" in msg and "no such directory" in msg


def test_uncached_hub_id_offline(
    make_job: MakeJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_api.models import FineTuneJob

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    train = write_rows(tmp_path / "train.csv", sentiment_rows(10))
    job = make_job(task="classification", model_path=tmp_path, train=train)
    doc = job.dump()
    doc["spec"]["model"] = {"name": "no-such-org/no-such-model-xyz"}
    msg = _error(FineTuneJob.model_validate(doc), tmp_path)
    assert "no-such-org/no-such-model-xyz is not in the local cache" in msg
    assert "HF_HUB_OFFLINE=1 forbids downloading; use model.path" in msg


def test_cli_prints_the_message_and_exits_2(bert_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from finetune_cli.app import app

    write_rows(tmp_path / "train.csv", [{"sentence": "a", "label": 0}] * 3)
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "apiVersion: finetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: bad}\n"
        f"spec:\n  task: classification\n  model: {{path: {bert_dir}}}\n"
        "  dataset: {train: {path: train.csv}}\n"
    )
    result = CliRunner().invoke(app, ["run", str(spec), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "textColumn 'text' not found" in result.output
    assert "Traceback" not in result.output


def test_uncached_hub_dataset_offline(
    bert_dir: Path, make_job: MakeJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_api.models import FineTuneJob

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    job = make_job(task="classification", model_path=bert_dir, train=tmp_path / "x.csv")
    doc = job.dump()
    doc["spec"]["dataset"]["train"] = {"hub": "no-such-org/no-such-dataset", "split": "train"}
    msg = _error(FineTuneJob.model_validate(doc), tmp_path)
    assert "no-such-org/no-such-dataset is not in the local cache" in msg
    assert "use dataset.train.path" in msg


def test_predict_on_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    from finetune_trainer.errors import RunDirError
    from finetune_trainer.predict import predict

    with pytest.raises(RunDirError, match="not the artifact directory of a finished run"):
        predict(tmp_path, ["hello"])


def test_predict_on_a_missing_directory(tmp_path: Path) -> None:
    from finetune_trainer.errors import RunDirError
    from finetune_trainer.predict import predict

    with pytest.raises(RunDirError, match=r"runs/nope: no such directory"):
        predict(tmp_path / "runs" / "nope", ["hello"])


@pytest.mark.parametrize("name", ["train.csv", "train.tsv"])
def test_header_only_file_says_so(
    bert_dir: Path, make_job: MakeJob, tmp_path: Path, name: str
) -> None:
    train = tmp_path / name
    train.write_text("text\tlabel\n" if name.endswith(".tsv") else "text,label\n")
    msg = _error(make_job(task="classification", model_path=bert_dir, train=train), tmp_path)
    assert f"dataset.train file {train}: the file has a header line (columns: text, label)" in msg
    assert "no data rows" in msg and "Instruction" not in msg


def test_eval_fraction_that_leaves_one_label_blames_the_fraction(
    bert_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    train = write_rows(tmp_path / "train.csv", sentiment_rows(100))
    job = make_job(
        task="classification", model_path=bert_dir, train=train, dataset={"evalFraction": 0.99}
    )
    msg = _error(job, tmp_path)
    assert "dataset.evalFraction 0.99 held out 99 of its 100 rows" in msg
    assert "the 1 row(s) left for training hold a single label" in msg
    assert "though the file has 2; lower dataset.evalFraction" in msg


def test_eval_fraction_that_leaves_nothing_to_train_on(
    bert_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    train = write_rows(tmp_path / "train.csv", sentiment_rows(5))
    job = make_job(
        task="classification", model_path=bert_dir, train=train, dataset={"evalFraction": 0.9}
    )
    msg = _error(job, tmp_path)
    assert "train.csv: dataset.evalFraction 0.9 of its 5 row(s) leaves 0 for training" in msg


def test_a_csv_named_txt_is_said_to_be_read_as_plain_text(
    bert_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    train = tmp_path / "train.txt"
    write_rows(tmp_path / "rows.csv", sentiment_rows(10)).rename(train)
    msg = _error(make_job(task="classification", model_path=bert_dir, train=train), tmp_path)
    assert "a .txt file is read as plain text: one example per line" in msg
    assert "looks like a csv header: rename the file to .csv" in msg
