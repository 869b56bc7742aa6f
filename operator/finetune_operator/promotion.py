"""Promotion to serving, the I/O half: given a finished run (its typed FineTuneJob, its
metrics and artifacts), check the gate (promote.check_gate), create or adopt the KServe
InferenceService (promote.build_inference_service) through kube.py, and read back its
URL once KServe reports it Ready. Used by the FineTuneJob handler for a run's own
spec.promote and, through the best trial, by a sweep's spec.promote.

Nothing here needs KServe to be installed: a 404 on the InferenceService collection
means its CRD is absent, which becomes Promoted=False (KServeNotInstalled); the run
stays Succeeded. Only `create` and `get` on inferenceservices are used (the chart's
RBAC grants exactly those).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_api.models import FineTuneJob, Promote, ServedModel
from finetune_operator import kube, promote
from finetune_operator.runtime import owned_by

ISVC_RESOURCE = (promote.KSERVE_GROUP, promote.KSERVE_VERSION, promote.KSERVE_PLURAL)
CONDITION = "Promoted"
NOT_INSTALLED = "KServeNotInstalled"


@dataclass(frozen=True)
class Outcome:
    """The Promoted condition, the InferenceService (when there is one), and whether to
    look again (`poll`: waiting for Ready; `recheck`: KServe absent or RBAC refused)."""

    promoted: bool
    reason: str
    message: str
    served: ServedModel | None = None
    poll: bool = False
    recheck: bool = False
    created: bool = False  # this call created the InferenceService (an Event is due)

    def condition(self) -> tuple[bool, str, str]:
        return self.promoted, self.reason, self.message


def settled(previous: dict[str, Any]) -> Outcome | None:
    """A promotion already complete in the stored status (Promoted=True with a URL): keep
    it without any API call."""
    served = previous.get("inferenceService") or {}
    cond = next((c for c in previous.get("conditions") or [] if c.get("type") == CONDITION), None)
    if not served.get("url") or cond is None or cond.get("status") != "True":
        return None
    return Outcome(
        True,
        str(cond.get("reason") or "Serving"),
        str(cond.get("message") or ""),
        ServedModel.model_validate(served),
    )


async def run(
    client: kube.Kube,
    ftj: FineTuneJob,
    uid: str,
    config: Promote,
    metrics: dict[str, float],
    artifacts: dict[str, str],
    *,
    known: bool = False,
    trial: str | None = None,
) -> Outcome:
    """Gate, then ensure the InferenceService and report its state (idempotent: the name
    is the FineTuneJob's, a 409 adopts the one we own). `known`: the status already names
    it, so it is read (a GET) before anything is created."""
    gate = promote.check_gate(config.when, metrics)
    if not gate.holds:
        return Outcome(False, gate.reason, gate.message)
    uri, kind = promote.storage_uri(ftj, config, artifacts)
    if uri is None:
        return Outcome(False, "NoServableModel", f"{gate.message}; not promoted: {kind}")
    try:
        manifest = promote.build_inference_service(ftj, uid, config, uri, kind)
    except ValueError as err:
        return Outcome(False, "NoServableModel", f"{gate.message}; not promoted: {err}")
    name, namespace = manifest["metadata"]["name"], ftj.metadata.namespace
    created, isvc = False, None
    if known:
        try:
            isvc = await client.get(*ISVC_RESOURCE, name, namespace)
        except kube.NotFound:
            isvc = None  # deleted, or KServe's CRD with it: the create below tells which
    try:
        if isvc is None:
            isvc = await client.create(*ISVC_RESOURCE, manifest, namespace)
            created = True
        elif not owned_by(isvc, uid):
            raise kube.Conflict(409, "AlreadyExists", name)
    except kube.Conflict:
        try:
            isvc = await client.get(*ISVC_RESOURCE, name, namespace)
        except kube.NotFound:  # deleted between the two calls: create it next time
            return Outcome(False, "Promoting", f"{gate.message}; creating {name}", poll=True)
        if not owned_by(isvc, uid):
            message = f"an InferenceService {name} exists and is not owned by this run"
            return Outcome(False, "InferenceServiceConflict", f"{gate.message}; {message}")
    except kube.NotFound:
        return Outcome(False, NOT_INSTALLED, promote.no_kserve_message(), recheck=True)
    except kube.KubeError as err:
        if err.status not in (400, 403, 422):
            raise  # transient: the reconcile is retried with backoff
        message = f"the API server refused InferenceService {name} ({err.status} {err.reason})"
        return Outcome(
            False,
            "InferenceServiceRejected",
            f"{gate.message}; {message}: {err.message}",
            recheck=err.status == 403,
        )
    url = promote.served_url(isvc)
    served = ServedModel(name=name, url=url, storage_uri=uri, trial=trial)
    if url is None:
        message = f"{gate.message}; InferenceService {name} created, waiting for it to be Ready"
        return Outcome(True, "InferenceServiceCreated", message, served, poll=True, created=created)
    message = f"{gate.message}; serving at {url}"
    return Outcome(True, "Serving", message, served, created=created)
