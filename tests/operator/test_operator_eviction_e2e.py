"""An eviction mid-run with the real trainer, on the real control plane: the run resumes
from its checkpoint at spec.checkpoint.uri and ends where an uninterrupted run of the
same spec ends, at the same total step with the same final metrics.

Two FineTuneJobs of one spec run side by side (a tiny random BERT, dropout on, fixed
seed): `steady` is left alone; `evicted`'s trainer pod is evicted through the Eviction
API (pods/eviction, what a drain and preemption use) once it has reported some steps.
The apiserver sets DisruptionTarget and the node agent delivers SIGTERM; the trainer saves
a checkpoint of its last completed step to checkpoint.uri (a folder on a claim both of a
Job's pods mount; the output folder is the pod's emptyDir and goes with it) and exits.
The Job's podFailurePolicy ignores the disrupted pod (backoffLimit 0: one counted
failure would fail the Job) and makes a new pod, which resumes from that checkpoint (the
operator's `Resumed` Event names the step) and trains to the end.

Resume is faithful because the checkpoint holds the model, optimizer, scheduler, the
RNG states (dropout) and the step, and the Trainer skips the batches it already trained
on in the interrupted epoch; evaluation metrics of both runs then agree to float noise.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import pytest
from operator_harness import FTJ, JOB, NAMESPACE, POD, TRAINER_IMAGE, Cluster, make_ftj
from test_operator_gang import OFFLINE, bound_claim, share

from support.tiny_models import sentiment_rows, tiny_bert, write_rows

pytestmark = [pytest.mark.operator, pytest.mark.slow]

MAX_STEPS = 240
SPEC: dict[str, Any] = {
    "task": "classification",
    "model": {"path": "/data/model"},
    "dataset": {"train": {"path": "/data/train.csv"}, "eval": {"path": "/data/dev.csv"}},
    "hyperparameters": {
        "learningRate": 0.002,
        "epochs": 2,
        "batchSize": 8,
        "maxLength": 32,
        "maxSteps": MAX_STEPS,
        "evalSteps": 1000,
        "loggingSteps": 5,
        "seed": 7,
    },
    "volumes": [
        {"claimName": "evict-data", "mountPath": "/data", "readOnly": True},
        {"claimName": "evict-ckpt", "mountPath": "/ckpt", "readOnly": False},
    ],
    "resources": {"gpus": 0, "cpu": "1", "memory": "3Gi"},
    "backoffLimit": 0,
}
# Metrics of the final evaluation, and what else both runs must agree on.
COMPARED = ("evalLoss", "accuracy", "f1Macro")


def spec_for(name: str) -> dict[str, Any]:
    return SPEC | {"checkpoint": {"uri": f"/ckpt/{name}", "keep": 2, "gracePeriodSeconds": 60}}


def step_of(cluster: Cluster, name: str) -> int:
    progress = cluster.status(FTJ, NAMESPACE, name).get("progress") or {}
    return int(progress.get("step") or 0)


async def test_an_evicted_real_trainer_resumes_to_the_same_step_and_metrics(
    cluster: Cluster, operator_factory: Any
) -> None:
    from finetune_operator.config import OperatorConfig

    async with (
        bound_claim(cluster, "evict-data") as data,
        bound_claim(cluster, "evict-ckpt") as ckpt,
    ):
        tiny_bert(data / "model")
        write_rows(data / "train.csv", sentiment_rows(800, seed=1))
        write_rows(data / "dev.csv", sentiment_rows(64, seed=2))
        share(data)
        Path(ckpt).chmod(0o777)  # the pods' uid 10001 writes there (no fsGroup on hostPath)
        await operator_factory(
            config=OperatorConfig(
                trainer_image=TRAINER_IMAGE, status_interval_seconds=1, extra_env=OFFLINE
            )
        )
        await cluster.create(FTJ, make_ftj("steady", spec_for("steady")))
        await cluster.create(FTJ, make_ftj("evicted", spec_for("evicted")))
        job = await cluster.wait_for_object(JOB, NAMESPACE, "evicted-train")

        # Some steps done (the trainer's own status patches say so), far from the end.
        def said() -> str:  # on a timeout: where each run is and what its pods said
            out = []
            for n in ("steady", "evicted"):
                st = cluster.status(FTJ, NAMESPACE, n)
                js = cluster.status(JOB, NAMESPACE, f"{n}-train")
                j = {"metadata": {"namespace": NAMESPACE, "name": f"{n}-train"}}
                pods = [
                    (p["metadata"]["name"], p["status"].get("phase"), cluster.pod_log(p)[-800:])
                    for p in cluster.pods(j)
                ]
                events = [(e["reason"], e["message"]) for e in cluster.events(NAMESPACE, n)]
                out.append(
                    f"{n}: {st.get('phase')} {st.get('progress')} {st.get('message')}; "
                    f"Job {js.get('failed')} failed {js.get('conditions')}; pods {pods}; "
                    f"events {events}"
                )
            return "; ".join(out)

        def stepped() -> bool:
            for n in ("steady", "evicted"):
                assert cluster.status(FTJ, NAMESPACE, n).get("phase") != "Failed", said()
            return step_of(cluster, "evicted") >= 10

        await cluster.wait_for(stepped, 300, said)
        (pod,) = [p for p in cluster.pods(job) if not p["metadata"].get("deletionTimestamp")]
        at = step_of(cluster, "evicted")
        assert at < MAX_STEPS // 2, f"the run was at step {at} of {MAX_STEPS} before eviction"
        name = pod["metadata"]["name"]
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}}
        await cluster.request(
            "POST", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/eviction", eviction
        )
        log: list[str] = []

        def gone() -> bool:
            if cluster.get_object(POD, NAMESPACE, name) is None:
                return True
            with contextlib.suppress(Exception):  # the pod may go between the two reads
                log[:] = [cluster.pod_log(pod)]
            return False

        await cluster.wait_for(gone, 90, "the evicted pod saved and went")

        def resumed() -> list[str]:
            return [
                e["message"]
                for e in cluster.events(NAMESPACE, "evicted")
                if e["reason"] == "Resumed"
            ]

        def resumed_or_failed() -> list[str]:
            assert cluster.status(FTJ, NAMESPACE, "evicted").get("phase") != "Failed", said()
            return resumed()

        (message,) = await cluster.wait_for(resumed_or_failed, 420, lambda: "resumed: " + said())
        found = re.fullmatch(r"The trainer resumed from its checkpoint at step (\d+)\.", message)
        assert found, message
        resumed_at = int(found.group(1))
        assert at <= resumed_at < MAX_STEPS
        if log:  # the SIGTERM save, in the evicted pod's last log read
            saved = re.search(r"SIGTERM: saved checkpoint-(\d+)", log[0])
            assert saved is None or int(saved.group(1)) == resumed_at, log[0][-2000:]

        steady = await cluster.wait_phase(NAMESPACE, "steady", "Succeeded", timeout=600)
        after = await cluster.wait_phase(NAMESPACE, "evicted", "Succeeded", timeout=600)
        # The eviction counted no failure: one would have failed the Job (backoffLimit 0).
        assert (cluster.status(JOB, NAMESPACE, "evicted-train").get("failed") or 0) == 0
        assert len([p for p in cluster.pods(job) if p["metadata"]["name"] != name]) >= 1
        print(  # the figures docs/durability.md quotes (pytest -s)
            f"evicted at step {at}, resumed from {resumed_at}; "
            f"steady {steady['metrics']}; evicted {after['metrics']}"
        )
        assert after["metrics"]["resumedFromStep"] == resumed_at
        assert "resumedFromStep" not in steady["metrics"]
        assert after["progress"]["step"] == steady["progress"]["step"] == MAX_STEPS
        for key in COMPARED:
            assert after["metrics"][key] == pytest.approx(
                steady["metrics"][key], rel=1e-4, abs=1e-6
            ), (key, after["metrics"], steady["metrics"])
        # The checkpoints outlived the evicted pod at checkpoint.uri, complete.
        marked = sorted((ckpt / "evicted").glob("checkpoint-*/finetune-complete.json"))
        assert marked, list((ckpt / "evicted").iterdir())
