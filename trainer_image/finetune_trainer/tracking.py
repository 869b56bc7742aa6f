"""Experiment tracking: `spec.tracking.mlflow` as a report sink (report.py's interface).

- Params: the resolved spec (after `batchSize: auto`), flattened to dotted camelCase keys.
- Metrics: every training-log and evaluation point at its step, then the final metrics.
- Artifacts: metrics.json, the report files and plots in status.artifacts, and with
  `registerModel` the model (or adapter) folder as a new registered model version.

Training never waits on the server: the sink queues each event for one background
thread. Every HTTP request is bounded (`MLFLOW_HTTP_REQUEST_TIMEOUT`, default here 5 s,
`MLFLOW_HTTP_REQUEST_MAX_RETRIES` 0) and the first failure marks the server down: later
points are counted as lost instead of each waiting for a timeout. `finish` (before the
run's end is published) waits for the queue at most `FINETUNE_TRACKING_FLUSH_SECONDS`
(default 30) and returns a note of what was lost, which joins status.message.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_api.models import FineTuneJob, FineTuneJobSpec, MlflowTracking
from finetune_trainer.report import Event, RunState

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = "5"
FLUSH_SECONDS = 30.0
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on one param value
BATCH = 100  # MLflow's limit on params per log_batch
# status.artifacts keys logged as files (metrics.json goes at the end, once final)
FILE_ARTIFACTS = (
    "lossCurve",
    "confusionMatrix",
    "classificationReport",
    "sizeTable",
    "lmEval",
)
MODEL_DIRS = ("mergedModel", "model")
PARENT_TAG = "finetune.dev/sweep-parent"
SWEEP_LABEL = "finetune.dev/sweep"  # a sweep trial's label (docs/CONTRACTS.md)  # what registerModel uploads, first present wins


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}, "c": [..]} -> {"a.b": "1", "c": "[..]"} (MLflow params)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out |= flatten(item, f"{prefix}{key}.")
        return out
    text = str(value) if not isinstance(value, bool) else str(value).lower()
    return {prefix.rstrip("."): text[:PARAM_VALUE_LIMIT]}


def spec_params(spec: FineTuneJobSpec) -> dict[str, str]:
    """The resolved spec as params: defaults filled in, secrets' references only."""
    wire = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    return flatten(wire)


@dataclass
class Lost:
    """What did not reach the server."""

    points: int = 0
    artifacts: list[str] = field(default_factory=list)
    error: str = ""

    def note(self) -> str:
        if not (self.points or self.artifacts or self.error):
            return ""
        parts = [f"{self.points} metric points"] if self.points else []
        words = {"files": "the run's files", "register": "the model version", "end": "the end"}
        parts += [words.get(a, a) for a in dict.fromkeys(self.artifacts)]
        what = ", ".join(parts) or "some records"
        return f"tracking: {what} not logged to MLflow ({self.error})"


