"""The plumbing both kinds' handlers share: resources, keys, the clock, manifest parsing,
owner references, a lock per object, and retry/requeue of a failed reconcile.

Handlers are kopf *event* handlers (level-triggered, one reconcile per object for any
event on it or its children). kopf retries only change handlers, so retries are ours:
a reconcile that raises `kopf.TemporaryError(delay=...)` asks to run again after that
delay (kopf's own type for "not done yet, try later"); any other exception is retried
with the backoff in RETRY_DELAYS. Nothing here is module-level state: the locks and the
pending retries live in a `Requeue` the operator creates at start-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kopf
from pydantic import BaseModel

from finetune_api.conditions import now_rfc3339
from finetune_api.manifest import parse
from finetune_api.models import API_VERSION, GROUP, VERSION, ObjectMeta
from finetune_operator import kube

# Resources the operator works with: (group, version, plural).
FTJ_RESOURCE = (GROUP, VERSION, "finetunejobs")
SWEEP_RESOURCE = (GROUP, VERSION, "hyperparametersweeps")
JOB_RESOURCE = ("batch", "v1", "jobs")
POD_RESOURCE = ("", "v1", "pods")

RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)

Key = tuple[str, str]  # (namespace, name)
M = TypeVar("M", bound=BaseModel)

now = now_rfc3339  # the one clock for status timestamps (finetune_api.conditions)


def parse_object(obj: Mapping[str, Any], kind: type[M], spec: type[BaseModel]) -> M:
    """The typed object (metadata + validated spec) from a raw body; raises SpecError
    naming the bad field."""
    meta = obj.get("metadata") or {}
    parsed = parse(spec, obj.get("spec") or {}, "spec.")
    return kind.model_construct(
        metadata=ObjectMeta(
            name=meta["name"], namespace=meta.get("namespace"), labels=meta.get("labels") or {}
        ),
        spec=parsed,
    )


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    """The controller owner reference to one of our objects (FineTuneJob, sweep).

    Not kopf.adopt: it also copies the owner's labels (and namespace) onto the child, and
    the Job's and trials' labels are a contract of their own (docs/CONTRACTS.md); the pure
    builders also have only the owner's name and uid, not its body."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether obj carries an owner reference to uid."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


@dataclass
class Requeue:
    """A lock per object and the retries of failed reconciles, for one kind."""

    kind: str
    log: logging.Logger
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    attempts: dict[Key, int] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)  # referenced until done

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def forget(self, key: Key) -> None:
        self.locks.pop(key, None)
        self.attempts.pop(key, None)

    async def run(self, key: Key, reconcile: Callable[[], Awaitable[None]]) -> None:
        """Run one reconcile under the object's lock; schedule it again if it asks to
        (TemporaryError) or fails (backoff). A NotFound means the object went away."""
        try:
            async with self.lock(key):
                await reconcile()
            self.attempts.pop(key, None)
        except kube.NotFound:
            # The reconciled object itself is gone (a NotFound about anything else is turned
            # into a TemporaryError where it is met); its DELETED event cleans up.
            pass
        except kopf.TemporaryError as err:
            self.attempts.pop(key, None)
            self.later(err.delay or 0.0, key, reconcile)
        except Exception as err:
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            self.log.warning(
                "reconcile of %s %s/%s failed (%s); retrying in %.0fs", self.kind, *key, err, delay
            )
            self.later(delay, key, reconcile)

    def later(self, delay: float, key: Key, reconcile: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()

        def spawn() -> None:
            task = loop.create_task(self.run(key, reconcile))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        loop.call_later(delay, spawn)

    def cancel(self) -> None:
        """Cancel pending retries (shutdown)."""
        for task in list(self.tasks):
            task.cancel()
        self.tasks.clear()
