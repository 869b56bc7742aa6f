"""Progress reporting: one small interface (Reporter -> Sinks) and its sinks.

The Reporter keeps the run's state (progress, latest metrics, bounded history,
artifacts, phase) and hands every event to each sink. A sink that fails logs a
warning and never stops training. Sinks:

- `MetricsFileSink`: the run's metrics.json (always written by `run`);
- `StdoutSink`: one line per event (`finetune run`, pod logs);
- `KubernetesSink`: merge-patches the owning FineTuneJob's status (docs/CONTRACTS.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_api.models import FineTuneJobStatus, Phase, Progress

log = logging.getLogger(__name__)

HISTORY_LIMIT = 100
EventKind = Literal["start", "progress", "evaluation", "end"]

# Trainer metric names -> status.metrics keys (camelCase, docs/CONTRACTS.md).
METRIC_NAMES = {
    "loss": "trainLoss",
    "train_loss": "trainLoss",
    "eval_loss": "evalLoss",
    "eval_accuracy": "accuracy",
    "eval_f1_macro": "f1Macro",
    "eval_perplexity": "perplexity",
    "train_samples_per_second": "samplesPerSecond",
    # preference tuning (TRL's DPO/ORPO): the training log's and the evaluation's
    **{
        f"{prefix}{trl_name}": name
        for trl_name, name in {
            "rewards/margins": "rewardMargin",
            "rewards/accuracies": "rewardAccuracy",
            "rewards/chosen": "chosenReward",
            "rewards/rejected": "rejectedReward",
            "logps/chosen": "chosenLogps",
            "logps/rejected": "rejectedLogps",
            "log_odds_ratio": "logOddsRatio",
        }.items()
        for prefix in ("", "eval_")
    },
}


def utc_now() -> str:
    """RFC 3339 UTC, to the second: status.startTime / completionTime form."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def status_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The camelCase subset of Trainer metrics the status carries (finite numbers only)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = METRIC_NAMES.get(key)
        if name and isinstance(value, int | float) and math.isfinite(value):
            out[name] = float(value)
    return out


@dataclass
class RunState:
    """What the sinks publish: the shape of status.progress/metrics/history/artifacts."""

    phase: str = "Running"
    progress: dict[str, float] = field(
        default_factory=lambda: {"epoch": 0.0, "step": 0, "totalSteps": 0}
    )
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    message: str = ""
    reason: str | None = None
    # metrics.json only (the status sink sends the keys the trainer owns, not these)
    start_time: str = field(default_factory=lambda: utc_now())
    completion_time: str | None = None

    def status(self) -> FineTuneJobStatus:
        """The status the trainer writes, as the API's typed model (one status contract:
        the operator and the sweep build the same models, the CRD is generated from them)."""
        times: dict[str, Any] = {"start_time": self.start_time}
        if self.completion_time is not None:
            times["completion_time"] = self.completion_time
        return FineTuneJobStatus(
            **times,
            phase=Phase(self.phase),
            progress=Progress(
                epoch=self.progress["epoch"],
                step=int(self.progress["step"]),
                total_steps=int(self.progress["totalSteps"]),
            ),
            metrics=dict(self.metrics),
            history=list(self.history),
            artifacts=dict(self.artifacts),
            message=self.message,
            **({"reason": self.reason} if self.reason else {}),
        )

    def as_dict(self) -> dict[str, Any]:
        """metrics.json: the wire form of `status()` (exactly the fields set above)."""
        return self.status().model_dump(by_alias=True, mode="json", exclude_unset=True)


@dataclass(frozen=True)
class Event:
    kind: EventKind
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


class Sink(Protocol):
    def emit(self, event: Event, state: RunState) -> None: ...


class Reporter:
    """Updates the run state and fans each event out to the sinks."""

    def __init__(self, sinks: Iterable[Sink] = (), clock: Callable[[], float] = time.monotonic):
        self.sinks = list(sinks)
        self.state = RunState()
        self.clock = clock
        self.last_event = clock()  # when the sinks last heard anything (heartbeat.py)
        self._lock = threading.RLock()  # the heartbeat thread publishes too

    def touch(self, now: float) -> None:
        self.last_event = now

    def _publish(self, event: Event) -> None:
        with self._lock:
            self.last_event = self.clock()
            for sink in self.sinks:
                try:
                    sink.emit(event, self.state)
                except Exception as err:  # a sink must never stop training
                    log.warning("report sink %s failed: %s", type(sink).__name__, err)

    def start(self, total_steps: int, message: str = "") -> None:
        self.state.progress["totalSteps"] = total_steps
        self._publish(Event("start", message=message))

    def progress(self, *, step: int, epoch: float, metrics: dict[str, float]) -> None:
        self.state.progress.update(step=step, epoch=round(epoch, 4))
        self.state.metrics.update(metrics)
        self._publish(Event("progress", metrics))

    def evaluation(self, *, step: int, epoch: float, metrics: dict[str, float]) -> None:
        self.state.progress.update(step=step, epoch=round(epoch, 4))
        self.state.metrics.update(metrics)
        entry: dict[str, float] = {"epoch": round(epoch, 4), "step": step, **metrics}
        self.state.history = [*self.state.history, entry][-HISTORY_LIMIT:]
        self._publish(Event("evaluation", metrics))

    def end(
        self,
        *,
        phase: str,
        metrics: dict[str, float] | None = None,
        artifacts: dict[str, str] | None = None,
        message: str = "",
        reason: str | None = None,
    ) -> None:
        self.state.phase = phase
        self.state.reason = reason
        self.state.completion_time = utc_now()
        self.state.metrics.update(metrics or {})
        self.state.artifacts.update(artifacts or {})
        self.state.message = message
        self._publish(Event("end", metrics or {}, message))


