"""The node agent against the real control plane (the session's `control_plane`): pods
created by the real Job and Deployment controllers, scheduled by the real scheduler,
run as local processes, observed through the real apiserver (status, `kubectl logs`).

Mount paths live under /srv/agent-test: the agent creates missing mountpoints on this
machine's filesystem (as a runtime creates them in an image), so they stay in one place."""

from __future__ import annotations

import json
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.cluster


def apply(plane: Any, *docs: dict[str, Any]) -> None:
    plane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"kind": "List", "apiVersion": "v1", "items": list(docs)}),
    )


def get(plane: Any, *args: str) -> Any:
    return json.loads(plane.kubectl("get", *args, "-o", "json").stdout)


def eventually(check: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what or check}: last {last!r}")


def namespace(plane: Any, restricted: bool = False) -> str:
    name = f"agent-{uuid.uuid4().hex[:6]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted"} if restricted else {}
    apply(
        plane,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}},
    )
    eventually(
        lambda: (
            plane.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode
            == 0
        ),
        what="the default ServiceAccount",
    )
    return name


def job(name: str, ns: str, container: dict[str, Any], **pod_spec: Any) -> dict[str, Any]:
    spec = {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "python:3.11", **container}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"backoffLimit": 0, "template": {"spec": {**spec, **pod_spec}}},
    }


def job_pod(plane: Any, ns: str, name: str) -> dict[str, Any]:
    items = eventually(
        lambda: get(plane, "pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={name}")["items"],
        what=f"a pod of job {name}",
    )
    return dict(items[0])


def job_condition(plane: Any, ns: str, name: str, timeout: float = 90) -> str:
    def done() -> str | None:
        conds = get(plane, "job", name, "-n", ns).get("status", {}).get("conditions") or []
        for cond in conds:
            if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
                return str(cond["type"])
        return None

    return str(eventually(done, timeout, f"job {name} to finish"))


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(pod["status"]["containerStatuses"][0]["state"]["terminated"])


RESTRICTED_CONTAINER_SC = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
RESTRICTED_POD_SC = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 2000,
    "seccompProfile": {"type": "RuntimeDefault"},
}

IN_CLUSTER = textwrap.dedent(
    """
    import json, os, ssl, urllib.request
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    token = open(sa + "/token").read()
    ns = open(sa + "/namespace").read()
    ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
    url = "https://%s:%s/api/v1/namespaces/%s/pods" % (
        os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"], ns)
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    pods = json.load(urllib.request.urlopen(req, context=ctx))
    print("uid=%d groups=%s pods=%d" % (os.getuid(), os.getgroups(), len(pods["items"])))
    print("env=" + ",".join(sorted(os.environ)))
    open("/tmp/scratch", "w").write("ok")
    try:
        open("/etc/not-here", "w")
    except OSError as err:
        print("rootfs errno", err.errno)
    try:
        req = urllib.request.Request(url.replace("/pods", "/secrets"),
                                     headers={"Authorization": "Bearer " + token})
        urllib.request.urlopen(req, context=ctx)
    except urllib.error.HTTPError as err:
        print("secrets", err.code)
    open("/dev/termination-log", "w").write("done: " + os.environ["POD_NAME"])
    """
)


def test_restricted_job_uses_its_token_under_rbac(control_plane: Any) -> None:
    plane = control_plane
    ns = namespace(plane, restricted=True)
    apply(
        plane,
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "runner", "namespace": ns},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "pods", "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "pods", "namespace": ns},
            "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": ns}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods"},
        },
    )
    container = {
        "command": ["python", "-c", IN_CLUSTER],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "securityContext": RESTRICTED_CONTAINER_SC,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
    }
    manifest = job(
        "hello",
        ns,
        container,
        serviceAccountName="runner",
        securityContext=RESTRICTED_POD_SC,
        volumes=[{"name": "tmp", "emptyDir": {}}],
    )
    started = time.monotonic()
    apply(plane, manifest)
    assert job_condition(plane, ns, "hello") == "Complete"
    elapsed = time.monotonic() - started
    pod = job_pod(plane, ns, "hello")
    state = terminated(pod)
    assert (state["exitCode"], state["reason"]) == (0, "Completed")
    assert state["message"] == f"done: {pod['metadata']['name']}"
    logs = plane.kubectl("logs", "-n", ns, pod["metadata"]["name"]).stdout
    assert "uid=10001 groups=[2000] pods=1" in logs
    assert "rootfs errno 30" in logs
    assert "secrets 403" in logs  # RBAC applies: the Role grants pods only
    env = next(line for line in logs.splitlines() if line.startswith("env="))[4:].split(",")
    assert set(env) == {
        "HOSTNAME", "KUBERNETES_PORT", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
        "KUBERNETES_SERVICE_PORT_HTTPS", "PATH", "POD_NAME", *(["LANG"] if "LANG" in env else []),
    }  # fmt: skip
    assert elapsed < 60