def _bounded_http() -> None:
    """Bound every MLflow request unless the user set their own limits."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", REQUEST_TIMEOUT_S)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


class MlflowSink:
    """A report sink (report.Sink) logging the run to MLflow from a background thread."""

    def __init__(
        self,
        config: MlflowTracking,
        *,
        experiment: str,
        run_name: str,
        tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
        sweep: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _bounded_http()
        from mlflow.tracking import MlflowClient

        self.config = config
        self.client = MlflowClient(tracking_uri=config.uri, registry_uri=config.uri)
        self.clock = clock
        self.lost = Lost()
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.model_version: str | None = None
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._down = False
        self._step = 0
        # what tracking cost this process: the training thread's time in `emit`, the
        # worker thread's CPU time and requests (benchmarks/tracking_overhead.py)
        self.emit_seconds = 0.0
        self.worker_cpu_seconds = 0.0
        self.requests = 0
        try:
            self.experiment_id = self._experiment(experiment)
            all_tags = {"mlflow.runName": run_name, **(tags or {})}
            if sweep and not parent_run_id:
                parent_run_id = self._sweep_parent(sweep)
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
            self.run_id = run.info.run_id
        except Exception as err:
            self._fail(err)
        self._thread = threading.Thread(target=self._work, name="mlflow-sink", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ what training calls

    @property
    def run_url(self) -> str | None:
        """The run's page on the tracking server (status.artifacts.trackingRun)."""
        if self.run_id is None:
            return None
        base = self.config.uri.rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def log_params(self, spec: FineTuneJobSpec) -> None:
        self._queue.put(("params", spec_params(spec)))

    def emit(self, event: Event, state: RunState) -> None:
        started = time.perf_counter()
        step = int(state.progress.get("step", 0))
        if event.kind in ("progress", "evaluation") and event.metrics:
            self._step = max(self._step, step)
            self._queue.put(("metrics", (step, dict(event.metrics))))
        elif event.kind == "end":
            self._queue.put(("end", (state.phase, state.artifacts.get("metrics"))))
        self.emit_seconds += time.perf_counter() - started

    def finish(self, final: dict[str, float], artifacts: dict[str, str]) -> dict[str, str]:
        """Final metrics, files and the registered model; waits at most the flush bound.
        Returns the status.artifacts entries (trackingRun, modelVersion)."""
        self._queue.put(("metrics", (self._step, dict(final))))
        self._queue.put(("files", dict(artifacts)))
        if self.config.register_model:
            self._queue.put(("register", dict(artifacts)))
        self._wait(float(os.environ.get("FINETUNE_TRACKING_FLUSH_SECONDS", FLUSH_SECONDS)))
        out: dict[str, str] = {}
        if self.run_url:
            out["trackingRun"] = self.run_url
        if self.model_version:
            out["modelVersion"] = self.model_version
        return out

    def close(self, timeout: float = 10.0) -> None:
        """After the end event: metrics.json and the run's status, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def note(self) -> str:
        return self.lost.note()

    # ------------------------------------------------------------------ the worker thread

    def _wait(self, seconds: float) -> None:
        deadline = self.clock() + seconds
        while self.clock() < deadline:
            if self._queue.unfinished_tasks == 0:
                return
            time.sleep(0.05)
        pending = self._drain()
        self._fail(TimeoutError(f"server slower than {seconds:.0f} s"), points=pending)

    def _drain(self) -> int:
        points = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return points
            if item is not None and item[0] == "metrics":
                points += len(item[1][1])
            self._queue.task_done()

    def _fail(self, err: BaseException, points: int = 0, artifact: str | None = None) -> None:
        if not self._down:
            log.warning("MLflow tracking at %s failed: %s", self.config.uri, err)
        self._down = True
        self.lost.points += points
        if artifact:
            self.lost.artifacts.append(artifact)
        if not self.lost.error:
            self.lost.error = f"{type(err).__name__}: {err}"[:300]

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._handle(*item)
            finally:
                self.worker_cpu_seconds = time.thread_time()
                self._queue.task_done()

    def _handle(self, kind: str, payload: Any) -> None:
        if self._down or self.run_id is None:
            if kind == "metrics":
                self.lost.points += len(payload[1])
            elif kind in ("files", "register", "end"):
                self._fail(RuntimeError("server unreachable"), artifact=kind)
            return
        try:
            self.requests += 1
            self._send(kind, payload)
        except Exception as err:
            self._fail(
                err,
                points=len(payload[1]) if kind == "metrics" else 0,
                artifact=None if kind == "metrics" else kind,
            )

    def _send(self, kind: str, payload: Any) -> None:
        from mlflow.entities import Metric, Param

        assert self.run_id is not None
        if kind == "params":
            params = [Param(k, v) for k, v in payload.items()]
            for i in range(0, len(params), BATCH):
                self.client.log_batch(self.run_id, params=params[i : i + BATCH])
        elif kind == "metrics":
            step, values = payload
            stamp = int(time.time() * 1000)
            metrics = [Metric(k, float(v), stamp, step) for k, v in values.items()]
            self.client.log_batch(self.run_id, metrics=metrics)
        elif kind == "files":
            for key in FILE_ARTIFACTS:
                path = payload.get(key)
                if path and Path(path).is_file():
                    self.client.log_artifact(self.run_id, path)
        elif kind == "register":
            self._register(payload)
        elif kind == "end":
            phase, metrics_file = payload
            if metrics_file and Path(metrics_file).is_file():
                self.client.log_artifact(self.run_id, metrics_file)
            self.client.set_terminated(
                self.run_id, "FINISHED" if phase == "Succeeded" else "FAILED"
            )

    def _register(self, artifacts: dict[str, str]) -> None:
        name = self.config.register_model
        assert name and self.run_id is not None
        folder = next((artifacts[k] for k in MODEL_DIRS if k in artifacts), None)
        if folder is None or not Path(folder).is_dir():
            raise FileNotFoundError("no model folder to register")
        self.client.log_artifacts(self.run_id, folder, artifact_path="model")
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as err:
            if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
                raise
        run = self.client.get_run(self.run_id)
        version = self.client.create_model_version(
            name, source=f"{run.info.artifact_uri}/model", run_id=self.run_id
        )
        self.model_version = f"models:/{name}/{version.version}"

    def _sweep_parent(self, sweep: str) -> str:
        """The sweep's parent run (tag finetune.dev/sweep-parent), created by its first
        trial; trials are its child runs. (Trials starting at the same moment on a cluster
        may each create one: the parent is found, not locked.)"""
        assert self.experiment_id is not None
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{sweep}'",
            max_results=1,
        )
        if found:
            return str(found[0].info.run_id)
        tags = {"mlflow.runName": sweep, PARENT_TAG: sweep}
        parent = self.client.create_run(self.experiment_id, run_name=sweep, tags=tags)
        self.client.set_terminated(parent.info.run_id, "FINISHED")
        return str(parent.info.run_id)

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        return str(self.client.create_experiment(name))


def attach(job: FineTuneJob, *, reporter: Any) -> MlflowSink | None:
    """The MLflow sink for `spec.tracking.mlflow` (None without it), added to the
    reporter's sinks; creating the run costs at most a few bounded requests. A sweep
    trial (label finetune.dev/sweep) is a child run of its sweep's parent run."""
    spec, meta = job.spec, job.metadata
    config = spec.tracking.mlflow if spec.tracking else None
    if config is None:
        return None
    sweep = meta.labels.get(SWEEP_LABEL)
    tags = {"finetune.dev/job": meta.name, "finetune.dev/task": spec.task.value}
    sink = MlflowSink(
        config,
        experiment=config.experiment or meta.namespace or "default",
        run_name=meta.name,
        tags=tags | ({SWEEP_LABEL: sweep} if sweep else {}),
        parent_run_id=os.environ.get("FINETUNE_TRACKING_PARENT_RUN") or None,
        sweep=sweep,
    )
    sink.log_params(spec)
    reporter.sinks.append(sink)
    return sink