class MetricsFileSink:
    """Rewrites metrics.json (atomically) with the whole run state on every event."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def emit(self, event: Event, state: RunState) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state.as_dict(), indent=2, sort_keys=False))
        tmp.replace(self.path)


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


class StdoutSink:
    """One human-readable line per event; plays well with a tqdm progress bar."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def emit(self, event: Event, state: RunState) -> None:
        p = state.progress
        where = f"step {int(p['step'])}/{int(p['totalSteps'])} epoch {p['epoch']:.2f}"
        if event.kind == "start":
            line = f"[start] {event.message}".rstrip()
        elif event.kind == "end":
            # A failure's message is printed once, by whoever handles the error (CLI, image);
            # when nothing ran, that `error:` line is the whole story (no `[failed] step 0/0`).
            if state.phase == "Failed" and not p["step"]:
                return
            line = f"[{state.phase.lower()}] {where} {_fmt(state.metrics)}".rstrip()
        else:
            line = f"[{event.kind}] {where} {_fmt(event.metrics)}".rstrip()
        self._write(line)

    def _write(self, line: str) -> None:
        if self.stream is not None:
            print(line, file=self.stream, flush=True)
            return
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()


SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubernetesSink:
    """Merge-patches the owning FineTuneJob's status subresource over plain HTTP(S).

    Throttled to one patch per `interval` seconds for progress; evaluations and the end
    are always sent. Failures are logged by the Reporter and never stop training.
    """

    def __init__(
        self,
        *,
        api_url: str,
        namespace: str,
        name: str,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        interval: float = 5.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = (
            f"{api_url.rstrip('/')}/apis/finetune.dev/v1alpha1/namespaces/{namespace}"
            f"/finetunejobs/{name}/status"
        )
        self.token = token
        self.ssl_context = ssl_context
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self._last: float | None = None

    @classmethod
    def from_env(cls, *, namespace: str | None, name: str) -> KubernetesSink:
        """FINETUNE_KUBE_API_URL (plain http, no auth) or the in-cluster service account."""
        interval = float(os.environ.get("FINETUNE_STATUS_INTERVAL", "5"))
        url = os.environ.get("FINETUNE_KUBE_API_URL")
        sa_namespace = SA_DIR / "namespace"
        if namespace is None and sa_namespace.is_file():
            namespace = sa_namespace.read_text().strip()
        namespace = namespace or "default"
        if url:
            return cls(api_url=url, namespace=namespace, name=name, interval=interval)
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("neither FINETUNE_KUBE_API_URL nor in-cluster config is available")
        if ":" in host:
            host = f"[{host}]"
        token = (SA_DIR / "token").read_text().strip()
        context = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
        return cls(
            api_url=f"https://{host}:{port}",
            namespace=namespace,
            name=name,
            token=token,
            ssl_context=context,
            interval=interval,
        )

    def emit(self, event: Event, state: RunState) -> None:
        now = self.clock()
        throttled = self._last is not None and now - self._last < self.interval
        if event.kind == "progress" and throttled:
            return
        self._last = now
        # The keys the trainer owns (the operator owns phase, conditions and message).
        owned = {"progress", "metrics", "history"} | ({"artifacts"} if state.artifacts else set())
        status = state.status().model_dump(by_alias=True, mode="json", include=owned)
        body = json.dumps({"status": status}).encode()
        request = urllib.request.Request(self.url, data=body, method="PATCH")
        request.add_header("Content-Type", "application/merge-patch+json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=self.timeout, context=self.ssl_context):
            pass


def eval_metrics(values: dict[str, Any]) -> dict[str, float]:
    """Status metrics of one evaluation (perplexity from the loss for language models)."""
    values = dict(values)
    judged = "eval_accuracy" in values or "eval_rewards/margins" in values  # not an LM loss
    if "eval_loss" in values and not judged:
        values["eval_perplexity"] = math.exp(min(values["eval_loss"], 700.0))
    return status_metrics(values)


def earlier_evaluations(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """History entries for the evaluations in a resumed checkpoint's Trainer log."""
    entries = []
    for log_entry in log_history:
        mapped = eval_metrics({k: v for k, v in log_entry.items() if k.startswith("eval_")})
        if mapped:
            epoch = round(float(log_entry.get("epoch") or 0.0), 4)
            entries.append({"epoch": epoch, "step": log_entry.get("step", 0), **mapped})
    return entries[-HISTORY_LIMIT:]


class ReporterCallback(TrainerCallback):
    """Turns Trainer logs and evaluations into Reporter events."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.reporter.state.progress["totalSteps"] = state.max_steps
        if not self.reporter.state.history:  # resumed: keep the evaluations made before
            self.reporter.state.history = earlier_evaluations(state.log_history)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if logs and "loss" in logs:
            self.reporter.progress(
                step=state.global_step, epoch=state.epoch or 0.0, metrics=status_metrics(logs)
            )

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        mapped = eval_metrics(metrics or {})
        if mapped:  # e.g. the perplexity-before pass uses its own prefix: not history
            self.reporter.evaluation(
                step=state.global_step, epoch=state.epoch or 0.0, metrics=mapped
            )
