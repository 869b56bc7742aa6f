"""Pure core: observed Job + Pods -> the FineTuneJob's phase, conditions and message.

Everything here is a function of its arguments (the clock is passed in as `now`),
so a table of real-looking Job/Pod statuses pins the behaviour down in unit tests.
The status is built as the typed `finetune_api.models.FineTuneJobStatus` (conditions
from the one builder, `finetune_api.conditions.condition`) and sent as the merge patch
of what changed.

The operator owns these status keys: phase, conditions, observedGeneration,
jobName, startTime, completionTime, message. The trainer owns progress,
metrics, history and artifacts (it patches them live); the operator only fills
metrics/artifacts in from the termination message when the live patches did
not land, so a finished job's numbers survive a lost patch and a restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from finetune_api.conditions import BUDGET_EXHAUSTED, TRAINER_REASONS, condition, safe_reason
from finetune_api.models import (
    Condition,
    FineTuneJobSpec,
    FineTuneJobStatus,
    Phase,
    ServedModel,
    Workers,
)
from finetune_operator.config import CONTAINER_NAME, DEFAULT_OUTPUT_PATH

CONDITION_TYPES = ("Ready", "Succeeded", "Failed", "Suspended")
OOM_CONDITION = "OOMRecovery"  # only while an out-of-memory retry Job runs (oom.py)
PROMOTED_CONDITION = "Promoted"  # a succeeded run with spec.promote (promotion.py)
# Waiting reasons that mean "this will not start until someone fixes something".
IMAGE_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")
CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
PROBLEM_REASONS = frozenset(
    {*IMAGE_REASONS, *CONFIG_REASONS, "Unschedulable", "JobNameConflict", "CrashLoopBackOff"}
)
STARTING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})
# Status keys only the operator writes (the trainer owns progress/metrics/history/artifacts).
OWNED_KEYS = (
    "phase",
    "conditions",
    "observedGeneration",
    "jobName",
    "startTime",
    "completionTime",
    "message",
    "workers",
    "inferenceService",
)
MAX_MESSAGE = 1024


@dataclass
class Derived:
    """What the observed objects say about a FineTuneJob."""

    phase: Phase
    reason: str
    message: str
    start_time: str | None = None
    completion_time: str | None = None
    # From the trainer's termination message, used only to fill in missing status.
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    # Multi-node runs: trainer pods ready (the Job's status.ready) of spec.resources.nodes.
    workers: Workers | None = None
    # While an out-of-memory retry Job runs (oom.py): the OOMRecovery condition's
    # (reason, message).
    oom_retry: tuple[str, str] | None = None
    # spec.promote on a succeeded run: the Promoted condition's (status, reason, message)
    # and the InferenceService it created (promotion.py).
    promoted: tuple[bool, str, str] | None = None
    served: ServedModel | None = None


@dataclass
class Milestone:
    """A Kubernetes Event to post on the FineTuneJob."""

    type: str  # Normal | Warning
    reason: str
    message: str


# --------------------------------------------------------------------------- pods


def _trainer_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == CONTAINER_NAME:
            return dict(cs)
    return dict(statuses[0]) if statuses else {}


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    cs = _trainer_status(pod)
    term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get(
        "terminated"
    )
    return dict(term) if term else None


def _waiting(pod: dict[str, Any]) -> dict[str, Any] | None:
    cs = _trainer_status(pod)
    waiting = (cs.get("state") or {}).get("waiting")
    return dict(waiting) if waiting else None


def _is_running(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    cs = _trainer_status(pod)
    return status.get("phase") == "Running" and bool((cs.get("state") or {}).get("running"))


def _sorted_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pods, key=lambda p: str(p.get("metadata", {}).get("creationTimestamp") or ""))


def parse_termination_message(text: str | None) -> dict[str, Any] | None:
    """The trainer's JSON termination message, or None for anything else (e.g. log lines)."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and ("phase" in data or "metrics" in data) else None


