"""Checkpoints that outlive the pod, and the save on SIGTERM (docs/durability.md).

- `SaveOnSigterm`: during training a SIGTERM (pod deletion, eviction, preemption, a
  drain, `kill PID`) only sets a flag (signals.deferred); at the next step boundary the
  callback saves a checkpoint of the last completed optimizer step (a half-accumulated
  step is dropped, as autobatch's out-of-memory save does), publishes it to
  `spec.checkpoint.uri` when set, and raises `Terminated`: the run exits 143 in phase
  Failed with its work kept. Under torchrun the ranks agree on the flag each step (one
  tiny all-reduce), so they save the same step together.
- `CheckpointStore`: `spec.checkpoint.uri`, a path or any fsspec URL (s3://, gs://,
  file://). A checkpoint `checkpoint-N/` is uploaded file by file; each rank uploads
  what it wrote (rank 0 everything but other ranks' RNG files), then, after a barrier,
  rank 0 writes `checkpoint-N/finetune-complete.json` (the spec fingerprint and the
  step) last. Only a folder with that marker and this spec's fingerprint is ever chosen
  for resume, so a half-written upload is ignored (and removed by the next publish);
  `keep` bounds the complete ones.

transformers' `enable_jit_checkpoint` (5.24) was read and not used: it waits 3 s after
SIGTERM before asking for a save, then lets `train()` return normally (the run would go
on to evaluate and report Succeeded on a cut-short model), its in-progress sentinel is
not honoured by `get_last_checkpoint` (a checkpoint cut by SIGKILL would be resumed
from), and it has no notion of several ranks or of a remote copy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import (
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from finetune_api.models import Budget
from finetune_trainer import signals, storage

log = logging.getLogger(__name__)

MARKER = "finetune-complete.json"
URI_FIELD = "spec.checkpoint.uri"
_STEP = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def step_of(name: str) -> int | None:
    match = _STEP.match(Path(name).name)
    return int(match.group(1)) if match else None


def _rank_files(files: list[Path], rank: int, world: int) -> list[Path]:
    """What this rank uploads: rank 0 all but the other ranks' own files; rank k > 0 the
    files carrying its index (rng_state_k.pth, sharded optimizer/model files `_k.`)."""
    others = {f"_{r}." for r in range(world) if r != rank}
    if rank == 0:
        return [f for f in files if not any(tag in f.name for tag in others) or world == 1]
    tag = f"_{rank}."
    return [f for f in files if tag in f.name]


class CheckpointStore:
    """checkpoint-N folders under `uri` (fsspec), complete once the marker is there."""

    def __init__(self, uri: str, field: str = URI_FIELD) -> None:
        self.uri = uri
        self.field = field
        self.fs, self.root = storage.filesystem(uri, field)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def check(self) -> None:
        """Reach the store before any training: a wrong bucket, an unreachable endpoint
        or missing credentials is one line naming the field."""
        storage.probe(self.fs, self.root, self.uri, self.field)

    def complete(self, fingerprint: str) -> list[tuple[int, str]]:
        """(step, name) of this spec's complete checkpoints, oldest first."""
        found: list[tuple[int, str]] = []
        try:
            names = self.fs.ls(self.root, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        for entry in names:
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            step = step_of(name)
            if step is None:
                continue
            try:
                marker = json.loads(self.fs.cat_file(self._path(name, MARKER)))
            except FileNotFoundError:
                continue
            if marker.get("sha256") == fingerprint:
                found.append((step, name))
        return sorted(found)

    def newest(self, fingerprint: str) -> tuple[int, str] | None:
        done = self.complete(fingerprint)
        return done[-1] if done else None

    def upload(self, local: Path, rank: int = 0, world: int = 1) -> None:
        files = sorted(p for p in local.rglob("*") if p.is_file())
        made: set[str] = set()
        for path in _rank_files(files, rank, world):
            remote = self._path(local.name, *path.relative_to(local).parts)
            parent = remote.rsplit("/", 1)[0]
            if parent not in made:  # a local/PVC store needs its folders; objects do not
                self.fs.makedirs(parent, exist_ok=True)
                made.add(parent)
            self.fs.put_file(str(path), remote)

    def mark_complete(self, name: str, fingerprint: str, keep: int) -> None:
        """Rank 0, after every rank's upload: the marker, then the pruning."""
        marker = {"sha256": fingerprint, "step": step_of(name), "time": time.time()}
        self.fs.pipe_file(self._path(name, MARKER), json.dumps(marker).encode())
        self.prune(fingerprint, keep, newest=name)

    def prune(self, fingerprint: str, keep: int, newest: str) -> None:
        """Keep the `keep` newest complete checkpoints; drop older ones, incomplete ones
        below the newest and other specs' ones."""
        done = self.complete(fingerprint)
        kept = {name for _, name in done[-keep:]}
        newest_step = step_of(newest) or 0
        try:
            entries = self.fs.ls(self.root, detail=False, refresh=True)
        except FileNotFoundError:
            return
        for entry in entries:
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            step = step_of(name)
            if step is None or name in kept or step > newest_step:
                continue
            self.fs.rm(self._path(name), recursive=True)

    def download(self, name: str, directory: Path) -> Path:
        """checkpoint-N into directory, all or nothing (a temporary name, then a rename)."""
        target = directory / name
        if target.is_dir():
            return target
        partial = directory / f".{name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        prefix = self._path(name) + "/"
        for remote in self.fs.find(self._path(name)):
            relative = str(remote)[len(prefix) :] if str(remote).startswith(prefix) else None
            if not relative or relative == MARKER:
                continue
            (partial / relative).parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(partial / relative))
        os.replace(partial, target)
        return target


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _any_rank(flag: bool, args: TrainingArguments) -> bool:
    """True on every rank when any rank has the flag (one all-reduce under torchrun)."""
    if args.world_size <= 1:
        return flag
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1 if flag else 0], device=args.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


