"""Pure core: out-of-memory recovery across Jobs (trainer pods and Job -> retry decision).

When a trainer pod of the current Job was OOMKilled (host memory: its container's
terminated reason) or the trainer reported a GPU out-of-memory error (its termination
message: CUDA or CPU-allocator out-of-memory; the trainer first halves the batch in
process, autobatch.py, and reports only when that is exhausted), the operator replaces the Job with one that runs half
the per-device batch and twice gradientAccumulationSteps, so the effective batch and
the optimisation stay the same (and a run with `output.pvc` resumes its checkpoints:
the trainer's fingerprint counts the effective batch). At most `max_retries` times.

Retry k's Job has a deterministic name, `job_name("<name>-r<k>")` (= `<name>-r<k>-train`,
hashed like the first when long), so a repeated reconcile adopts it instead of
creating another; the attempt is read back from status.jobName. A multi-node retry
gets its own headless Service and rendezvous host (build_job's name_override).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from finetune_api.models import FineTuneJobSpec
from finetune_operator.config import CONTAINER_NAME
from finetune_operator.jobs import job_name

AUTO_BASE = 16  # = finetune_trainer.autobatch.AUTO_BASE: auto's effective batch per step
MAX_ATTEMPTS = 10
CONDITION = "OOMRecovery"
# In the trainer's reported message: torch.OutOfMemoryError (CUDA), the CPU allocator's
# RuntimeError, MemoryError (the trainer's in-process halving was exhausted).
MEMORY_MARKERS = ("OutOfMemoryError", "out of memory", "can't allocate memory", "MemoryError")


@dataclass(frozen=True)
class Retry:
    attempt: int  # this retry's number, 1..max
    cause: str
    batch_size: int
    accumulation: int
    job_name: str


def retry_job_name(ftj_name: str, attempt: int) -> str:
    return job_name(ftj_name if attempt == 0 else f"{ftj_name}-r{attempt}")


def attempt_of(ftj_name: str, current_job: str | None) -> int:
    """Which attempt a Job name is (0: the first Job, or a name of no retry)."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        if current_job == retry_job_name(ftj_name, attempt):
            return attempt
    return 0


def current_job_name(ftj_name: str, status_job_name: str | None) -> str:
    return retry_job_name(ftj_name, attempt_of(ftj_name, status_job_name))


def batch_at(spec: FineTuneJobSpec, attempt: int) -> tuple[int, int]:
    """(per-device batch, accumulation) of an attempt. `auto` starts from its effective
    batch (16 x gradientAccumulationSteps) in one step: retry 1 runs half of that."""
    hp = spec.hyperparameters
    if isinstance(hp.batch_size, int):
        batch, accumulation = hp.batch_size, hp.gradient_accumulation_steps
    else:
        batch, accumulation = AUTO_BASE * hp.gradient_accumulation_steps, 1
    return batch >> attempt, accumulation << attempt


def oom_cause(pods: list[dict[str, Any]]) -> str | None:
    """Why a trainer pod ran out of memory, or None when none did."""
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") not in (CONTAINER_NAME, None):
                continue
            term = (status.get("state") or {}).get("terminated") or {}
            if term.get("reason") == "OOMKilled":
                return "the pod was OOMKilled (host memory limit)"
            reported = _reported_message(term.get("message"))
            if any(marker in reported for marker in MEMORY_MARKERS):
                return f"the trainer reported: {reported[:200]}"
    return None


def _reported_message(text: Any) -> str:
    try:
        report = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        return ""
    return str(report.get("message") or "") if isinstance(report, dict) else ""


def plan(
    spec: FineTuneJobSpec,
    ftj_name: str,
    attempt: int,
    pods: list[dict[str, Any]],
    max_retries: int,
) -> Retry | None:
    """The next retry when the current attempt's pods ran out of memory and a retry is
    possible (bound not reached, batch still halvable); else None."""
    cause = oom_cause(pods)
    if cause is None or attempt >= min(max_retries, MAX_ATTEMPTS):
        return None
    batch, accumulation = batch_at(spec, attempt)
    if batch < 2:
        return None
    nxt = attempt + 1
    return Retry(nxt, cause, batch // 2, accumulation * 2, retry_job_name(ftj_name, nxt))


def retry_spec(spec: FineTuneJobSpec, attempt: int) -> FineTuneJobSpec:
    """The spec an attempt's Job runs (the FineTuneJob's own spec is never changed)."""
    if attempt == 0:
        return spec
    batch, accumulation = batch_at(spec, attempt)
    hp = spec.hyperparameters.model_copy(
        update={"batch_size": batch, "gradient_accumulation_steps": accumulation}
    )
    return spec.model_copy(update={"hyperparameters": hp})


def retry_message(retry: Retry, spec: FineTuneJobSpec, max_retries: int) -> str:
    batch, accumulation = batch_at(spec, retry.attempt - 1)
    return (
        f"Out of memory at batchSize {batch} x gradientAccumulationSteps {accumulation} "
        f"({retry.cause}); retry {retry.attempt} of {max_retries}: Job {retry.job_name} runs "
        f"batchSize {retry.batch_size} x gradientAccumulationSteps {retry.accumulation} "
        "(same effective batch)."
    )


def condition(spec: FineTuneJobSpec, attempt: int, max_retries: int) -> tuple[str, str] | None:
    """(reason, message) of the OOMRecovery condition while a retry Job runs."""
    if attempt == 0:
        return None
    batch, accumulation = batch_at(spec, attempt)
    return "RetriedAfterOOM", (
        f"Retry {attempt} of {max_retries} after running out of memory: batchSize {batch} x "
        f"gradientAccumulationSteps {accumulation}."
    )
