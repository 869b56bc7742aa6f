"""The artifact directory of a run: names shared by the code that writes it (`run`) and
the code that reads it (`predict`, a distillation teacher), so that readers need not
import `run`; and what makes a directory safe to reuse (docs/trainer.md, "The run
directory"):

- `prepare`: create it, or say in one line why it cannot be (a file, read-only, ...);
- `RunLock`: an exclusive flock on `.finetune.lock` inside it, holding the pid, host,
  start time and command of the run, so a second run into the same directory is
  refused at once, naming the run that holds it;
- `RunRecords`: a failed run never overwrites an earlier successful run's records. When
  the directory holds a finished run (metrics.json phase Succeeded), the new run's live
  state goes to `run-in-progress.json`; on success it becomes metrics.json, on failure
  `failed-<UTC time>.json`, beside the earlier run's files, which stay as they were.
- `describe`: which run `predict` reads (directory, finish time, a later failure).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from finetune_trainer.errors import RunDirError

RUN_INFO = "run.json"  # task, format, model folder, labels, maxLength
METRICS = "metrics.json"  # = run.METRICS_FILE
LOCK_FILE = ".finetune.lock"
IN_PROGRESS = "run-in-progress.json"
FAILED_GLOB = "failed-*.json"
# Set by a parent that holds the lock for its worker processes (`finetune run`, nodes > 1).
LOCK_HELD_ENV = "FINETUNE_RUN_DIR_LOCKED"


class RunDirBusy(RunDirError):
    """Another run holds the directory's lock."""


def _utc(seconds: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def prepare(output_dir: Path, what: str = "output directory") -> None:
    """Create `output_dir` (and parents) and check it is a writable directory, or raise a
    RunDirError naming it and the reason. `what` names where the path came from."""
    where = f"{what} {output_dir}"
    if output_dir.exists() and not output_dir.is_dir():
        raise RunDirError(f"{where}: is a file, not a directory; give a directory path")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunDirError(
            f"{where}: a part of the path is a file, not a directory; give a directory path"
        ) from None
    except OSError as err:
        raise RunDirError(f"{where}: cannot create it: {_reason(err)}") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"{where}: not writable by this user; {_elsewhere()}")


def _reason(err: OSError) -> str:
    text = err.strerror or str(err)
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{text}; {_elsewhere()}"
    if err.errno == errno.ENOSPC:
        return f"{text}; free some space or choose another place with --output DIR"
    return text


def _elsewhere() -> str:
    return "choose a writable place with --output DIR (or spec.output.path)"


@dataclass(frozen=True)
class Holder:
    pid: int | None
    host: str
    started: str
    command: str

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid else "a process"
        text = f"{who} on {self.host or 'an unknown host'}, started {self.started or '?'}"
        return text + (f" ({self.command})" if self.command else "")


def _holder(text: str) -> Holder:
    try:
        doc: dict[str, Any] = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        doc = {}
    pid = doc.get("pid")
    return Holder(
        pid=int(pid) if isinstance(pid, int) else None,
        host=str(doc.get("host") or ""),
        started=str(doc.get("started") or ""),
        command=str(doc.get("command") or ""),
    )


