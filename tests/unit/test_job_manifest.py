"""Golden tests: FineTuneJob spec -> batch/v1 Job manifest (jobs.build_job), per task and option.

Regenerate after an intended change with UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from finetune_api.models import FineTuneJob
from finetune_operator.config import OperatorConfig
from finetune_operator.jobs import build_job, desired_suspend, job_name, spec_hash

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent.parent / "operator" / "golden"
UID = "0b5c0f0e-1111-4222-8333-444455556666"

BASE: dict[str, Any] = {
    "task": "classification",
    "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
    "dataset": {"train": {"path": "/data/train.tsv"}, "eval": {"path": "/data/dev.tsv"}},
}

CASES: dict[str, tuple[dict[str, Any], dict[str, str], OperatorConfig]] = {
    "classification-default": (BASE, {}, OperatorConfig()),
    "causal-lm-lora": (
        {
            "task": "causal-lm",
            "model": {"path": "/models/tiny-gpt2"},
            "dataset": {"train": {"hub": "wikitext", "config": "wikitext-2-raw-v1"}},
            "lora": {"rank": 16, "alpha": 32, "targetModules": ["c_attn"]},
            "volumes": [{"claimName": "models", "mountPath": "/models"}],
        },
        {},
        OperatorConfig(),
    ),
    "masked-lm-mlm": (
        {**BASE, "task": "masked-lm", "mlm": {"maskProbability": 0.2}},
        {},
        OperatorConfig(),
    ),
    "qat-cpu-only": (
        {
            **BASE,
            "quantization": {"mode": "qat"},
            "resources": {"gpus": 0, "cpu": "2", "memory": "4Gi"},
        },
        {},
        OperatorConfig(),
    ),
    "everything": (
        {
            **BASE,
            "image": "registry.example/trainer:2.0",
            "resources": {
                "gpus": 4,
                "cpu": "16",
                "memory": "64Gi",
                "nodeSelector": {"nvidia.com/gpu.product": "H100"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
            },
            "secrets": [{"env": "HF_TOKEN", "secretRef": {"name": "hf", "key": "token"}}],
            "volumes": [{"claimName": "data", "mountPath": "/data", "readOnly": True}],
            "output": {"path": "/results", "pvc": "results"},
            "backoffLimit": 0,
            "activeDeadlineSeconds": 7200,
        },
        {"kueue.x-k8s.io/queue-name": "gpu", "finetune.dev/sweep": "s1", "unrelated": "x"},
        OperatorConfig(
            trainer_image="ignored:because-spec-image",
            service_account="",
            image_pull_secrets=("regcred",),
            status_interval_seconds=2,
        ),
    ),
    "suspended": ({**BASE, "suspend": True}, {}, OperatorConfig()),
    # sources by URI and a hub push: nothing new in the Job but the secrets' references
    # (no model volume: the pod downloads model.uri into its own HF cache)
    "uri-sources-hub-push": (
        {
            **BASE,
            "model": {"uri": "s3://models/minilm"},
            "dataset": {
                "train": {"uri": "s3://data/sst2/train.csv"},
                "eval": {"uri": "hf://datasets/org/sst2/dev.jsonl"},
            },
            "output": {"uri": "s3://runs/sst2/out", "hubRepo": "org/sst2", "hubPrivate": True},
            "secrets": [
                {"env": "AWS_ACCESS_KEY_ID", "secretRef": {"name": "s3", "key": "id"}},
                {"env": "AWS_SECRET_ACCESS_KEY", "secretRef": {"name": "s3", "key": "secret"}},
                {"env": "HF_TOKEN", "secretRef": {"name": "hub", "key": "token"}},
            ],
        },
        {},
        OperatorConfig(),
    ),
    "gpu-pool-defaults": (
        BASE,
        {},
        OperatorConfig(
            default_node_selector=(("cloud.example/pool", "gpu"),),
            default_tolerations=({"key": "nvidia.com/gpu", "operator": "Exists"},),
        ),
    ),
}


def render(name: str) -> dict[str, Any]:
    spec, labels, config = CASES[name]
    ftj = FineTuneJob.model_validate(
        {"metadata": {"name": "demo", "namespace": "team-a", "labels": labels}, "spec": spec}
    )
    return build_job(ftj, UID, config)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_manifest(name: str) -> None:
    manifest = render(name)
    path = GOLDEN / f"job-{name}.json"
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing {path}; run with UPDATE_GOLDEN=1"
    assert json.loads(path.read_text()) == manifest


def test_invariants_for_every_case() -> None:
    for name in CASES:
        m = render(name)
        spec, _, config = CASES[name]
        pod = m["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert m["metadata"]["name"] == "demo-train"
        assert m["metadata"]["ownerReferences"][0]["uid"] == UID
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert pod["restartPolicy"] == "Never"
        env = {e["name"]: e for e in c["env"]}
        assert env["FINETUNE_STATUS_SINK"]["value"] == "kubernetes"
        payload = json.loads(env["FINETUNE_JOB"]["value"])
        assert payload["metadata"]["uid"] == UID
        assert payload["spec"]["task"] == spec["task"]
        # Secret values never appear, only references.
        for e in c["env"]:
            assert "value" in e or "secretKeyRef" in e["valueFrom"]
        gpus = spec.get("resources", {}).get("gpus", 1)
        assert c["resources"]["limits"].get("nvidia.com/gpu") == (str(gpus) if gpus else None)
        assert (pod.get("serviceAccountName") or "") == config.service_account


def test_labels_pass_kueue_and_sweep_through_only() -> None:
    labels = render("everything")["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "gpu"
    assert labels["finetune.dev/sweep"] == "s1"
    assert "unrelated" not in labels


def test_job_name_is_deterministic_and_bounded() -> None:
    assert job_name("demo") == "demo-train"
    long = "a" * 63
    assert job_name(long) == job_name(long)
    assert len(job_name(long)) <= 63
    assert job_name(long) != job_name("a" * 62 + "b")


def test_spec_hash_ignores_suspend() -> None:
    a = FineTuneJob.model_validate({"metadata": {"name": "x"}, "spec": BASE})
    b = FineTuneJob.model_validate({"metadata": {"name": "x"}, "spec": {**BASE, "suspend": True}})
    c = FineTuneJob.model_validate(
        {"metadata": {"name": "x"}, "spec": {**BASE, "hyperparameters": {"epochs": 1}}}
    )
    assert spec_hash(a.spec) == spec_hash(b.spec) != spec_hash(c.spec)


@pytest.mark.parametrize(
    ("suspend", "kueue", "current", "want"),
    [
        (True, False, None, True),
        (False, False, None, False),
        (False, False, True, False),  # plain Job: resume
        (True, True, False, True),  # user suspend wins over Kueue
        (False, True, None, True),  # Kueue: created suspended, Kueue admits it
        (False, True, False, False),  # Kueue admitted it: leave it running
        (False, True, True, True),  # still queued: leave it
    ],
)
def test_desired_suspend(suspend: bool, kueue: bool, current: bool | None, want: bool) -> None:
    labels = {"kueue.x-k8s.io/queue-name": "q"} if kueue else {}
    ftj = FineTuneJob.model_validate(
        {"metadata": {"name": "x", "labels": labels}, "spec": {**BASE, "suspend": suspend}}
    )
    assert desired_suspend(ftj, current) is want


def test_gpu_pool_defaults_apply_only_to_gpu_jobs_without_their_own() -> None:
    config = OperatorConfig(
        default_node_selector=(("pool", "gpu"),),
        default_tolerations=({"key": "nvidia.com/gpu", "operator": "Exists"},),
    )

    def pod(spec: dict[str, Any]) -> dict[str, Any]:
        ftj = FineTuneJob.model_validate({"metadata": {"name": "d"}, "spec": spec})
        return build_job(ftj, UID, config)["spec"]["template"]["spec"]

    gpu = pod(BASE)
    assert gpu["nodeSelector"] == {"pool": "gpu"}
    assert gpu["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    cpu = pod({**BASE, "resources": {"gpus": 0}})
    assert "nodeSelector" not in cpu and "tolerations" not in cpu
    own = pod({**BASE, "resources": {"nodeSelector": {"mine": "yes"}, "tolerations": []}})
    assert own["nodeSelector"] == {"mine": "yes"}
    assert own["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]


def test_defaults_parsed_from_the_charts_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_DEFAULT_NODE_SELECTOR", '{"pool": "gpu"}')
    monkeypatch.setenv("FINETUNE_DEFAULT_TOLERATIONS", '[{"key": "k", "operator": "Exists"}]')
    config = OperatorConfig.from_env()
    assert config.default_node_selector == (("pool", "gpu"),)
    assert config.default_tolerations == ({"key": "k", "operator": "Exists"},)
    monkeypatch.setenv("FINETUNE_DEFAULT_TOLERATIONS", "{not json")
    with pytest.raises(ValueError, match="FINETUNE_DEFAULT_TOLERATIONS is not valid JSON"):
        OperatorConfig.from_env()


def test_trainer_pod_meets_the_restricted_pod_security_profile() -> None:
    for name in CASES:
        pod = render(name)["spec"]["template"]["spec"]
        # fsGroup makes a freshly provisioned (root-owned) output PVC writable for uid 10001.
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert pod["containers"][0]["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }


def test_read_only_root_has_bounded_scratch_mounts_for_every_writer() -> None:
    for name in CASES:
        spec = CASES[name][0]
        pod = render(name)["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
        assert len(mounts) == len(c["volumeMounts"]), "two volumes on one path"
        assert mounts["/tmp"]["emptyDir"] == {"sizeLimit": "4Gi"}
        assert mounts["/cache/huggingface"]["emptyDir"] == {"sizeLimit": "50Gi"}
        env = {e["name"]: e.get("value") for e in c["env"]}
        # Every path the trainer or a library writes to lies in a mount.
        writable = [*mounts]
        for var in ("HOME", "TMPDIR", "MPLCONFIGDIR", "HF_HOME"):
            assert any(env[var].startswith(path) for path in writable), var
        output = spec.get("output", {}).get("path", "/output")
        assert output in mounts


def test_scratch_size_limits_come_from_the_operator_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FINETUNE_TRAINER_TMP_SIZE_LIMIT", "1Gi")
    monkeypatch.setenv("FINETUNE_TRAINER_CACHE_SIZE_LIMIT", "200Gi")
    ftj = FineTuneJob.model_validate({"metadata": {"name": "d"}, "spec": BASE})
    pod = build_job(ftj, UID, OperatorConfig.from_env())["spec"]["template"]["spec"]
    sizes = {v["name"]: v["emptyDir"].get("sizeLimit") for v in pod["volumes"] if "emptyDir" in v}
    assert sizes["tmp"] == "1Gi" and sizes["hf-cache"] == "200Gi"


def test_grace_period_comes_from_spec_checkpoint_and_disruption_is_not_failure() -> None:
    from finetune_api.models import DEFAULT_GRACE_SECONDS

    default = build_job(
        FineTuneJob.model_validate({"metadata": {"name": "g"}, "spec": BASE}), UID, OperatorConfig()
    )
    assert default["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120
    assert DEFAULT_GRACE_SECONDS == 120
    spec = {**BASE, "checkpoint": {"uri": "s3://b/p", "gracePeriodSeconds": 900, "keep": 3}}
    job = build_job(
        FineTuneJob.model_validate({"metadata": {"name": "g"}, "spec": spec}), UID, OperatorConfig()
    )
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 900
    # a single-pod Job too: an evicted/preempted pod is recreated without counting a failure
    assert job["spec"]["podFailurePolicy"] == {
        "rules": [
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            }
        ]
    }
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        FineTuneJob.model_validate(
            {"metadata": {"name": "g"}, "spec": {**BASE, "checkpoint": {"gracePeriodSeconds": 0}}}
        )