def test_memory_limit_ends_in_oomkilled(control_plane: Any) -> None:
    ns = namespace(control_plane)
    hog = "import time; print('allocating', flush=True); x = 'x' * (400 << 20); time.sleep(60)"
    container = {"command": ["python", "-c", hog], "resources": {"limits": {"memory": "128Mi"}}}
    apply(control_plane, job("hog", ns, container))
    assert job_condition(control_plane, ns, "hog") == "Failed"
    state = terminated(job_pod(control_plane, ns, "hog"))
    assert (state["exitCode"], state["reason"]) == (137, "OOMKilled")


def test_delete_sends_sigterm_then_removes_the_pod(control_plane: Any, tmp_path: Path) -> None:
    ns = namespace(control_plane)
    out = tmp_path / "out"
    code = textwrap.dedent(
        """
        import signal, sys, time
        def term(*_):
            open("/srv/agent-test/out/sigterm", "w").write("SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, term)
        for i in range(10000):
            print("tick", i, flush=True)
            time.sleep(0.2)
        """
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper", "namespace": ns},
        "spec": {
            "terminationGracePeriodSeconds": 15,
            "containers": [
                {
                    "name": "main",
                    "image": "python:3.11",
                    "command": ["python", "-u", "-c", code],
                    "volumeMounts": [{"name": "out", "mountPath": "/srv/agent-test/out"}],
                }
            ],
            "volumes": [
                {"name": "out", "hostPath": {"path": str(out), "type": "DirectoryOrCreate"}}
            ],
        },
    }
    apply(control_plane, pod)
    control_plane.kubectl("wait", "-n", ns, "--for=condition=Ready", "pod/sleeper", "--timeout=60s")
    follow = control_plane.kubectl(
        "logs", "-n", ns, "sleeper", "-f", "--tail=1", "--request-timeout=2s", check=False
    )
    assert "tick" in follow.stdout
    limited = control_plane.kubectl("logs", "-n", ns, "sleeper", "--limit-bytes=6").stdout
    assert limited == "tick 0"
    started = time.monotonic()
    control_plane.kubectl("delete", "-n", ns, "pod/sleeper", "--timeout=30s")
    assert time.monotonic() - started < 10  # exited on SIGTERM, not after the grace period
    assert (out / "sigterm").read_text() == "SIGTERM"


def test_on_failure_restarts_in_place_and_keeps_previous_log(control_plane: Any) -> None:
    ns = namespace(control_plane)
    script = "if [ -e /srv/agent-test/scratch/once ]; then echo second; exit 0; fi; touch /srv/agent-test/scratch/once; echo first; exit 3"
    container = {
        "command": ["sh", "-c", script],
        "volumeMounts": [{"name": "s", "mountPath": "/srv/agent-test/scratch"}],
    }
    manifest = job(
        "retry", ns, container, restartPolicy="OnFailure", volumes=[{"name": "s", "emptyDir": {}}]
    )
    manifest["spec"]["backoffLimit"] = 2
    apply(control_plane, manifest)
    assert job_condition(control_plane, ns, "retry") == "Complete"
    pod = job_pod(control_plane, ns, "retry")
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 3
    name = pod["metadata"]["name"]
    assert control_plane.kubectl("logs", "-n", ns, name).stdout == "second\n"
    assert control_plane.kubectl("logs", "-n", ns, name, "--previous").stdout == "first\n"


def test_deployment_becomes_ready_through_its_readiness_probe(control_plane: Any) -> None:
    ns = namespace(control_plane)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "python:3.11",
                            "command": [
                                "python",
                                "-m",
                                "http.server",
                                str(port),
                                "--bind",
                                "127.0.0.1",
                            ],
                            "ports": [{"name": "http", "containerPort": port}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": "http"},
                                "periodSeconds": 1,
                            },
                            "livenessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 2},
                        }
                    ]
                },
            },
        },
    }
    apply(control_plane, deploy)
    control_plane.kubectl("rollout", "status", "-n", ns, "deploy/web", "--timeout=60s")
    pods = get(control_plane, "pods", "-n", ns, "-l", "app=web")["items"]
    assert pods[0]["status"]["phase"] == "Running"
    assert pods[0]["status"]["containerStatuses"][0]["ready"] is True
    control_plane.kubectl("delete", "namespace", ns, "--wait=false")