class RunLock:
    """An exclusive, non-blocking flock on `<dir>/.finetune.lock` for the life of a run.

    The kernel drops it when the process ends, however it ends, so a crashed run never
    leaves a stale lock; the file's content (pid, host, start, command) only names the
    holder in the refusal. Where the filesystem has no locks (some network mounts), the
    run goes on with a warning."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        try:
            f = self.path.open("a+")
        except OSError as err:
            raise RunDirError(
                f"output directory {self.path.parent}: cannot create {LOCK_FILE}: {_reason(err)}"
            ) from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _holder(f.read())
            f.close()
            raise RunDirBusy(
                f"output directory {self.path.parent} is in use by another run: "
                f"{holder.describe()}; wait for it to end, or write elsewhere with "
                "--output DIR"
            ) from None
        except OSError as err:  # ENOLCK, EOPNOTSUPP: a filesystem without flock
            print(
                f"warning: cannot lock {self.path} ({err.strerror}); nothing stops a second "
                "run into this directory",
                file=sys.stderr,
            )
        f.seek(0)
        f.truncate()
        f.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": _utc(),
                    "command": " ".join(sys.argv),
                }
            )
        )
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.truncate(0)
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


@contextlib.contextmanager
def locked(output_dir: Path, *, main: bool = True) -> Iterator[None]:
    """Hold the run lock on `output_dir` for the block: on the main process only, and not
    when a parent process holds it for this run's workers (LOCK_HELD_ENV)."""
    held_by_parent = os.environ.get(LOCK_HELD_ENV) == str(output_dir.resolve())
    if not main or held_by_parent:
        yield
        return
    lock = RunLock(output_dir)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def read_state(output_dir: Path) -> dict[str, Any] | None:
    """metrics.json of the directory, or None when absent or unreadable."""
    try:
        doc = json.loads((output_dir / METRICS).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def earlier_success(output_dir: Path) -> dict[str, Any] | None:
    """The records of a finished, successful run in the directory, if there is one."""
    state = read_state(output_dir)
    if state and state.get("phase") == "Succeeded" and (output_dir / RUN_INFO).is_file():
        return state
    return None


class RunRecords:
    """Where a run's live state (metrics.json's content) goes, and where it ends up."""

    def __init__(self, output_dir: Path) -> None:
        self.dir = output_dir
        self.earlier = earlier_success(output_dir)
        self.live = output_dir / (IN_PROGRESS if self.earlier else METRICS)
        self.failure_file: Path | None = None

    def succeeded(self) -> None:
        """The run's state becomes the directory's metrics.json."""
        if self.live.name != METRICS and self.live.is_file():
            os.replace(self.live, self.dir / METRICS)

    def failed(self) -> Path | None:
        """Keep the earlier success's records: the failure's state goes beside them, as
        failed-<UTC time>.json (returned); None when there was nothing to keep."""
        if self.live.name == METRICS or not self.live.is_file():
            return None
        target = self.dir / f"failed-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        os.replace(self.live, target)
        self.failure_file = target
        return target

    def failure_note(self) -> str | None:
        """One line for the terminal after a failure that kept an earlier run's records."""
        if self.failure_file is None or self.earlier is None:
            return None
        finished = self.earlier.get("completionTime") or "at an unknown time"
        return (
            f"finetune: {self.dir} still holds the earlier successful run (finished "
            f"{finished}); this failure is recorded in {self.failure_file.name} beside it"
        )


def record_failure(records: RunRecords) -> None:
    """After a failed run: move its state beside an earlier success's, and say so."""
    try:
        records.failed()
    except OSError as err:  # a full or vanished disk must not hide the run's own error
        print(f"warning: cannot keep the failed run's state: {err}", file=sys.stderr)
        return
    note = records.failure_note()
    if note:
        print(note, file=sys.stderr, flush=True)


def describe(run_dir: Path) -> str:
    """`predict`'s first line: which run it reads, and whether a later one failed."""
    state = read_state(run_dir) or {}
    phase = state.get("phase")
    finished = state.get("completionTime")
    if phase == "Succeeded":
        line = f"finetune: reading the run in {run_dir}, finished {finished or '(time unknown)'}"
    else:
        line = f"finetune: reading the model in {run_dir} (metrics.json: {phase or 'missing'})"
    failures = sorted(run_dir.glob(FAILED_GLOB))
    if failures and (not finished or failures[-1].stat().st_mtime > _epoch(finished)):
        line += f"; a later run failed ({failures[-1].name}) and left it as it was"
    if (run_dir / IN_PROGRESS).is_file():
        holder = lock_holder(run_dir)
        if holder is not None:
            line += f"; a newer run is in progress ({holder.describe()})"
        else:
            line += f"; a newer run stopped without finishing ({IN_PROGRESS})"
    return line


def lock_holder(run_dir: Path) -> Holder | None:
    """Who holds the directory's run lock now, or None when nobody does."""
    try:
        with (run_dir / LOCK_FILE).open() as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _holder(f.read())
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError:
        pass
    return None


def _epoch(utc: str) -> float:
    try:
        return float(time.mktime(time.strptime(utc, "%Y-%m-%dT%H:%M:%SZ"))) - time.timezone
    except ValueError:
        return 0.0