def _tail(text: str, lines: int = 5) -> str:
    tail = "\n".join(line for line in text.strip().splitlines()[-lines:])
    return tail[-600:]


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _failure_detail(pod: dict[str, Any], spec: FineTuneJobSpec | None) -> tuple[str, str] | None:
    """(reason, message) for a trainer pod that failed, or None when it did not."""
    status = pod.get("status") or {}
    term = _terminated(pod)
    if term is None:
        if status.get("phase") == "Failed" and status.get("reason"):
            reason = str(status["reason"])
            detail = f"The trainer pod failed ({reason}): {status.get('message', '')}".strip()
            return safe_reason(reason), detail.rstrip(":")
        return None
    reason = str(term.get("reason") or "Error")
    code = term.get("exitCode")
    if reason == "Completed" and code in (0, None):
        return None
    if reason == "OOMKilled":
        memory = spec.resources.memory if spec else "the memory limit"
        return "OOMKilled", (
            f"The trainer ran out of memory and was killed (OOMKilled, limit {memory}). "
            "Raise spec.resources.memory, or lower hyperparameters.batchSize or "
            "hyperparameters.maxLength (use gradientAccumulationSteps to keep the "
            "effective batch size)."
        )
    text = str(term.get("message") or "")
    report = parse_termination_message(text)
    if code == 137 and not (report and report.get("message")):
        return "Killed", (
            "The trainer was killed (SIGKILL, exit code 137) without a report: usually the "
            "memory limit (raise spec.resources.memory) or an eviction."
        )
    if report is not None and report.get("message"):
        reason = safe_reason(str(report["reason"])) if report.get("reason") else "TrainerError"
        return reason, f"The trainer failed: {report['message']}"
    if text.strip():
        return "TrainerError", (
            f"The trainer exited with code {code}. Last log lines:\n{_tail(text)}"
        )
    return "TrainerError", f"The trainer exited with code {code} ({reason}); see the pod logs."


def _pending_detail(pod: dict[str, Any], image: str) -> tuple[str, str] | None:
    """(reason, message) for a pod that cannot start for a reason the user must fix."""
    waiting = _waiting(pod)
    if waiting:
        reason = str(waiting.get("reason") or "")
        detail = str(waiting.get("message") or "").strip()
        if reason in IMAGE_REASONS:
            return reason, (
                f"Cannot pull the trainer image {image!r} ({reason}"
                f"{': ' + detail if detail else ''}). Check spec.image (or the operator's "
                "--trainer-image), that the tag exists, and the registry credentials "
                "(imagePullSecrets)."
            )
        if reason in CONFIG_REASONS:
            return reason, (
                f"The trainer container cannot be created ({reason}"
                f"{': ' + detail if detail else ''}). Check that every Secret in spec.secrets "
                "and every PVC in spec.volumes / spec.output.pvc exists in the namespace."
            )
        if reason and reason not in STARTING_REASONS:
            return safe_reason(reason), (
                f"The trainer container is waiting ({reason}{': ' + detail if detail else ''})."
            )
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            detail = str(cond.get("message") or "").strip()
            return "Unschedulable", (
                f"No node can run the trainer pod yet: {detail or 'unschedulable'}. Check "
                "spec.resources (gpus, cpu, memory), nodeSelector and tolerations against "
                "the cluster's nodes."
            )
    return None


# --------------------------------------------------------------------------- job


