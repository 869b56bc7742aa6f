"""The one training entry point: `run` (image, CLI, sweep trials) and `run_local` (CLI).

spec -> data (validated, labels mapped, tokenised once) -> model (+ LoRA, + QAT)
     -> transformers Trainer (dynamic padding, length-grouped batches, resume)
     -> evaluation (metrics, report, plots) -> artifacts + metrics.json
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    EarlyStoppingCallback,
    PreTrainedTokenizerBase,
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    set_seed,
)

from finetune_api.models import FineTuneJob, FineTuneJobSpec
from finetune_trainer import (
    atomic,
    autobatch,
    base_eval,
    distributed,
    durable,
    evaluation,
    heartbeat,
    hub,
    lm_speed,
    rundir,
    sources,
    throughput,
    tracking,
)
from finetune_trainer.batching import FastTrainer
from finetune_trainer.data import load_raw
from finetune_trainer.interrupt import failure_message
from finetune_trainer.modeling import (
    choose_precision,
    effective_max_length,
    load_model_noted,
    load_tokenizer,
    resolve_model,
)
from finetune_trainer.report import (
    MetricsFileSink,
    Reporter,
    ReporterCallback,
    Sink,
    StdoutSink,
    status_metrics,
)
from finetune_trainer.rundir import RUN_INFO
from finetune_trainer.runstate import RunState
from finetune_trainer.signals import BudgetExhausted, deferred, sigterm_raises
from finetune_trainer.tasks import recipe_for
from finetune_trainer.training import (
    CHECKPOINTS,
    QuietProgressCallback,
    TimedCheckpoints,
    checkpoint_interval,
    fingerprint,
    resume_checkpoint,
    total_steps,
    training_arguments,
)

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def default_output(job: FineTuneJob) -> Path:
    if job.spec.output.path:
        return Path(job.spec.output.path).expanduser()
    return Path("runs") / job.metadata.name


def run_local(
    job: FineTuneJob, *, spec_dir: Path | None, output: Path | None = None
) -> dict[str, float]:
    """`finetune run`: progress bar, stdout lines, metrics.json in ./runs/NAME by default."""
    output_dir = (output or default_output(job)).resolve()
    print(f"finetune: {job.metadata.name} -> {output_dir}", flush=True)
    metrics = run(
        job,
        spec_dir=spec_dir,
        output_dir=output_dir,
        sinks=[StdoutSink()],
        # A bar only on a terminal: in a log file its \r-updates would cut into the lines.
        progress_bar=sys.stderr.isatty(),
    )
    headline = {
        k: metrics[k]
        for k in ("accuracy", "f1Macro", "perplexity", "bleu", "rewardAccuracy", "rewardMargin")
        if k in metrics
    }
    summary = ", ".join(f"{k} {v:.4f}" for k, v in headline.items())
    print(f"finetune: done: {summary}; artifacts in {output_dir}", flush=True)
    return metrics


def run(
    job: FineTuneJob,
    *,
    spec_dir: Path | None,
    output_dir: Path,
    sinks: Sequence[Sink] = (),
    callbacks: Iterable[TrainerCallback] = (),
    progress_bar: bool = False,
) -> dict[str, float]:
    """Train, evaluate and save one FineTuneJob; returns the status metrics (camelCase)."""
    rundir.prepare(output_dir)
    # Under torchrun only the main process reports and writes metrics.json (distributed.py).
    world = distributed.world()
    distributed.bind_device(world)
    # One run at a time per directory; an earlier success's records survive a failure;
    # SIGTERM ends the run like Ctrl-C (rundir.py, interrupt.py).
    with rundir.locked(output_dir, main=world.is_main), sigterm_raises():
        records = rundir.RunRecords(output_dir)
        reporter = Reporter([MetricsFileSink(records.live), *sinks] if world.is_main else [])
        # spec.tracking: MLflow, from rank 0 only, never blocking training (tracking.py)
        tracker = tracking.attach(job, reporter=reporter) if world.is_main else None
        try:
            metrics = _run(
                job.spec,
                job.metadata.name,
                spec_dir,
                output_dir,
                reporter,
                list(callbacks),
                progress_bar,
                tracker,
            )
        except BudgetExhausted as err:  # a clean stop with a checkpoint: Suspended
            reporter.end(phase="Suspended", message=err.message, reason=err.reason)
            if world.is_main:
                rundir.record_failure(records)
            raise
        except BaseException as err:
            message = failure_message(err, output_dir)
            reporter.end(phase="Failed", message=message, reason=getattr(err, "reason", None))
            if world.is_main:
                rundir.record_failure(records)
            raise
        finally:
            if tracker is not None:
                tracker.close()
        if world.is_main:
            records.succeeded()
            if job.spec.output.uri:  # metrics.json, then the marker: the upload is complete
                outbox = durable.resolve_uri(job.spec.output.uri, spec_dir)
                durable.OutputStore(outbox).finish(output_dir, [output_dir / METRICS_FILE])
        return metrics


def _run(
    spec: FineTuneJobSpec,
    name: str,
    spec_dir: Path | None,
    output_dir: Path,
    reporter: Reporter,
    callbacks: list[TrainerCallback],
    progress_bar: bool,
    tracker: tracking.MlflowSink | None = None,
) -> dict[str, float]:
    _quiet_libraries(progress_bar)
    # spec.checkpoint.uri is reached before anything loads: a bad bucket fails in seconds
    durable.check_budget(spec.budget)
    store = durable.store_for(spec.checkpoint.uri if spec.checkpoint else None, spec_dir)
    if store is not None and distributed.world().is_main:
        store.check()
    outbox = _output_store(spec, spec_dir)  # spec.output.uri, checked before training too
    sources.check(spec)  # model.uri, dataset.*.uri: listed before anything downloads
    if spec.output.hub_repo and distributed.world().is_main:
        hub.check(spec.output)  # token, endpoint, repository (hub.py)
    state = _load(spec, spec_dir, output_dir, reporter, progress_bar)
    keep = spec.checkpoint.keep if spec.checkpoint else 1
    state.publisher = durable.Publisher(store, fingerprint(spec), keep, durable.Ledger())
    state.trainer = _build_trainer(state, callbacks)
    if tracker is not None:
        tracker.log_params(state.spec)  # the resolved spec (batchSize auto made concrete)
    _train(state, spec_dir)
    _compression_finish(state)
    _evaluate(state)
    _save(state)
    _lm_eval(state, spec_dir)
    _push_to_hub(state)
    notes = []
    if tracker is not None:
        state.artifacts |= tracker.finish(state.final, state.artifacts)
        notes.append(tracker.note())
    if outbox is not None and state.world.is_main:  # status.artifacts: the final URIs
        skip = {CHECKPOINTS, rundir.METRICS, rundir.IN_PROGRESS}
        outbox.upload_run(output_dir, skip)
        state.artifacts = {k: outbox.uri_of(v, output_dir) for k, v in state.artifacts.items()}
    message = "; ".join(n for n in notes if n)
    reporter.end(phase="Succeeded", metrics=state.final, artifacts=state.artifacts, message=message)
    return dict(reporter.state.metrics)


def _lm_eval(state: RunState, spec_dir: Path | None) -> None:
    """spec.evaluation.lmEval: lm-evaluation-harness on the trained model, rank 0 only
    (lm_eval_run.py); its results join the final metrics."""
    config = state.spec.evaluation.lm_eval if state.spec.evaluation else None
    if config is None or not state.world.is_main:
        return
    from finetune_trainer import lm_eval_run  # lm-eval only when asked for

    results = lm_eval_run.evaluate(
        state.trainer.model, state.tokenizer, config, spec_dir, state.output_dir
    )
    state.final |= results.metrics
    state.artifacts["lmEval"] = str(results.path)


def _push_to_hub(state: RunState) -> None:
    """spec.output.hubRepo: the model (or adapter) and its card; status.artifacts.hubRepo."""
    output = state.spec.output
    if not output.hub_repo or not state.world.is_main:
        return
    info = json.loads((state.output_dir / RUN_INFO).read_text())
    folder = Path(state.artifacts["model"])
    state.artifacts["hubRepo"] = hub.push(output, folder, info, state.final)
    log.info("pushed %s to %s", folder.name, state.artifacts["hubRepo"])


def _output_store(spec: FineTuneJobSpec, spec_dir: Path | None) -> durable.OutputStore | None:
    if not spec.output.uri:
        return None
    outbox = durable.OutputStore(durable.resolve_uri(spec.output.uri, spec_dir))
    if distributed.world().is_main:
        outbox.check()
    return outbox


def _quiet_libraries(progress_bar: bool) -> None:
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight loading/saving bars; the Trainer keeps its own
    if not progress_bar:
        datasets.disable_progress_bars()


def _load(
    spec: FineTuneJobSpec,
    spec_dir: Path | None,
    output_dir: Path,
    reporter: Reporter,
    progress_bar: bool,
) -> RunState:
    """Model, tokenizer and data, tokenised once; QAT and LoRA applied to the model."""
    hp = spec.hyperparameters
    recipe = recipe_for(spec)
    set_seed(hp.seed)
    precision = choose_precision(hp.precision)
    ref = resolve_model(spec.model, spec_dir)
    tokenizer = load_tokenizer(ref, recipe)
    raw = load_raw(spec.dataset, recipe, spec_dir, hp.seed)
    quantized = {}
    if spec.lora is not None and spec.lora.quantize_base is not None:
        from finetune_trainer import qlora  # bitsandbytes only for QLoRA

        config = qlora.quantization_config(spec.lora.quantize_base, precision)
        quantized = {"quantization_config": config}
    model, load_note, new_modules = load_model_noted(
        ref, recipe, tokenizer, raw.label_map, extra=quantized
    )
    recipe.prepare_model(model, tokenizer)
    max_length = effective_max_length(model, hp.max_length)
    train_ds, eval_ds = (
        recipe.tokenize(split, tokenizer, max_length) for split in (raw.train, raw.eval)
    )
    recipe.check_data(raw.train, train_ds, tokenizer)  # before any step (the template gate)
    state = RunState(
        spec, recipe, output_dir, reporter, progress_bar, precision, ref, tokenizer, raw,
        model, max_length, train_ds, eval_ds,
    )  # fmt: skip
    state.load_note, state.new_modules = load_note, new_modules
    state.final |= recipe.data_metrics(train_ds)
    _compression_setup(state, spec_dir)
    _adapt_model(state)
    return state


def _adapt_model(state: RunState) -> None:
    """QAT, then LoRA, on the loaded model."""
    spec = state.spec
    if spec.quantization is not None:
        from finetune_trainer import qat  # torchao loads only when QAT is asked for

        # Before LoRA: the base Linears get fake quantisation, the adapters wrap them.
        state.qat_layers = qat.prepare_qat(state.model)
    if spec.lora is not None and spec.lora.quantize_base is not None:
        from finetune_trainer import qlora

        state.model = qlora.prepare(state.model, _gradient_checkpointing(state))
    if spec.lora is not None:
        from finetune_trainer import lora  # peft (and the torchao it pulls in) only for LoRA

        state.model = lora.apply_lora(
            state.model,
            spec.lora,
            state.recipe.peft_task_type,
            also_train=state.new_modules,
            trainable_tokens=state.recipe.lora_trainable_tokens(state.tokenizer),
        )


def _compression_setup(state: RunState, spec_dir: Path | None) -> None:
    """Distillation: the teacher's logits join the training set, its metrics the run's
    (distill.py). Pruning: the model is checked before any training (pruning.py)."""
    spec = state.spec
    if spec.pruning is not None:
        from finetune_trainer import pruning

        pruning.check(state.model, spec.pruning)
    if spec.distillation is not None:
        from finetune_trainer import distill

        state.train_ds, teacher_metrics = distill.attach_teacher_logits(
            spec.distillation,
            spec_dir,
            student=state.model,
            student_tokenizer=state.tokenizer,
            raw=state.raw,
            train_ds=state.train_ds,
            eval_ds=state.eval_ds,
            recipe=state.recipe,
            max_length=state.max_length,
        )
        state.final |= teacher_metrics


def _gradient_checkpointing(state: RunState) -> bool:
    """hyperparameters.gradientCheckpointing; unset: on for a causal LM with LoRA on a GPU
    (activations dominate its memory there), off elsewhere."""
    chosen = state.spec.hyperparameters.gradient_checkpointing
    if chosen is not None:
        return chosen
    return state.recipe.causal_lm and state.spec.lora is not None and torch.cuda.is_available()


def _trainer_class(state: RunState, base: type[Trainer]) -> Callable[..., Trainer]:
    """The recipe's Trainer on `base`, with the distillation loss when spec.distillation
    is set."""
    cls = state.recipe.trainer_class(base)
    if state.spec.distillation is None:
        return cls
    from finetune_trainer import distill

    assert isinstance(cls, type)
    return distill.trainer_class(cls, state.spec.distillation)


def _compression_finish(state: RunState) -> None:
    """Pruning: one-shot (or a gradual schedule's top-up), then a fresh evaluation. With
    pruning or distillation: size_table.md (teacher/dense vs the run's model)."""
    spec = state.spec
    if spec.pruning is not None:
        from finetune_trainer import pruning

        state.final |= pruning.finish(state.trainer, spec.pruning, state.final)
    if state.world.is_main and (spec.pruning is not None or spec.distillation is not None):
        from finetune_trainer import sizes

        path = state.output_dir / "size_table.md"
        path.write_text(sizes.size_table(state.final))
        state.artifacts["sizeTable"] = str(path)


def _build_trainer(state: RunState, callbacks: list[TrainerCallback]) -> Trainer:
    """The transformers Trainer with this project's callbacks; sets metrics_fn."""
    # batchSize auto -> a concrete batch and accumulation (autobatch.py)
    state.spec = autobatch.concrete_spec(
        state.spec,
        state.model,
        state.train_ds,
        state.precision.bf16,
        token_labels=state.recipe.token_labels,
    )
    state.recipe.spec = state.spec
    spec, hp = state.spec, state.spec.hyperparameters
    args = training_arguments(
        spec,
        output_dir=state.output_dir / CHECKPOINTS,
        precision=state.precision,
        progress_bar=state.progress_bar,
        best_metric=state.recipe.best_metric,
        gradient_checkpointing=_gradient_checkpointing(state),
    )
    state.metrics_fn = state.recipe.metrics_fn()
    # FastTrainer: pre-padded, length-bucketed training batches (batching.py)
    trainer = _trainer_class(state, FastTrainer)(
        model=state.model,
        args=args,
        data_collator=state.recipe.collator(state.tokenizer),
        train_dataset=state.train_ds,
        eval_dataset=state.eval_ds,
        processing_class=state.tokenizer,
        compute_metrics=state.metrics_fn,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if state.progress_bar:
        trainer.add_callback(QuietProgressCallback)
    trainer.add_callback(ReporterCallback(state.reporter))
    trainer.add_callback(heartbeat.Heartbeat(state.reporter))  # a line at least every 30 s
    if hp.early_stopping_patience is not None:
        trainer.add_callback(EarlyStoppingCallback(hp.early_stopping_patience))
    if hp.eval_steps is None and not state.world.distributed:
        # Time-based saves would differ between ranks; several workers save per epoch only.
        trainer.add_callback(TimedCheckpoints(checkpoint_interval(spec)))
    # SIGTERM saves the last completed step and exits 143; each save goes to checkpoint.uri
    assert state.publisher is not None
    durable_callbacks: list[durable.PublishCheckpoints | durable.SaveOnSigterm | durable.BudgetStop]
    durable_callbacks = [
        durable.PublishCheckpoints(state.publisher),
        durable.SaveOnSigterm(state.publisher),
    ]
    if spec.budget is not None:  # save and stop at the budget (status Suspended)
        gpus = state.world.size if torch.cuda.is_available() else 0
        price = durable.price_per_gpu_hour()
        durable_callbacks.append(durable.BudgetStop(spec.budget, state.publisher, gpus, price))
    for durable_callback in durable_callbacks:
        durable_callback.trainer = trainer
        trainer.add_callback(durable_callback)
    if spec.pruning is not None and spec.pruning.effective_schedule == "gradual":
        from finetune_trainer import pruning

        trainer.add_callback(pruning.GradualPruning(state.model, spec.pruning.sparsity))
    trainer.add_callback(throughput.Meter(state.train_ds))  # samples/s, tokens/s, MFU
    # packing (hyperparameters.packing), Liger kernels
    lm_speed.configure(trainer, causal_lm=state.recipe.packs, packing=hp.packing)
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer


def _train(state: RunState, spec_dir: Path | None = None) -> None:
    """Report the start, train (resuming where a checkpoint exists), collect eval metrics."""
    spec, trainer = state.spec, state.trainer
    with trainer.args.main_process_first(local=False, desc="checkpoints"):
        state.resume = resume_checkpoint(state.output_dir, spec)  # rank 0 cleans up first
        # the newest complete checkpoint at spec.checkpoint.uri, when newer (durable.py)
        store = state.publisher.store if state.publisher else None
        state.resume = durable.fetch_newest(
            store,
            state.publisher.fingerprint if state.publisher else "",
            state.output_dir / CHECKPOINTS,
            state.resume,
        )
    steps = total_steps(spec, len(state.train_ds), state.world.size)
    state.final["worldSize"] = float(state.world.size)
    resumed_step = durable.step_of(state.resume) if state.resume else None
    if resumed_step is not None:  # status.metrics: the operator's Resumed Event names it
        state.final["resumedFromStep"] = float(resumed_step)
        state.reporter.state.metrics["resumedFromStep"] = float(resumed_step)
    state.reporter.start(steps, message=_start_message(state, steps))
    if state.recipe.reports_perplexity:
        state.final["perplexityBefore"] = _perplexity_before(
            trainer, state.output_dir, state.resume
        )
    if base_eval.wanted(spec):  # spec.promote.when.beatsBase: base.<metric>, once
        state.final |= base_eval.evaluate(
            trainer,
            state.tokenizer,
            spec,
            checkpoints=state.output_dir / CHECKPOINTS,
            output_dir=state.output_dir,
            spec_dir=spec_dir,
            perplexity=state.recipe.reports_perplexity,
            is_main=state.world.is_main,
        )
    # halves the batch and doubles the accumulation on out-of-memory (autobatch.py)
    if state.publisher is not None:  # training time so far, summed over resumes (budget)
        state.publisher.ledger.resume_from(state.resume)
        state.publisher.ledger.start()
    with deferred():  # SIGTERM: save at the next step boundary, then exit (durable.py)
        train_result = autobatch.train(trainer, state.resume)
    state.final.update(status_metrics(train_result.metrics))
    state.final.update(throughput.metrics(trainer))
    state.final.update(
        _final_eval(trainer, spec.hyperparameters.early_stopping_patience is not None)
    )
    if state.recipe.reports_perplexity and "evalLoss" in state.final:
        state.final["perplexity"] = evaluation.perplexity(state.final["evalLoss"])


def _start_message(state: RunState, steps: int) -> str:
    spec = state.spec
    return (
        f"{state.recipe.describe()} {state.ref.location}{_adapters(spec)}"
        f"{' + QAT int8' if spec.quantization else ''}"
        f"{f' ({state.load_note})' if state.load_note else ''}: {len(state.train_ds)} train / "
        f"{len(state.eval_ds)} eval rows, {steps} steps, precision {state.precision.name}"
        + (f", {state.world.size} workers" if state.world.distributed else "")
        + (f", resuming from {Path(state.resume).name}" if state.resume else "")
    )


def _adapters(spec: FineTuneJobSpec) -> str:
    if spec.lora is None:
        return ""
    base = spec.lora.quantize_base
    return f" + QLoRA ({base} base)" if base else " + LoRA"


def _evaluate(state: RunState) -> None:
    """The recipe's evaluation: classification report (QAT: fp32 vs int8), BLEU, ..."""
    if state.world.is_main:
        state.recipe.evaluate(state)
    else:
        state.recipe.evaluate_as_worker(state)


def _save(state: RunState) -> None:
    """Model (QAT saved its int8 model in _evaluate), run.json, log history, loss curve."""
    if not state.world.is_main:
        if state.spec.quantization is None and state.spec.lora is None:
            # Collective under FSDP (gathers the full state dict); writes nothing here.
            state.trainer.save_model(str(state.output_dir / "model"))
        return
    spec, trainer, output_dir = state.spec, state.trainer, state.output_dir
    if spec.quantization is None:
        state.artifacts |= _save_model(trainer, state.tokenizer, spec, output_dir)
    state.recipe.save(state)
    _write_run_info(state)
    (output_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    if evaluation.plot_loss(trainer.state.log_history, output_dir / "loss.png"):
        state.artifacts["lossCurve"] = str(output_dir / "loss.png")
    state.artifacts["metrics"] = str(output_dir / METRICS_FILE)
    shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)


def _perplexity_before(trainer: Trainer, output_dir: Path, resume: str | None) -> float:
    """Eval perplexity of the model as loaded, kept across a resume."""
    path = output_dir / CHECKPOINTS / "perplexity-before.json"
    if resume and path.is_file():
        return float(json.loads(path.read_text())["perplexityBefore"])
    loss = trainer.evaluate(metric_key_prefix="before")["before_loss"]
    value = evaluation.perplexity(float(loss))
    if trainer.is_world_process_zero():
        path.write_text(json.dumps({"perplexityBefore": value}))
    return value


def _final_eval(trainer: Trainer, best_restored: bool) -> dict[str, float]:
    """Eval metrics of the final model: the in-training eval at the last step when there
    was one (no second pass), else a fresh evaluation."""
    history = trainer.state.log_history
    last = next((h for h in reversed(history) if "eval_loss" in h), None)
    if best_restored or last is None or last.get("step") != trainer.state.global_step:
        last = trainer.evaluate()
    return status_metrics(last)


def _save_model(
    trainer: Trainer, tokenizer: PreTrainedTokenizerBase, spec: FineTuneJobSpec, output_dir: Path
) -> dict[str, str]:
    """Full model, or the LoRA adapter alone (+ the merged model when lora.merge)."""
    model: Any = trainer.model
    artifacts: dict[str, str] = {}
    # Each folder is saved all or nothing (atomic.py); other formats' folders go after.
    if spec.lora is None:
        atomic.save_dir(
            output_dir / "model", lambda d: trainer.save_model(str(d)), tokenizer.save_pretrained
        )
        artifacts["model"] = str(output_dir / "model")
        atomic.remove_stale(output_dir, ("adapter", "merged"), keep=artifacts.values())
        return artifacts
    adapter_dir = output_dir / "adapter"
    atomic.save_dir(adapter_dir, lambda d: model.save_pretrained(str(d)), tokenizer.save_pretrained)
    artifacts["model"] = str(adapter_dir)
    if spec.lora.merge:
        merged = model.merge_and_unload()
        atomic.save_dir(
            output_dir / "merged",
            lambda d: merged.save_pretrained(str(d)),
            tokenizer.save_pretrained,
        )
        artifacts["mergedModel"] = str(output_dir / "merged")
    atomic.remove_stale(output_dir, ("model", "merged"), keep=artifacts.values())
    return artifacts


def _write_run_info(state: RunState) -> None:
    """run.json: what `predict` needs to load the run (and what a person needs to know)."""
    spec, ref, label_map = state.spec, state.ref, state.raw.label_map
    max_length, output_dir = state.max_length, state.output_dir
    fmt = "int8" if spec.quantization else "lora" if spec.lora else "full"
    info: dict[str, Any] = {
        "task": spec.task.value,
        "format": fmt,
        "model": "adapter" if fmt == "lora" else "model",
        "merged": "merged" if spec.lora is not None and spec.lora.merge else None,
        "baseModel": ref.location,
        "baseModelRevision": ref.revision,
        "baseModelUri": ref.uri,
        "method": spec.method.type,
        "dataset": {
            role: (source.uri or source.hub or source.path) if source is not None else None
            for role, source in (("train", spec.dataset.train), ("eval", spec.dataset.eval))
        },
        "hyperparameters": spec.hyperparameters.dump(),
        "maxLength": max_length,
        "labels": list(label_map.labels) if label_map else None,
        "quantizeBase": spec.lora.quantize_base if spec.lora else None,
        **state.recipe.run_info(),
    }
    (output_dir / RUN_INFO).write_text(json.dumps(info, indent=2))
    if label_map is not None:
        (output_dir / "label_map.json").write_text(
            json.dumps({"id2label": label_map.id2label, "label2id": label_map.label2id}, indent=2)
        )
