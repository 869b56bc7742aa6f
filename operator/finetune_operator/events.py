"""Kubernetes Events, posted in the background and retried until the cluster holds them.

Events are informational: they go through a small queue so a burst of new FineTuneJobs
gets its Jobs and statuses first (posters wait until no reconcile has started for
QUIET_S, at most MAX_DELAY_S) and the API server a bounded number of concurrent Event
POSTs. A POST that fails for a passing reason (no reply, 429, 5xx) is retried with
backoff; a 409 on a retry means the first attempt landed (the Event's name is unique).
Events still queued when the process dies are lost.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from finetune_operator import kube
from finetune_operator.runtime import RETRY_DELAYS

log = logging.getLogger("finetune_operator.events")

POSTERS = 4
QUIET_S = 0.05
MAX_DELAY_S = 2.0
# Answers that will not change on a retry (bad request, namespace gone, invalid).
PERMANENT = frozenset({400, 404, 422})
# A 403 is retried this often first: a kube-apiserver that has just restarted answers 403
# until its RBAC caches have synced (seen on the local cluster's restart test).
FORBIDDEN_ATTEMPTS = 4
MAX_ATTEMPTS = 20  # about 8 minutes with RETRY_DELAYS


@dataclass
class EventPoster:
    """The operator's Event queue (one per operator, created at start-up)."""

    kube: kube.Kube
    quiet_s: float = QUIET_S
    max_delay_s: float = MAX_DELAY_S
    last_reconcile: float = 0.0  # loop time of the latest reconcile start
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    posters: set[asyncio.Task[None]] = field(default_factory=set)

    def busy(self) -> None:
        """A reconcile starts now: Events wait for a pause."""
        self.last_reconcile = asyncio.get_running_loop().time()

    def post(self, involved: dict[str, Any], reason: str, message: str, etype: str) -> None:
        self.queue.put_nowait(kube.event_body(involved, reason, message, type=etype))
        if len(self.posters) < POSTERS:
            task = asyncio.get_running_loop().create_task(self._drain())
            self.posters.add(task)
            task.add_done_callback(self.posters.discard)

    async def _drain(self) -> None:
        """Post queued Events until the queue is empty, then exit (no idle task lingers)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay_s
        while (wait := min(self.last_reconcile + self.quiet_s, deadline) - loop.time()) > 0:
            await asyncio.sleep(wait)
        while not self.queue.empty():
            await self._send(self.queue.get_nowait())

    async def _send(self, event: dict[str, Any]) -> None:
        for attempt in range(MAX_ATTEMPTS):
            try:
                await self.kube.create_event(event)
                return
            except kube.Conflict:
                landed = await self._landed(event)
                if landed:
                    return  # an earlier attempt landed and only its reply was lost
                if landed is False:
                    event["metadata"]["name"] += "x"  # someone else's Event has this name
            except kube.KubeError as err:
                if err.status in PERMANENT or (
                    err.status == 403 and attempt + 1 >= FORBIDDEN_ATTEMPTS
                ):
                    log.info("Event %s refused: %s", event["reason"], err)
                    return
            await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
        log.warning("Event %s not posted after %d attempts", event["reason"], MAX_ATTEMPTS)

    async def _landed(self, event: dict[str, Any]) -> bool | None:
        """Whether the cluster holds this very Event (None: could not tell)."""
        meta = event["metadata"]
        try:
            stored = await self.kube.get("", "v1", "events", meta["name"], meta["namespace"])
        except kube.NotFound:
            return False
        except kube.KubeError:
            return None
        mine = (event["reason"], event["message"], event["involvedObject"].get("name"))
        return (
            stored.get("reason"),
            stored.get("message"),
            stored.get("involvedObject", {}).get("name"),
        ) == mine

    def cancel(self) -> None:
        for task in list(self.posters):
            task.cancel()