def test_indexed_job_gang_resolves_peers_through_etc_hosts(control_plane: Any) -> None:
    ns = namespace(control_plane)
    peer = f"gang-1.gang.{ns}.svc"
    script = (
        'echo "index=$JOB_COMPLETION_INDEX host=$(hostname)"; '
        f"python -c \"import socket; print('peer', socket.gethostbyname('{peer}'))\""
    )
    manifest = job("gang", ns, {"command": ["sh", "-c", script]}, subdomain="gang")
    manifest["spec"] |= {"completionMode": "Indexed", "completions": 2, "parallelism": 2}
    apply(control_plane, manifest)
    assert job_condition(control_plane, ns, "gang") == "Complete"
    pods = get(control_plane, "pods", "-n", ns, "-l", "batch.kubernetes.io/job-name=gang")["items"]
    outputs = sorted(
        control_plane.kubectl("logs", "-n", ns, p["metadata"]["name"]).stdout for p in pods
    )
    assert outputs == [
        "index=0 host=gang-0\npeer 127.0.0.1\n",
        "index=1 host=gang-1\npeer 127.0.0.1\n",
    ]


def test_volumes_env_and_init_containers(control_plane: Any) -> None:
    ns = namespace(control_plane)
    code = textwrap.dedent(
        """
        import os
        print(open("/srv/agent-test/init/order").read().strip())
        print("secret", open("/srv/agent-test/sec/password").read(), oct(os.stat("/srv/agent-test/sec/password").st_mode & 0o777))
        print("cm", open("/srv/agent-test/cfg/renamed.txt").read())
        print("labels", open("/srv/agent-test/info/labels").read())
        print("cpu", open("/srv/agent-test/info/cpu").read())
        print("env", os.environ["FROM_SECRET"], os.environ["CFG_mode"], os.environ["MEM"])
        print("cwd", os.getcwd())
        print("shm", [l.split()[3] for l in open("/proc/mounts") if " /dev/shm " in l][-1])
        print("sub", open("/srv/agent-test/sub/file").read())
        """
    )
    docs = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": ns}, "stringData": {"password": "hunter2"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": ns}, "data": {"mode": "fast", "file.txt": "content"}},
    ]  # fmt: skip
    container = {
        "command": ["python", "-c", code],
        "workingDir": "/srv/agent-test/init",
        "resources": {"limits": {"cpu": "2", "memory": "256Mi"}},
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        ],
        "volumeMounts": [
            {"name": "init", "mountPath": "/srv/agent-test/init"},
            {"name": "sec", "mountPath": "/srv/agent-test/sec"},
            {"name": "cfg", "mountPath": "/srv/agent-test/cfg"},
            {"name": "info", "mountPath": "/srv/agent-test/info"},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "init", "mountPath": "/srv/agent-test/sub", "subPath": "deeper", "readOnly": True},
        ],
    }  # fmt: skip
    init = [
        {"name": f"init-{i}", "image": "busybox", "command": ["sh", "-c", cmd],
         "volumeMounts": [{"name": "init", "mountPath": "/srv/agent-test/init"}]}
        for i, cmd in enumerate(
            ["echo first > /srv/agent-test/init/order", "echo second >> /srv/agent-test/init/order; mkdir -p /srv/agent-test/init/deeper; echo in-sub > /srv/agent-test/init/deeper/file"]
        )
    ]  # fmt: skip
    volumes = [
        {"name": "init", "emptyDir": {}},
        {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "file.txt", "path": "renamed.txt"}]}},
        {"name": "info", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "cpu", "resourceFieldRef": {"containerName": "main", "resource": "limits.cpu"}},
        ]}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]  # fmt: skip
    manifest = job("vols", ns, container, initContainers=init, volumes=volumes)
    manifest["spec"]["template"]["metadata"] = {"labels": {"team": "a"}}
    apply(control_plane, manifest)  # the secret comes later: CreateContainerConfigError first

    def config_error() -> bool:
        pod = job_pod(control_plane, ns, "vols")
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return "creds" in json.dumps(statuses) or "creds" in json.dumps(pod.get("status", {}))

    eventually(config_error, what="a FailedMount/CreateContainerConfigError naming the secret")
    apply(control_plane, *docs)
    assert job_condition(control_plane, ns, "vols") == "Complete"
    pod = job_pod(control_plane, ns, "vols")
    logs = control_plane.kubectl("logs", "-n", ns, pod["metadata"]["name"]).stdout.splitlines()
    assert logs[:2] == ["first", "second"]
    assert "secret hunter2 0o400" in logs
    assert "cm content" in logs
    assert 'team="a"' in logs  # metadata.labels: key="value" lines
    assert "cpu 2" in logs
    assert "env hunter2 fast 256" in logs
    assert "cwd /srv/agent-test/init" in logs
    assert any(line.startswith("shm ") and "size=65536k" in line for line in logs)
    assert "sub in-sub" in logs
    inits = pod["status"]["initContainerStatuses"]
    assert [s["state"]["terminated"]["exitCode"] for s in inits] == [0, 0]
