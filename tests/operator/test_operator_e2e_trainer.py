"""YAML -> operator -> Job controller -> pod -> the real trainer -> status and /metrics.

All of it real on the session's control plane: the operator (as the chart's
ServiceAccount) creates the Job, the Job controller its pod, the scheduler binds it and
the node agent runs `python -m finetune_trainer` (image TRAINER_IMAGE: this venv) as uid
10001 with the pod's volumes and its projected ServiceAccount token. The trainer's
Kubernetes status sink patches the FineTuneJob's status with the in-cluster config
(KUBERNETES_SERVICE_HOST/PORT, the token and CA under /var/run/secrets), so the RBAC
authorizer checks it as `finetune-trainer`. The model is a tiny random-weight BERT and the
data a toy set, built here on a claim the pod mounts (nothing is downloaded); the output
claim keeps the run's files for the test to read after the pod is gone.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from operator_harness import FTJ, JOB, NAMESPACE, TRAINER_IMAGE, Cluster, make_ftj, sample
from test_operator_gang import OFFLINE, bound_claim, share

from support.tiny_models import sentiment_rows, tiny_bert, write_rows

pytestmark = [pytest.mark.operator, pytest.mark.slow]

TRAINER_USER = f"system:serviceaccount:{NAMESPACE}:finetune-trainer"
# The status keys the trainer owns and patches (report.KubernetesSink).
TRAINER_KEYS = ("progress", "metrics", "history", "artifacts")


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    for cs in pod["status"].get("containerStatuses") or []:
        if "terminated" in (cs.get("state") or {}):
            return dict(cs["state"]["terminated"])
    return {}


async def test_yaml_to_trainer_to_status_and_metrics(
    cluster: Cluster, operator_factory: Any
) -> None:
    from finetune_operator.config import OperatorConfig

    async with bound_claim(cluster, "e2e-data") as data, bound_claim(cluster, "e2e-out") as out:
        tiny_bert(data / "model")
        write_rows(data / "train.csv", sentiment_rows(64, seed=1))
        write_rows(data / "dev.csv", sentiment_rows(16, seed=2))
        share(data)
        manifest = yaml.safe_load(
            f"""
apiVersion: finetune.dev/v1alpha1
kind: FineTuneJob
metadata:
  name: e2e
  namespace: {NAMESPACE}
spec:
  task: classification
  model: {{path: /data/model}}
  dataset:
    train: {{path: /data/train.csv}}
    eval: {{path: /data/dev.csv}}
  hyperparameters: {{learningRate: 0.005, epochs: 1, batchSize: 8, maxLength: 32, maxSteps: 6,
                    evalSteps: 3, loggingSteps: 2}}
  output: {{path: /output, pvc: e2e-out}}
  volumes: [{{claimName: e2e-data, mountPath: /data, readOnly: true}}]
  resources: {{gpus: 0, cpu: "1", memory: 3Gi}}
"""
        )
        operator = await operator_factory(
            config=OperatorConfig(
                trainer_image=TRAINER_IMAGE, status_interval_seconds=1, extra_env=OFFLINE
            )
        )
        await cluster.create(FTJ, make_ftj("e2e", manifest["spec"]))
        job = await cluster.wait_for_object(JOB, NAMESPACE, "e2e-train")
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["image"] == TRAINER_IMAGE
        assert container["command"] == ["python", "-m", "finetune_trainer"]
        env = {e["name"] for e in container["env"]}
        assert "FINETUNE_KUBE_API_URL" not in env, "the sink uses the in-cluster config"

        def ended() -> dict[str, Any] | None:
            pods = cluster.pods(job)
            return pods[-1] if pods and terminated(pods[-1]) else None

        pod = await cluster.wait_for(ended, 300, "the trainer pod to exit")
        log = cluster.pod_log(pod)
        assert terminated(pod)["exitCode"] == 0, (terminated(pod), log[-3000:])
        assert pod["spec"]["securityContext"]["runAsUser"] == 10001
        assert "[start]" in log and "warning: no Kubernetes status sink" not in log

        status = await cluster.wait_phase(NAMESPACE, "e2e", "Succeeded", timeout=30)
        assert "accuracy" in status["metrics"] and "evalLoss" in status["metrics"]
        assert status["progress"]["step"] == 6
        assert status["history"], "the trainer's live sink patched the status history"
        assert status["artifacts"]["model"] == "/output/model"
        # What the trainer wrote (its metrics.json on the output claim) is what the server
        # holds, field for field, for every key the trainer owns.
        written = json.loads((out / "metrics.json").read_text())
        assert written["phase"] == "Succeeded"
        for key in TRAINER_KEYS:
            assert status[key] == written[key], key
        assert (out / "model" / "model.safetensors").is_file()
        # The termination message the operator read agrees.
        report = json.loads(terminated(pod)["message"])
        assert report["metrics"] == status["metrics"]
        assert report["artifacts"] == status["artifacts"]

        # The live patches went through the status subresource, as finetune-trainer.
        patches = [
            e
            for e in cluster.audit()
            if e.get("verb") == "patch"
            and e.get("user", {}).get("username") == TRAINER_USER
            and (e.get("objectRef") or {}).get("resource") == "finetunejobs"
            and (e.get("objectRef") or {}).get("name") == "e2e"
        ]
        assert patches, "no status patch by the trainer's ServiceAccount"
        assert all((e["objectRef"] or {}).get("subresource") == "status" for e in patches)
        assert all(e["responseStatus"]["code"] == 200 for e in patches), [
            e["responseStatus"] for e in patches
        ]
        # A progress, evaluations and the end: more than one (throttled to 1 s).
        assert len(patches) >= 3, len(patches)

        text = await operator.metrics()
        accuracy = sample(
            text, "finetune_job_metric", namespace=NAMESPACE, name="e2e", metric="accuracy"
        )
        assert accuracy == pytest.approx(status["metrics"]["accuracy"])
        phase = sample(
            text, "finetune_job_phase", namespace=NAMESPACE, name="e2e", phase="Succeeded"
        )
        assert phase == 1
