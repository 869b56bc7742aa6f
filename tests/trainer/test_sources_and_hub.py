"""Sources and sinks by URI (issue 20 item 4): model.uri and dataset.*.uri read from a real
S3 server (gofakes3, tests/support/s3.py) and from a local hub (tests/support/hub_server.py)
through fsspec, downloaded into a cache and reused; output.hubRepo pushes the model and a
model card that huggingface_hub itself reads back; AWS profiles; bad input is one line
naming the field, before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import sentiment_rows, write_rows

from support import hub_server, s3

pytestmark = pytest.mark.trainer

HP = {"maxSteps": 4, "batchSize": 8, "evalSteps": 1000, "loggingSteps": 2, "maxLength": 32}


@pytest.fixture(scope="module")
def s3_server() -> Iterator[s3.S3Server]:
    server = s3.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[hub_server.HubServer]:
    server = hub_server.start(tmp_path_factory.mktemp("hub"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: s3.S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server.env()


@pytest.fixture
def online(hub: hub_server.HubServer, monkeypatch: pytest.MonkeyPatch) -> hub_server.HubServer:
    """huggingface_hub in this process talks to the local hub (HF_HUB_OFFLINE and
    HF_HUB_DISABLE_XET are read at import: the constants are switched for this test only)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the LFS path (no Xet here)
    for key, value in hub.env().items():
        monkeypatch.setenv(key, value)
    return hub


def _put_tree(uri: str, local: Path) -> None:
    from finetune_trainer.storage import filesystem

    fs, root = filesystem(uri, "test")
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{root}/{path.relative_to(local).as_posix()}")


def _doc(spec: dict[str, Any], name: str = "uri-run") -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {"task": "classification", "hyperparameters": HP, **spec},
    }


