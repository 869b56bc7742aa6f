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


class Publisher:
    """Publishes each checkpoint the Trainer saves to the store (None: local only)."""

    def __init__(self, store: CheckpointStore | None, fingerprint: str, keep: int) -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.keep = keep
        self.published: list[str] = []

    def publish(self, trainer: Trainer) -> None:
        if self.store is None:
            return
        last = get_last_checkpoint(trainer.args.output_dir)
        if last is None:
            return
        args = trainer.args
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


class SaveOnSigterm(TrainerCallback):
    """SIGTERM during training: save the last completed step, publish it, exit 143."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.trainer: Trainer | None = None
        self.saved_at: float | None = None

    def _stop_if_asked(self, args: TrainingArguments, state: TrainerState) -> None:
        if not _any_rank(signals.requested(), args):
            return
        trainer = self.trainer
        if trainer is not None and state.global_step > 0 and trainer.model is not None:
            started = time.monotonic()
            trainer.model.zero_grad(set_to_none=True)  # a half-accumulated step is dropped
            latest = get_last_checkpoint(args.output_dir)
            if latest is None or step_of(latest) != state.global_step:
                trainer._save_checkpoint(trainer.model, trial=None)
            self.publisher.publish(trainer)
            self.saved_at = time.monotonic()
            log.warning(
                "SIGTERM: saved checkpoint-%d in %.1f s",
                state.global_step,
                self.saved_at - started,
            )
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


def store_for(uri: str | None, spec_dir: Path | None) -> CheckpointStore | None:
    """The store of spec.checkpoint.uri (a relative path resolves against spec_dir)."""
    if not uri:
        return None
    if "://" not in uri and not Path(uri).is_absolute() and spec_dir is not None:
        uri = str((spec_dir / uri).resolve())
    return CheckpointStore(uri)


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
