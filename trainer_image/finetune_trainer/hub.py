"""spec.output.hubRepo: push the trained model (or adapter) and a model card to a hub.

- `check` (before training, rank 0): HF_HUB_OFFLINE is off, a token is there (HF_TOKEN,
  through spec.secrets in a pod), the hub (HF_ENDPOINT, default huggingface.co) answers
  and accepts the token (whoami), and the repository exists or is created now
  (`create_repo(exist_ok=True)`, plus the branch for `hubRevision`). A problem is one
  line naming spec.output.hubRepo, never the token.
- `model_card` (pure): README.md from the run's own records, run.json and the final
  metrics: YAML metadata (base_model when it is a hub id, library_name, pipeline_tag,
  tags, datasets when they are hub ids, model-index with the eval metrics) and a body
  with the data, the hyperparameters and the metrics.
- `push`: README.md is written into the model folder, then the folder is uploaded in one
  commit (`HfApi.upload_folder`). huggingface_hub uses the Xet protocol when hf_xet is
  installed; a self-hosted hub without Xet storage needs HF_HUB_DISABLE_XET=1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from finetune_api.models import Output
from finetune_trainer import storage

FIELD = "spec.output.hubRepo"
DEFAULT_ENDPOINT = "https://huggingface.co"
PIPELINE = {
    "classification": "text-classification",
    "causal-lm": "text-generation",
    "masked-lm": "fill-mask",
}
# status.metrics keys that are model-index metrics (evaluation results), by name
EVAL_METRICS = ("accuracy", "f1Macro", "evalLoss", "perplexity", "bleu", "int8Accuracy")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def repo_url(output: Output) -> str:
    base = f"{endpoint()}/{output.hub_repo}"
    return f"{base}/tree/{output.hub_revision}" if output.hub_revision else base


def _api() -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=os.environ.get("HF_TOKEN") or None)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _error(output: Output, reason: str) -> storage.StorageError:
    return storage.StorageError(f"{FIELD}: {output.hub_repo}: {reason}")


def check(output: Output) -> None:
    """Before training: the hub is reachable, the token accepted, the repository there."""
    if not output.hub_repo:
        return
    if _offline():
        raise _error(
            output,
            "HF_HUB_OFFLINE=1 forbids pushing to the hub; unset it for this run (a "
            "read-only spec.cache sets it)",
        )
    from huggingface_hub import get_token

    if not (os.environ.get("HF_TOKEN") or get_token()):
        raise _error(
            output, "no token: set HF_TOKEN (in a pod through spec.secrets) to a write token"
        )
    api = _api()
    try:
        api.whoami()
    except Exception as err:
        raise _error(output, f"{endpoint()}: {_reason(err)}") from None
    try:
        api.create_repo(output.hub_repo, private=bool(output.hub_private), exist_ok=True)
        if output.hub_revision:
            api.create_branch(output.hub_repo, branch=output.hub_revision, exist_ok=True)
    except Exception as err:
        raise _error(output, f"cannot create the repository: {_reason(err)}") from None


def _reason(err: BaseException) -> str:
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status == 401:
        return "the hub refused the token (401); check HF_TOKEN"
    if status == 403:
        return "the token may not write there (403); use a write token for that namespace"
    return storage.describe(err, "hf")


def _hub_id(value: str | None) -> str | None:
    """A hub repo id from a spec source: a name, or hf://[datasets/]org/name[/...]."""
    if not value:
        return None
    if value.startswith("hf://"):
        parts = value[len("hf://") :].split("/")
        if parts and parts[0] in ("datasets", "models", "spaces"):
            parts = parts[1:]
        value = "/".join(parts[:2]).split("@", 1)[0]
    if "://" in value or value.startswith(("/", ".", "~")):
        return None
    return value if HUB_ID.match(value) else None


def _number(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(repo_id: str, info: dict[str, Any], metrics: dict[str, float]) -> str:
    """README.md for the pushed model, from run.json (`info`) and the final metrics."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    task = str(info.get("task", ""))
    pipeline = PIPELINE.get(task)
    base_source = info.get("baseModelUri") or info.get("baseModel")
    base_id = _hub_id(str(base_source)) if base_source else None
    data = info.get("dataset") or {}
    data_ids = [i for i in (_hub_id(d) for d in (data.get("train"), data.get("eval"))) if i]
    dataset_name = data_ids[0] if data_ids else str(data.get("train") or "custom")
    adapter = info.get("format") == "lora"
    method = str(info.get("method") or "sft")
    results = [
        EvalResult(
            task_type=pipeline or task,
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            metric_type=key,
            metric_value=float(metrics[key]),
        )
        for key in EVAL_METRICS
        if key in metrics
    ]
    tags = ["finetune", task, method] + (["lora", "peft"] if adapter else [])
    if info.get("format") == "int8":
        tags.append("qat-int8")
    card_data = ModelCardData(
        base_model=base_id,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=pipeline,
        tags=[t for t in tags if t],
        datasets=sorted(set(data_ids)) or None,
        model_name=repo_id,
        eval_results=results or None,
    )
    hp = info.get("hyperparameters") or {}
    lines = [
        f"# {repo_id}",
        "",
        f"A {task} model fine-tuned with finetune ({method}"
        + (", LoRA adapter" if adapter else "")
        + f") from `{base_source}`.",
        "",
        "## Data",
        "",
        f"- train: `{data.get('train')}`",
        f"- eval: `{data.get('eval') or 'held out from train'}`",
        "",
        "## Hyperparameters",
        "",
        *(f"- {k}: {v}" for k, v in sorted(hp.items())),
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {_number(v)} |" for k, v in sorted(metrics.items())),
        "",
    ]
    if info.get("labels"):
        lines[-1:-1] = ["", f"Labels: {', '.join(map(str, info['labels']))}"]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return str(ModelCard(content))


def push(output: Output, folder: Path, info: dict[str, Any], metrics: dict[str, float]) -> str:
    """README.md into the model folder, then the folder in one commit; the repo's URL."""
    assert output.hub_repo is not None
    (folder / "README.md").write_text(model_card(output.hub_repo, info, metrics))
    try:
        _api().upload_folder(
            repo_id=output.hub_repo,
            folder_path=str(folder),
            revision=output.hub_revision,
            commit_message=f"finetune: {info.get('task')} model from {info.get('baseModel')}",
        )
    except Exception as err:
        raise _error(output, f"push failed: {_reason(err)}") from None
    return repo_url(output)