def _image(
    tmp_path: Path, doc: dict[str, Any], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """The trainer image's entry point, as a pod runs it."""
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(doc))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_"))}
    env = (
        clean
        | {
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "FINETUNE_SOURCE_CACHE": str(tmp_path / "source-cache"),
            "FINETUNE_TERMINATION_LOG": str(tmp_path / "termination-log"),
            "HF_HOME": str(tmp_path / "hf-home"),
        }
        | env
    )
    command = [sys.executable, "-m", "finetune_trainer", "--spec", str(spec)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_model_and_data_from_s3_train_and_are_cached(
    bert_dir: Path, tmp_path: Path, s3_server: s3.S3Server, s3_env: dict[str, str]
) -> None:
    s3_server.make_bucket("models")
    s3_server.make_bucket("data")
    _put_tree("s3://models/tiny-bert", bert_dir)
    data = tmp_path / "local-data"
    write_rows(data / "train.csv", sentiment_rows(48, seed=1))
    write_rows(data / "dev.jsonl", sentiment_rows(16, seed=2))
    _put_tree("s3://data/sst", data)
    out = tmp_path / "out"
    doc = _doc(
        {
            "model": {"uri": "s3://models/tiny-bert"},
            "dataset": {
                "train": {"uri": "s3://data/sst/train.csv"},
                "eval": {"uri": "s3://data/sst/dev.jsonl"},
            },
            "output": {"path": str(out)},
        }
    )
    result = _image(tmp_path, doc, s3_env)
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((out / "metrics.json").read_text())
    assert final["phase"] == "Succeeded" and final["progress"]["step"] == 4
    info = json.loads((out / "run.json").read_text())
    assert info["baseModelUri"] == "s3://models/tiny-bert"
    assert info["dataset"] == {
        "train": "s3://data/sst/train.csv",
        "eval": "s3://data/sst/dev.jsonl",
    }
    cache = tmp_path / "source-cache"
    folders = sorted(p for p in cache.iterdir() if not p.name.startswith("."))
    assert len(folders) == 3  # the model folder and two data files, each complete
    assert all((f / ".finetune-source.json").is_file() for f in folders)
    assert not list(cache.glob(".*partial*"))


def test_the_cache_is_reused_while_unchanged_and_refreshed_when_the_object_changes(
    tmp_path: Path, s3_server: s3.S3Server, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_trainer import sources

    monkeypatch.setenv("FINETUNE_SOURCE_CACHE", str(tmp_path / "cache"))
    s3_server.make_bucket("data")
    local = tmp_path / "d"
    write_rows(local / "t.csv", sentiment_rows(8, seed=1))
    _put_tree("s3://data/cached", local)
    downloads: list[str] = []
    real = sources._download

    def counting(remote: Any, target: Path) -> dict[str, Any]:
        downloads.append(remote.uri)
        return real(remote, target)

    monkeypatch.setattr(sources, "_download", counting)
    first = sources.fetch("s3://data/cached/t.csv", "spec.dataset.train.uri", single=True)
    again = sources.fetch("s3://data/cached/t.csv", "spec.dataset.train.uri", single=True)
    assert first == again and first.read_bytes() == (local / "t.csv").read_bytes()
    assert len(downloads) == 1
    write_rows(local / "t.csv", sentiment_rows(12, seed=3))  # the remote object changes
    _put_tree("s3://data/cached", local)
    changed = sources.fetch("s3://data/cached/t.csv", "spec.dataset.train.uri", single=True)
    assert len(downloads) == 2 and changed.read_bytes() == (local / "t.csv").read_bytes()


def test_hf_sources_and_a_hub_push_with_a_model_card(
    bert_dir: Path, tmp_path: Path, online: hub_server.HubServer
) -> None:
    from huggingface_hub import HfApi, ModelCard, hf_hub_download, snapshot_download
    from transformers import AutoModelForSequenceClassification

    api = HfApi(endpoint=online.url, token=online.hub.token)
    api.create_repo("org/tiny-bert", exist_ok=True)
    api.upload_folder(repo_id="org/tiny-bert", folder_path=str(bert_dir))
    api.create_repo("org/sst", repo_type="dataset", exist_ok=True)
    rows = tmp_path / "rows"
    write_rows(rows / "train.jsonl", sentiment_rows(48, seed=1))
    api.upload_folder(repo_id="org/sst", repo_type="dataset", folder_path=str(rows))
    out = tmp_path / "out"
    doc = _doc(
        {
            "model": {"uri": "hf://org/tiny-bert"},
            "dataset": {"train": {"uri": "hf://datasets/org/sst/train.jsonl"}},
            "output": {
                "path": str(out),
                "hubRepo": "org/pushed",
                "hubPrivate": True,
                "hubRevision": "v1",
            },
        }
    )
    result = _image(tmp_path, doc, online.env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert online.hub.token not in result.stdout + result.stderr
    termination = json.loads((tmp_path / "termination-log").read_text())
    assert termination["artifacts"]["hubRepo"] == f"{online.url}/org/pushed/tree/v1"
    # through the upload path: preupload, LFS batch + upload + verify, the commit
    assert "POST /org/pushed.git/info/lfs/objects/batch" in online.hub.requests
    assert any(r.startswith("PUT /lfs-upload/") for r in online.hub.requests)
    assert "POST /api/models/org/pushed/commit/v1" in online.hub.requests
    assert api.repo_info("org/pushed").private
    assert api.list_repo_files("org/pushed") == []  # main untouched: the push went to v1

    # read back through huggingface_hub itself: the model loads, the card says what it is
    read = {"endpoint": online.url, "token": online.hub.token, "revision": "v1"}
    folder = snapshot_download("org/pushed", cache_dir=tmp_path / "read-back", **read)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.num_labels == 2
    readme = hf_hub_download("org/pushed", "README.md", cache_dir=tmp_path / "rb2", **read)
    card = ModelCard.load(readme)
    data: Any = card.data  # ModelCardData
    assert data.base_model == "org/tiny-bert"
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "text-classification"
    assert data.datasets == ["org/sst"]
    assert {"finetune", "classification", "sft"} <= set(data.tags)
    metrics = {r.metric_type: r.metric_value for r in data.eval_results}
    final = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["accuracy"] == pytest.approx(final["accuracy"])
    assert "learningRate" in card.text and "hf://datasets/org/sst/train.jsonl" in card.text


def test_model_card_metadata_for_an_adapter_from_a_local_base() -> None:
    from huggingface_hub import ModelCard

    from finetune_trainer.hub import model_card

    info = {
        "task": "causal-lm",
        "format": "lora",
        "baseModel": "/models/llama",
        "baseModelUri": None,
        "method": "dpo",
        "dataset": {"train": "s3://data/prefs.jsonl", "eval": None},
        "hyperparameters": {"learningRate": 0.0001, "epochs": 1},
    }
    card = ModelCard(model_card("me/adapter", info, {"evalLoss": 1.5, "perplexity": 4.48}))
    data: Any = card.data  # ModelCardData
    assert data.base_model is None  # a path is no hub id: named in the text only
    assert data.library_name == "peft" and data.pipeline_tag == "text-generation"
    assert {"lora", "peft", "dpo"} <= set(data.tags)
    assert data.datasets is None
    assert {r.metric_type for r in data.eval_results} == {"evalLoss", "perplexity"}
    assert "/models/llama" in card.text and "s3://data/prefs.jsonl" in card.text


def _refused(job_doc: dict[str, Any], tmp_path: Path) -> str:
    """The message of the UserError `run` raises before any training."""
    from finetune_api.manifest import UserError
    from finetune_api.models import FineTuneJob
    from finetune_trainer.run import run

    job = FineTuneJob.model_validate(job_doc)
    with pytest.raises(UserError) as refused:
        run(job, spec_dir=tmp_path, output_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing trained
    return str(refused.value)


@pytest.mark.parametrize(
    ("case", "field", "uri", "expected"),
    [
        ("bad bucket", "model", "s3://no-such-bucket/m", "the bucket does not exist"),
        ("missing credentials", "model", "s3://models/tiny-bert", "no credentials"),
        ("unknown scheme", "model", "nosuchfs://x/m", "no filesystem for the URI scheme"),
        ("unreachable endpoint", "train", "s3://data/t.csv", "the endpoint cannot be reached"),
        ("missing object", "train", "s3://data/no-such.csv", "not found"),
        ("not a model", "model", "s3://data", "not a Hugging Face model folder"),
    ],
)
def test_bad_source_uris_are_refused_naming_the_field(
    bert_dir: Path,
    tmp_path: Path,
    s3_server: s3.S3Server,
    s3_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    field: str,
    uri: str,
    expected: str,
) -> None:
    s3_server.make_bucket("models")
    s3_server.make_bucket("data")
    write_rows(tmp_path / "train.csv", sentiment_rows(16, seed=1))
    if case == "missing credentials":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    if case == "unreachable endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    if case == "not a model":  # data files, no config.json
        write_rows(tmp_path / "files" / "train.csv", sentiment_rows(4, seed=1))
        _put_tree("s3://data/sst", tmp_path / "files")
    model = {"uri": uri} if field == "model" else {"path": str(bert_dir)}
    train = {"uri": uri} if field == "train" else {"path": "train.csv"}
    message = _refused(_doc({"model": model, "dataset": {"train": train}}), tmp_path)
    name = "spec.model.uri" if field == "model" else "spec.dataset.train.uri"
    assert message.startswith(f"{name}: {uri}: "), message
    assert expected in message, message
    assert "finetune-test-secret" not in message


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no token", "no token: set HF_TOKEN"),
        ("wrong token", "the hub refused the token"),
        ("unreachable", "cannot be reached"),
        (
            "missing dataset repo",
            "spec.dataset.train.uri: hf://datasets/org/none/t.jsonl: not found",
        ),
    ],
)
def test_bad_hub_settings_are_refused_naming_the_field(
    bert_dir: Path,
    tmp_path: Path,
    online: hub_server.HubServer,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    expected: str,
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token either
    if case == "no token":
        monkeypatch.delenv("HF_TOKEN")
    if case == "wrong token":
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    if case == "unreachable":
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    write_rows(tmp_path / "train.csv", sentiment_rows(16, seed=1))
    train = (
        {"uri": "hf://datasets/org/none/t.jsonl"}
        if case == "missing dataset repo"
        else {"path": "train.csv"}
    )
    spec = {
        "model": {"path": str(bert_dir)},
        "dataset": {"train": train},
        "output": {"hubRepo": "org/refused"},
    }
    message = _refused(_doc(spec), tmp_path)
    if case != "missing dataset repo":
        assert message.startswith("spec.output.hubRepo: org/refused: "), message
    assert expected in message, message
    assert online.hub.token not in message


def test_hub_push_in_offline_mode_is_refused_before_training(
    bert_dir: Path, tmp_path: Path
) -> None:
    write_rows(tmp_path / "train.csv", sentiment_rows(16, seed=1))
    spec = {
        "model": {"path": str(bert_dir)},
        "dataset": {"train": {"path": "train.csv"}},
        "output": {"hubRepo": "org/offline"},
    }
    message = _refused(_doc(spec), tmp_path)  # HF_HUB_OFFLINE=1 in the test process
    assert message.startswith("spec.output.hubRepo: org/offline: HF_HUB_OFFLINE=1 forbids")


def test_a_bad_model_uri_is_one_error_line_from_the_cli(
    bert_dir: Path, tmp_path: Path, s3_server: s3.S3Server
) -> None:
    write_rows(tmp_path / "train.csv", sentiment_rows(16, seed=1))
    doc = _doc(
        {"model": {"uri": "s3://no-such-bucket/m"}, "dataset": {"train": {"path": "train.csv"}}}
    )
    (tmp_path / "job.yaml").write_text(json.dumps(doc))
    command = [sys.executable, "-c", "from finetune_cli.app import main; main()", "run", "job.yaml"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run(
        command,
        env=clean | s3_server.env(),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[0].startswith(
        "error: spec.model.uri: s3://no-such-bucket/m: the bucket does not exist"
    )
    assert "finetune-test-secret" not in result.stderr + result.stdout


def test_an_aws_profile_gives_credentials_region_and_endpoint(
    tmp_path: Path, s3_server: s3.S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_trainer import aws_profile, storage

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[default]\naws_access_key_id = other\naws_secret_access_key = other\n\n"
        "[ci]\naws_access_key_id = finetune-profile\naws_secret_access_key = profile-secret\n"
    )
    config = tmp_path / "config"
    config.write_text(
        f"[profile ci]\nregion = eu-west-3\ns3 =\n    endpoint_url = {s3_server.endpoint}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert aws_profile.settings().access_key_id == "other"  # no AWS_PROFILE: [default]
    monkeypatch.setenv("AWS_PROFILE", "ci")
    profile = aws_profile.settings()
    assert profile == aws_profile.Settings(
        "finetune-profile", "profile-secret", None, "eu-west-3", s3_server.endpoint
    )
    assert storage.has_credentials("s3")
    s3_server.make_bucket("profiled")
    fs, root = storage.filesystem("s3://profiled/run", "spec.checkpoint.uri")
    storage.probe(fs, root, "s3://profiled/run", "spec.checkpoint.uri")  # reaches the server
    fs.pipe_file(f"{root}/x", b"via the profile")
    assert fs.cat_file(f"{root}/x") == b"via the profile"
    # environment keys win over the profile; a profile with no keys is no credentials
    monkeypatch.setenv("AWS_PROFILE", "missing")
    assert not storage.has_credentials("s3")
    with pytest.raises(storage.StorageError, match="no credentials"):
        storage.probe(fs, root, "s3://profiled/run", "spec.checkpoint.uri")


def test_offline_an_hf_source_comes_from_the_cache_only(
    tmp_path: Path, online: hub_server.HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import HfApi

    from finetune_trainer import sources, storage

    monkeypatch.setenv("FINETUNE_SOURCE_CACHE", str(tmp_path / "cache"))
    api = HfApi(endpoint=online.url, token=online.hub.token)
    api.create_repo("org/offline-data", repo_type="dataset", exist_ok=True)
    api.upload_file(
        path_or_fileobj=b"text,label\na,0\nb,1\n",
        path_in_repo="t.csv",
        repo_id="org/offline-data",
        repo_type="dataset",
    )
    uri = "hf://datasets/org/offline-data/t.csv"
    first = sources.fetch(uri, "spec.dataset.train.uri", single=True)
    assert first.read_bytes() == b"text,label\na,0\nb,1\n"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = len(online.hub.requests)
    assert sources.fetch(uri, "spec.dataset.train.uri", single=True) == first
    assert len(online.hub.requests) == seen  # not a single request
    with pytest.raises(storage.StorageError, match=r"^spec.dataset.eval.uri: .*HF_HUB_OFFLINE=1"):
        sources.fetch(
            "hf://datasets/org/offline-data/other.csv", "spec.dataset.eval.uri", single=True
        )
