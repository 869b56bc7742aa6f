"""ReconcileState: everything the operator keeps in memory, created once at start-up.

Every field is a cache or a work queue, never the truth: the operator rebuilds all of it
from the cluster's lists on start, so a restart loses nothing. main.serve() creates one
and hands it to the handlers through kopf's memo (`memo.state`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from finetune_operator.config import OperatorConfig
from finetune_operator.events import EventPoster
from finetune_operator.kube import Kube
from finetune_operator.metrics import Publisher
from finetune_operator.runtime import Key, Requeue


@dataclass
class JobMemory:
    """What the FineTuneJob handler remembers between reconciles, per FineTuneJob."""

    # The latest body of every FineTuneJob, shaped like a kopf index ({key: [body]}) and
    # kept by the FineTuneJob event handler itself (kopf lists every FineTuneJob on start
    # and hands each to it), at a fraction of a kopf index's per-event cost.
    bodies: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)
    # Jobs this process created or patched that the Job index may not have seen yet
    # (after a restart the 409 -> adopt path covers the same case).
    created_jobs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # (uid, status) the cluster is KNOWN to hold: recorded only after our status PATCH
    # succeeded. The index lags behind our own patches until their watch events arrive,
    # and a reconcile in that window must not re-derive transitions from the stale copy.
    written: dict[Key, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    # The inputs of the last reconcile that needed no follow-up: a reconcile that would
    # see exactly these again (our own writes coming back as watch events) is skipped.
    settled: dict[Key, tuple[Any, ...]] = field(default_factory=dict)
    # uid of the FineTuneJob whose Job POST was sent without a reply yet: a 409 on the
    # retry finds our own Job, and its JobCreated Event is still due.
    create_sent: dict[Key, str] = field(default_factory=dict)
    # The last transition (uid, from-phase, to-phase, reason) whose milestone Events were
    # queued (the Event queue retries them until posted).
    announced: dict[Key, tuple[str, str, str, str]] = field(default_factory=dict)
    # Milestone Events posted, per FineTuneJob: (uid, Job, the Job's failed pods, reason).
    # Each goes out once per attempt even when the observed status flickers back.
    posted: dict[Key, set[tuple[str, str, int, str]]] = field(default_factory=dict)
    # Multi-node: (Job uid, what happened) of a trainer pod seen with DisruptionTarget; an
    # evicted pod is deleted soon after, and the gang's failure that follows must still
    # be known as a disruption (handlers_job._restart_disrupted_gang). Only a cache: the
    # Job's annotation finetune.dev/disrupted holds it across operator restarts.
    disrupted: dict[Key, tuple[str, str]] = field(default_factory=dict)
    # spec.promote: FineTuneJobs with a re-read of their InferenceService scheduled (one
    # each: every reconcile that finds it not Ready yet would otherwise add another).
    looking: set[Key] = field(default_factory=set)

    def forget(self, key: Key) -> None:
        caches: tuple[dict[Key, Any], ...] = (
            self.bodies,
            self.created_jobs,
            self.written,
            self.settled,
            self.create_sent,
            self.announced,
            self.posted,
            self.disrupted,
        )
        for cache in caches:
            cache.pop(key, None)
        self.looking.discard(key)


@dataclass
class SweepMemory:
    """Events the sweep handler queued, so a retry after a write whose reply was lost does
    not announce them twice (sweeps read everything else fresh from the API server)."""

    # (sweep uid, phase) whose Sweep<Phase> Event was queued last.
    announced: dict[Key, tuple[str, str]] = field(default_factory=dict)
    # Trials whose TrialPruned Event was queued, per sweep uid.
    pruned: dict[Key, tuple[str, set[int]]] = field(default_factory=dict)

    def forget(self, key: Key) -> None:
        self.announced.pop(key, None)
        self.pruned.pop(key, None)


@dataclass
class ReconcileState:
    """The operator's in-memory state, passed to every handler."""

    config: OperatorConfig
    kube: Kube
    events: EventPoster
    publisher: Publisher = field(default_factory=Publisher)
    jobs: JobMemory = field(default_factory=JobMemory)
    sweeps: SweepMemory = field(default_factory=SweepMemory)
    job_requeue: Requeue = field(
        default_factory=lambda: Requeue("FineTuneJob", logging.getLogger("finetune_operator.jobs"))
    )
    sweep_requeue: Requeue = field(
        default_factory=lambda: Requeue(
            "HyperparameterSweep", logging.getLogger("finetune_operator.sweeps")
        )
    )

    @classmethod
    def create(cls, config: OperatorConfig, client: Kube) -> ReconcileState:
        return cls(config=config, kube=client, events=EventPoster(client))

    def cancel(self) -> None:
        """Cancel pending retries and Event posters (shutdown)."""
        self.job_requeue.cancel()
        self.sweep_requeue.cancel()
        self.events.cancel()


def from_memo(memo: Any) -> ReconcileState:
    """The ReconcileState main.serve() put into kopf's memo."""
    state = getattr(memo, "state", None)
    if not isinstance(state, ReconcileState):
        raise RuntimeError("the operator was started without a ReconcileState in kopf's memo")
    return state