SPENT_FILE = "finetune-spent.json"  # in each checkpoint: training seconds so far


class Ledger:
    """Training wall time, summed over resumes (each checkpoint records it)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.before = 0.0  # seconds of the runs this one resumed
        self.started: float | None = None

    def resume_from(self, checkpoint: str | None) -> None:
        path = Path(checkpoint) / SPENT_FILE if checkpoint else None
        if path is not None and path.is_file():
            self.before = float(json.loads(path.read_text()).get("trainingSeconds", 0.0))

    def start(self) -> None:
        self.started = self.clock()

    def seconds(self) -> float:
        running = self.clock() - self.started if self.started is not None else 0.0
        return self.before + running

    def write(self, checkpoint: Path) -> None:
        (checkpoint / SPENT_FILE).write_text(json.dumps({"trainingSeconds": self.seconds()}))


class Publisher:
    """Records the spent time in each checkpoint the Trainer saves and publishes it to the
    store (None: local only)."""

    def __init__(
        self, store: CheckpointStore | None, fingerprint: str, keep: int, ledger: Ledger
    ) -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.keep = keep
        self.ledger = ledger
        self.published: list[str] = []

    def publish(self, trainer: Trainer) -> None:
        last = get_last_checkpoint(trainer.args.output_dir)
        if last is None:
            return
        args = trainer.args
        if args.process_index == 0:
            self.ledger.write(Path(last))
        if self.store is None:
            return
        started = time.monotonic()
        self.store.upload(Path(last), args.process_index, args.world_size)
        _barrier()
        if args.process_index == 0:
            self.store.mark_complete(Path(last).name, self.fingerprint, self.keep)
            log.info(
                "checkpoint %s published to %s in %.1f s",
                Path(last).name,
                self.store.uri,
                time.monotonic() - started,
            )
        _barrier()
        self.published.append(Path(last).name)


class PublishCheckpoints(TrainerCallback):
    """After every regular save: publish it (rank 0's marker last)."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.trainer: Trainer | None = None

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.trainer is not None:
            self.publisher.publish(self.trainer)


def save_now(trainer: Trainer, publisher: Publisher) -> float | None:
    """A checkpoint of the last completed optimizer step (a half-accumulated step is
    dropped), published; the seconds it took (None before the first step)."""
    state, model = trainer.state, trainer.model
    if state.global_step == 0 or model is None:
        return None
    started = time.monotonic()
    model.zero_grad(set_to_none=True)
    latest = get_last_checkpoint(trainer.args.output_dir)
    if latest is None or step_of(latest) != state.global_step:
        trainer._save_checkpoint(model, trial=None)
    publisher.publish(trainer)
    return time.monotonic() - started


class SaveOnSigterm(TrainerCallback):
    """SIGTERM during training: save the last completed step, publish it, exit 143."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.trainer: Trainer | None = None
        self.saved_at: float | None = None

    def _stop_if_asked(self, args: TrainingArguments, state: TrainerState) -> None:
        if not _any_rank(signals.requested(), args):
            return
        if self.trainer is not None:
            seconds = save_now(self.trainer, self.publisher)
            if seconds is not None:
                log.warning("SIGTERM: saved checkpoint-%d in %.1f s", state.global_step, seconds)
        raise signals.Terminated()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._stop_if_asked(args, state)

    def on_substep_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if args.world_size <= 1:  # ranks agree at step ends only
            self._stop_if_asked(args, state)

    def on_prediction_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if args.world_size <= 1:  # an evaluation inside training
            self._stop_if_asked(args, state)


class BudgetStop(TrainerCallback):
    """spec.budget: at a step end where training time, GPU-hours or cost reach the budget,
    save and publish a checkpoint and raise BudgetExhausted (every rank agrees first)."""

    def __init__(
        self,
        budget: Budget,
        publisher: Publisher,
        gpus: int,
        price_per_gpu_hour: float | None,
    ) -> None:
        self.budget = budget
        self.publisher = publisher
        self.gpus = gpus
        self.price = price_per_gpu_hour
        self.trainer: Trainer | None = None

    def spent(self) -> str | None:
        """Which limit is reached, in words (None: within budget)."""
        seconds = self.publisher.ledger.seconds()
        gpu_hours = self.gpus * seconds / 3600.0
        budget = self.budget
        if budget.max_duration_seconds is not None and seconds >= budget.max_duration_seconds:
            return f"maxDurationSeconds {budget.max_duration_seconds} ({seconds:.1f} s of training)"
        if budget.max_gpu_hours is not None and gpu_hours >= budget.max_gpu_hours:
            return f"maxGpuHours {budget.max_gpu_hours} ({gpu_hours:.4f} GPU-hours)"
        if budget.max_cost is not None and self.price is not None:
            cost = gpu_hours * self.price
            if cost >= budget.max_cost:
                return f"maxCost {budget.max_cost} ({cost:.4f} at {self.price}/GPU-hour)"
        return None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        which = self.spent()
        if not _any_rank(which is not None, args) or state.global_step >= state.max_steps:
            return
        if self.trainer is not None:
            save_now(self.trainer, self.publisher)
        where = f" and {self.publisher.store.uri}" if self.publisher.store else ""
        raise signals.BudgetExhausted(
            f"budget exhausted at step {state.global_step}/{state.max_steps}: "
            f"{which or 'another rank reached it'}; checkpoint-{state.global_step} is saved "
            f"in {args.output_dir}{where}; raise spec.budget and run again to resume",
            state.global_step,
        )


def check_budget(budget: Budget | None) -> None:
    """maxCost needs a price per GPU-hour: refused before training without one."""
    if budget is not None and budget.max_cost is not None and price_per_gpu_hour() is None:
        raise storage.StorageError(
            "spec.budget.maxCost: no price per GPU-hour is configured (the chart's "
            "cost.gpuHourPrice, or FINETUNE_GPU_HOUR_PRICE for a local run); set one, "
            "or use maxGpuHours / maxDurationSeconds"
        )


def price_per_gpu_hour() -> float | None:
    """FINETUNE_GPU_HOUR_PRICE: set by the operator from its cost.gpuHourPrice."""
    value = os.environ.get("FINETUNE_GPU_HOUR_PRICE")
    return float(value) if value else None


OUTPUT_FIELD = "spec.output.uri"


class OutputStore:
    """spec.output.uri: the finished run's files, uploaded with the marker written last
    (an earlier run's marker there is removed first, so a half-new set is never complete)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = storage.filesystem(uri, OUTPUT_FIELD)

    def check(self) -> None:
        storage.probe(self.fs, self.root, self.uri, OUTPUT_FIELD)

    def uri_of(self, path: str | Path, output_dir: Path) -> str:
        local = Path(path)
        if not local.is_relative_to(output_dir):
            return str(path)
        return f"{self.uri}/{local.relative_to(output_dir).as_posix()}"

    def _put(self, local: Path, output_dir: Path) -> None:
        remote = "/".join([self.root, *local.relative_to(output_dir).parts])
        self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local), remote)

    def upload_run(self, output_dir: Path, skip: set[str]) -> None:
        """Every file of the run but `skip` (top-level names) and the records written at
        the very end (`finish`)."""
        marker = f"{self.root}/{MARKER}"
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(marker)
        for local in sorted(p for p in output_dir.rglob("*") if p.is_file()):
            top = local.relative_to(output_dir).parts[0]
            if top in skip or top.startswith("."):
                continue
            self._put(local, output_dir)

    def finish(self, output_dir: Path, records: list[Path]) -> None:
        for local in records:
            if local.is_file():
                self._put(local, output_dir)
        marker = {"complete": True, "time": time.time()}
        self.fs.pipe_file(f"{self.root}/{MARKER}", json.dumps(marker).encode())


def resolve_uri(uri: str, spec_dir: Path | None) -> str:
    """A relative path resolves against spec_dir (the YAML file's folder); URIs stay."""
    if "://" not in uri and not Path(uri).is_absolute() and spec_dir is not None:
        return str((spec_dir / uri).resolve())
    return uri


def store_for(uri: str | None, spec_dir: Path | None) -> CheckpointStore | None:
    """The store of spec.checkpoint.uri (a relative path resolves against spec_dir)."""
    return CheckpointStore(resolve_uri(uri, spec_dir)) if uri else None


def fetch_newest(
    store: CheckpointStore | None, fingerprint: str, directory: Path, local: str | None
) -> str | None:
    """The checkpoint to resume from: the store's newest complete one when it is newer
    than the local one (downloaded into `directory`), else the local one."""
    if store is None:
        return local
    newest = store.newest(fingerprint)
    local_step = step_of(local) if local else None
    if newest is None or (local_step is not None and local_step >= newest[0]):
        return local
    log.info("resuming from %s in %s", newest[1], store.uri)
    return str(store.download(newest[1], directory))