def _job_condition(job: dict[str, Any], *types: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in types and cond.get("status") == "True":
            return dict(cond)
    return None


def _report_from_pods(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    for pod in reversed(_sorted_pods(pods)):
        term = _terminated(pod)
        if term is not None:
            report = parse_termination_message(term.get("message"))
            if report is not None:
                return report
    return None


def _numbers(data: Any) -> dict[str, float]:
    if not isinstance(data, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in data.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _strings(data: Any) -> dict[str, str]:
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str) and v}


def derive(
    spec: FineTuneJobSpec,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    *,
    kueue_queue: str | None = None,
    default_image: str = "",
) -> Derived:
    """The FineTuneJob's phase, reason and message from its Job and the Job's pods."""
    if job is None:
        if spec.suspend:
            return Derived(Phase.suspended, "Suspended", "spec.suspend is true; no Job started.")
        return Derived(Phase.pending, "Creating", "Creating the trainer Job.")
    seen = _Seen(spec, job, _sorted_pods(pods), spec.image or default_image)
    derived = _from_job(seen, kueue_queue)
    if spec.resources.nodes > 1:
        ready = int(seen.jstatus.get("ready") or 0)
        derived.workers = Workers(ready=ready, total=spec.resources.nodes)
    return derived


def _from_job(seen: _Seen, kueue_queue: str | None) -> Derived:
    done = _job_condition(seen.job, "Complete", "SuccessCriteriaMet")
    # An Indexed Job (nodes > 1) succeeds when every index has.
    if done is not None or (seen.jstatus.get("succeeded") or 0) >= seen.spec.resources.nodes:
        return _succeeded(seen, done)
    failed = _job_condition(seen.job, "Failed", "FailureTarget")
    if failed is not None:
        return _failed(seen, failed)
    suspended = _suspended(seen, kueue_queue)
    return suspended if suspended is not None else _active(seen)


@dataclass
class _Seen:
    """What derive reads, with the trainer's report (termination message) parsed once."""

    spec: FineTuneJobSpec
    job: dict[str, Any]
    pods: list[dict[str, Any]]  # oldest first
    image: str
    metrics: dict[str, float] = field(init=False)
    artifacts: dict[str, str] = field(init=False)
    note: str = field(init=False)  # a successful run's note (e.g. what tracking lost)
    report: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        report = _report_from_pods(self.pods) or {}
        self.report = report
        self.metrics = _numbers(report.get("metrics"))
        self.artifacts = _strings(report.get("artifacts"))
        succeeded = report.get("phase") == "Succeeded"
        self.note = str(report.get("message") or "") if succeeded else ""

    @property
    def jstatus(self) -> dict[str, Any]:
        return dict(self.job.get("status") or {})

    def out(
        self, phase: Phase, reason: str, message: str, completion: str | None = None
    ) -> Derived:
        start = self.jstatus.get("startTime")
        return Derived(
            phase, reason, _shorten(message), start, completion, self.metrics, self.artifacts
        )


def _succeeded(seen: _Seen, done: dict[str, Any] | None) -> Derived:
    completion = seen.jstatus.get("completionTime") or (done or {}).get("lastTransitionTime")
    if budget_exhausted(seen.report):
        # spec.budget spent: the trainer saved a checkpoint and stopped (exit 0)
        message = str(seen.report.get("message") or "budget exhausted")
        return seen.out(Phase.suspended, BUDGET_EXHAUSTED, message)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(seen.metrics.items())[:6])
    output = seen.spec.output
    where = (output.path or DEFAULT_OUTPUT_PATH) + (f" (PVC {output.pvc})" if output.pvc else "")
    message = f"Training succeeded; artifacts in {where}."
    if summary:
        message += f" {summary}."
    if seen.note:
        message += f" {seen.note}"
    return seen.out(Phase.succeeded, "Succeeded", message, completion)


def budget_exhausted(report: dict[str, Any]) -> bool:
    """The trainer's termination message says it stopped at spec.budget."""
    return report.get("phase") == "Suspended" and report.get("reason") == BUDGET_EXHAUSTED


def _failed(seen: _Seen, failed: dict[str, Any]) -> Derived:
    spec, completion = seen.spec, failed.get("lastTransitionTime")
    job_reason = str(failed.get("reason") or "Failed")
    pod_detail = next(
        (
            d
            for p in reversed(seen.pods)
            if (d := _failure_detail(p, spec) or _pending_detail(p, seen.image))
        ),
        None,
    )
    if job_reason == "DeadlineExceeded":
        message = (
            f"The Job ran longer than spec.activeDeadlineSeconds "
            f"({spec.active_deadline_seconds} s) and was stopped. Raise activeDeadlineSeconds, "
            "or reduce hyperparameters.epochs / maxSteps or dataset.maxSamples."
        )
        if pod_detail and pod_detail[0] in PROBLEM_REASONS:
            message += f" The pod never started: {pod_detail[1]}"
        return seen.out(Phase.failed, "DeadlineExceeded", message, completion)
    if job_reason == "BackoffLimitExceeded":
        attempts = seen.jstatus.get("failed") or spec.backoff_limit + 1
        last = pod_detail[1] if pod_detail else "see the pod logs."
        # A specific cause (OOMKilled, or the trainer's own, e.g. ChatTemplate) names the
        # failure better than the Job controller's BackoffLimitExceeded.
        specific = pod_detail and pod_detail[0] in {"OOMKilled", *TRAINER_REASONS}
        reason = pod_detail[0] if pod_detail and specific else job_reason
        message = (
            f"The trainer failed {attempts} time(s); spec.backoffLimit ({spec.backoff_limit}) "
            f"is used up. Last attempt: {last}"
        )
        return seen.out(Phase.failed, reason, message, completion)
    if pod_detail:
        return seen.out(Phase.failed, pod_detail[0], pod_detail[1], completion)
    detail = str(failed.get("message") or "").strip()
    message = f"The Job failed ({job_reason}). {detail}".strip()
    return seen.out(Phase.failed, job_reason, message, completion)


def _suspended(seen: _Seen, kueue_queue: str | None) -> Derived | None:
    """Suspended, queued or resuming; None when the Job and the spec agree it runs."""
    if seen.job.get("spec", {}).get("suspend"):
        if seen.spec.suspend:
            message = "Suspended (spec.suspend is true); set it false to resume."
            return seen.out(Phase.suspended, "Suspended", message)
        if kueue_queue:
            message = f"Waiting for Kueue to admit the Job (queue {kueue_queue})."
            return seen.out(Phase.pending, "Queued", message)
        return seen.out(Phase.pending, "Resuming", "Resuming the suspended Job.")
    if seen.spec.suspend:
        return seen.out(Phase.suspended, "Suspending", "Suspending the Job (spec.suspend is true).")
    return None


def _active(seen: _Seen) -> Derived:
    """Running, or pending: blocked on something the user must fix, starting, or waiting."""
    spec, pods = seen.spec, seen.pods
    retries = seen.jstatus.get("failed") or 0
    retry_note = ""
    if retries:
        last_failed = next(
            (d for d in (_failure_detail(p, spec) for p in reversed(pods)) if d), None
        )
        retry_note = f" Attempt {retries + 1} of {spec.backoff_limit + 1}" + (
            f"; the last one failed: {last_failed[1]}" if last_failed else "."
        )
    live = [p for p in pods if (p.get("status") or {}).get("phase") in ("Pending", "Running")]
    if any(_is_running(p) for p in live) or (seen.jstatus.get("ready") or 0) > 0:
        return seen.out(Phase.running, "Running", "The trainer is running." + retry_note)
    for pod in reversed(live or pods[-1:]):
        blocked = _pending_detail(pod, seen.image)
        if blocked:
            return seen.out(Phase.pending, blocked[0], blocked[1] + retry_note)
    if (seen.jstatus.get("active") or 0) > 0 or live:
        return seen.out(Phase.pending, "Starting", "The trainer pod is starting." + retry_note)
    message = "Waiting for the trainer pod to be scheduled." + retry_note
    return seen.out(Phase.pending, "JobCreated", message)


def invalid_spec(message: str) -> Derived:
    return Derived(
        Phase.failed, "InvalidSpec", _shorten(f"Invalid spec; fix it and re-apply: {message}")
    )


# --------------------------------------------------------------------------- status


def build_conditions(
    previous: list[dict[str, Any]],
    derived: Derived,
    generation: int | None,
    now: str,
) -> list[Condition]:
    """metav1.Conditions; lastTransitionTime moves only when a condition's status flips."""
    phase = derived.phase
    truth = {
        "Ready": phase is Phase.succeeded,
        "Succeeded": phase is Phase.succeeded,
        "Failed": phase is Phase.failed,
        "Suspended": phase is Phase.suspended,
    }
    prev = [c for c in previous if isinstance(c, dict)]
    out = []
    for ctype in CONDITION_TYPES:
        relevant = ctype == "Ready" or truth[ctype]
        reason = derived.reason if relevant else phase.value
        message = derived.message if relevant else ""
        out.append(
            condition(
                ctype, truth[ctype], reason, message, generation=generation, now=now, previous=prev
            )
        )
    if derived.oom_retry is not None:
        reason, message = derived.oom_retry
        out.append(
            condition(
                OOM_CONDITION, True, reason, message, generation=generation, now=now, previous=prev
            )
        )
    if derived.promoted is not None:
        promoted, reason, message = derived.promoted
        out.append(
            condition(
                PROMOTED_CONDITION,
                promoted,
                reason,
                _shorten(message),
                generation=generation,
                now=now,
                previous=prev,
            )
        )
    return out


def desired_status(
    previous: dict[str, Any],
    derived: Derived,
    *,
    generation: int | None,
    job_name: str | None,
    now: str,
) -> FineTuneJobStatus:
    """The operator's part of the status (OWNED_KEYS), as the typed model."""
    return FineTuneJobStatus(
        phase=derived.phase,
        conditions=build_conditions(previous.get("conditions") or [], derived, generation, now),
        observed_generation=generation,
        job_name=job_name,
        start_time=derived.start_time,
        completion_time=derived.completion_time,
        message=derived.message,
        workers=derived.workers,
        inference_service=derived.served,
    )


def status_patch(
    previous: dict[str, Any],
    derived: Derived,
    *,
    generation: int | None,
    job_name: str | None,
    now: str,
) -> dict[str, Any]:
    """The minimal merge patch for `status` (empty when nothing changed): the operator's
    keys that differ (a key it no longer sets is removed with null), plus metrics and
    artifacts from the termination message that the trainer's live patches did not
    deliver (never overwriting them)."""
    wire = desired_status(
        previous, derived, generation=generation, job_name=job_name, now=now
    ).dump()
    patch = {
        k: wire.get(k)
        for k in OWNED_KEYS
        if previous.get(k) != wire.get(k) and (k in wire or k in previous)
    }
    prev_metrics = previous.get("metrics") or {}
    missing = {k: v for k, v in derived.metrics.items() if k not in prev_metrics}
    if missing:
        patch["metrics"] = FineTuneJobStatus(metrics=missing).dump()["metrics"]
    prev_artifacts = previous.get("artifacts") or {}
    missing_art = {k: v for k, v in derived.artifacts.items() if k not in prev_artifacts}
    if missing_art:
        patch["artifacts"] = FineTuneJobStatus(artifacts=missing_art).dump()["artifacts"]
    return patch


def milestones(
    previous: dict[str, Any], derived: Derived, metrics: dict[str, Any]
) -> list[Milestone]:
    """Events for a phase change (or a new blocking problem) between two statuses."""
    old_phase = previous.get("phase")
    old_reason = next(
        (c.get("reason") for c in previous.get("conditions") or [] if c.get("type") == "Ready"),
        None,
    )
    phase = derived.phase
    events: list[Milestone] = []
    if old_phase != phase.value:
        if phase is Phase.running:
            reason = "Resumed" if old_phase == Phase.suspended.value else "Running"
            events.append(Milestone("Normal", reason, "The trainer pod is running."))
        elif phase is Phase.succeeded:
            summary = ", ".join(
                f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if isinstance(v, int | float)
            )
            events.append(
                Milestone(
                    "Normal",
                    "Succeeded",
                    "Training succeeded" + (f": {summary}" if summary else "."),
                )
            )
        elif phase is Phase.failed:
            events.append(Milestone("Warning", derived.reason, derived.message))
        elif phase is Phase.suspended:
            events.append(Milestone("Normal", "Suspended", derived.message))
        elif old_phase == Phase.suspended.value:
            events.append(Milestone("Normal", "Resumed", derived.message))
    if (
        phase is Phase.pending
        and derived.reason in PROBLEM_REASONS
        and derived.reason != old_reason
    ):
        events.append(Milestone("Warning", derived.reason, derived.message))
    return events
