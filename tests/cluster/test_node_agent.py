"""The node agent's pure rules: env expansion, the downward API, /etc/hosts, image
mapping, memory accounting, container status decisions. No control plane needed."""

from __future__ import annotations

import base64
import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from finetune_cluster.kube_rest import load_kubeconfig
from finetune_cluster.pod_env import (
    EnvError,
    build_env,
    expand,
    format_map,
    parse_quantity,
    resolve_field_ref,
    resolve_resource_ref,
)
from finetune_cluster.pod_images import (
    CommandError,
    ImageEnv,
    default_path,
    image_env,
    image_repository,
    load_images,
    parse_mount,
    pull_error,
    registry_host,
    resolve_argv,
)
from finetune_cluster.pod_probes import probe_port
from finetune_cluster.pod_runtime import (
    Identity,
    Sandbox,
    identity_of,
    memory_limit,
    needs_traversal,
    over_limit,
    parse_stat,
    parse_vmrss,
    sandbox_script,
    tail_data,
    termination_message,
    tree_pids,
)
from finetune_cluster.pod_volumes import Mount, hosts_file, pod_hostname
from finetune_cluster.pod_worker import backoff_seconds, pod_phase, should_restart

pytestmark = pytest.mark.unit


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "job-0-abcde",
            "namespace": "team-a",
            "uid": "uid-1",
            "labels": {"app": "x", "batch.kubernetes.io/job-completion-index": "0"},
            "annotations": {"batch.kubernetes.io/job-completion-index": "3", "note": 'a"b'},
        },
        "spec": {
            "nodeName": "node-1",
            "serviceAccountName": "trainer",
            "containers": [{"name": "main", "image": "img"}],
            **spec,
        },
    }


# ---- $(VAR) expansion ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)z", "x1y2z"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$1"),
        ("$$", "$"),
        ("$A", "$A"),
        ("$(A", "$(A"),
        ("trailing $", "trailing $"),
        ("$()", "$()"),
        ("(A)", "(A)"),
        ("$(A)$(A)", "11"),
    ],
)
def test_expand_follows_kubernetes_rules(value: str, expected: str) -> None:
    assert expand(value, {"A": "1", "B": "2"}) == expected


def test_env_expands_in_order_with_service_variables() -> None:
    container = {
        "name": "main",
        "env": [
            {"name": "LATER", "value": "$(FIRST)"},  # not defined yet: kept
            {"name": "FIRST", "value": "one"},
            {"name": "BOTH", "value": "$(FIRST)-$(KUBERNETES_SERVICE_HOST)-$$(FIRST)"},
            {"name": "EMPTY", "value": ""},
        ],
    }
    env = build_env(
        pod(),
        container,
        service_env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"},
        secrets={},
        config_maps={},
        allocatable={},
    )
    assert env["LATER"] == "$(FIRST)"
    assert env["BOTH"] == "one-127.0.0.1-$(FIRST)"
    assert env["EMPTY"] == ""
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"


def test_env_from_secrets_and_config_maps() -> None:
    secret = {"data": {"TOKEN": base64.b64encode(b"s3cret").decode(), "bad=key": "eA=="}}
    cm = {"data": {"MODE": "fast", "LEVEL": "2"}}
    container = {
        "name": "main",
        "envFrom": [
            {"configMapRef": {"name": "cm"}, "prefix": "CFG_"},
            {"secretRef": {"name": "sec"}},
            {"secretRef": {"name": "nope", "optional": True}},
        ],
        "env": [
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "MODE"}}},
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "TOKEN"}}},
            {
                "name": "OPT",
                "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": True}},
            },
            {"name": "CFG_LEVEL", "value": "override-$(CFG_MODE)"},
        ],
    }
    env = build_env(
        pod(),
        container,
        service_env={},
        secrets={"sec": secret, "nope": None},
        config_maps={"cm": cm},
        allocatable={},
    )
    assert env["CFG_MODE"] == "fast"
    assert env["CFG_LEVEL"] == "override-fast"
    assert env["TOKEN"] == env["T"] == "s3cret"
    assert env["MODE"] == "fast"
    assert "OPT" not in env and "bad=key" not in env


def test_env_missing_reference_is_a_config_error() -> None:
    container = {
        "name": "main",
        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}],
    }
    with pytest.raises(EnvError, match='secret "gone" not found'):
        build_env(
            pod(), container, service_env={}, secrets={"gone": None}, config_maps={}, allocatable={}
        )
    container["env"][0]["valueFrom"] = {"configMapKeyRef": {"name": "cm", "key": "k"}}
    with pytest.raises(EnvError, match="couldn't find key k"):
        build_env(
            pod(), container, service_env={}, secrets={}, config_maps={"cm": {}}, allocatable={}
        )


# ---- downward API ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("metadata.name", "job-0-abcde"),
        ("metadata.namespace", "team-a"),
        ("metadata.uid", "uid-1"),
        ("metadata.labels['app']", "x"),
        ("metadata.annotations['batch.kubernetes.io/job-completion-index']", "3"),
        ("metadata.labels['absent']", ""),
        ("spec.nodeName", "node-1"),
        ("spec.serviceAccountName", "trainer"),
        ("status.podIP", "127.0.0.2"),
        ("status.hostIP", "127.0.0.3"),
    ],
)
def test_field_refs(path: str, expected: str) -> None:
    assert resolve_field_ref(pod(), path, pod_ip="127.0.0.2", host_ip="127.0.0.3") == expected


def test_field_ref_whole_maps_only_in_volumes() -> None:
    with pytest.raises(EnvError):
        resolve_field_ref(pod(), "metadata.labels", pod_ip="", host_ip="")
    text = resolve_field_ref(pod(), "metadata.annotations", pod_ip="", host_ip="", whole_maps=True)
    assert text == 'batch.kubernetes.io/job-completion-index="3"\nnote="a\\"b"'
    assert format_map({"b": "2", "a": "1"}) == 'a="1"\nb="2"'


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Fraction(1, 2)),
        ("2", Fraction(2)),
        ("1.5", Fraction(3, 2)),
        ("64Mi", Fraction(64 * 2**20)),
        ("1G", Fraction(10**9)),
        ("1e3", Fraction(1000)),
        ("100k", Fraction(100_000)),
        (4, Fraction(4)),
    ],
)
def test_parse_quantity(text: str | int, value: Fraction) -> None:
    assert parse_quantity(text) == value


def test_parse_quantity_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        parse_quantity("12 apples")


def test_resource_field_refs_round_up_and_default_to_allocatable() -> None:
    p = pod()
    p["spec"]["containers"][0]["resources"] = {
        "limits": {"cpu": "500m", "memory": "1Gi"},
        "requests": {"cpu": "250m"},
    }
    alloc = {"cpu": "16", "memory": "64Gi", "ephemeral-storage": "100Gi"}

    def ref(resource: str, divisor: str | None = None) -> str:
        spec = {"resource": resource, **({"divisor": divisor} if divisor else {})}
        return resolve_resource_ref(p, "main", spec, alloc)

    assert ref("limits.cpu") == "1"
    assert ref("limits.cpu", "1m") == "500"
    assert ref("requests.cpu", "1m") == "250"
    assert ref("limits.memory", "1Mi") == "1024"
    assert ref("limits.memory") == str(2**30)
    assert ref("limits.ephemeral-storage", "1Gi") == "100"  # unset: node allocatable
    assert ref("requests.memory") == str(2**30)  # unset request: the limit
    with pytest.raises(EnvError):
        resolve_resource_ref(p, "other", {"resource": "limits.cpu"}, alloc)


# ---- /etc/hosts ------------------------------------------------------------------


def test_hosts_file_lists_the_gang_in_every_dns_form() -> None:
    text = hosts_file("team-a", "train-1", "train", ["train-0", "train-1", "train-2"])
    lines = text.splitlines()
    assert "127.0.0.1\tlocalhost" in lines
    assert lines[3] == (
        "127.0.0.1\ttrain-1.train.team-a.svc.cluster.local\ttrain-1.train.team-a.svc"
        "\ttrain-1.train\ttrain-1"
    )
    for i in (0, 2):
        entry = next(line for line in lines if line.endswith(f"\ttrain-{i}"))
        assert f"train-{i}.train.team-a.svc" in entry.split("\t")
    assert sum("train-1" in line.split("\t")[-1] for line in lines) == 1  # itself once


def test_hosts_file_without_subdomain_and_with_aliases() -> None:
    text = hosts_file("ns", "pod-x", None, [], [{"ip": "10.1.2.3", "hostnames": ["db", "db2"]}])
    assert text.splitlines()[-2:] == ["127.0.0.1\tpod-x", "10.1.2.3\tdb\tdb2"]


def test_pod_hostname() -> None:
    assert pod_hostname(pod()) == "job-0-abcde"
    assert pod_hostname(pod(hostname="train-0")) == "train-0"
    long = pod()
    long["metadata"]["name"] = "a" * 62 + "-b"
    assert pod_hostname(long) == "a" * 62


# ---- images ----------------------------------------------------------------------


def test_image_repository() -> None:
    assert image_repository("finetune-trainer:test") == "finetune-trainer"
    assert image_repository("reg:5000/team/img:1.0") == "reg:5000/team/img"
    assert image_repository("reg:5000/team/img") == "reg:5000/team/img"
    assert image_repository("img@sha256:abc") == "img"


def test_image_mapping_exact_then_repository_then_default(tmp_path: Path) -> None:
    spec = {
        "stub:test": {"python": "/opt/stub/bin/python", "command": ["python", "stub.py"]},
        "trainer": {"env": {"A": "1"}},
    }
    (tmp_path / "images.json").write_text(__import__("json").dumps(spec))
    images = load_images(tmp_path / "images.json", "/default/bin/python")
    assert image_env("stub:test", images, "/x").command == ["python", "stub.py"]
    assert image_env("stub:other", images, "/x").python == "/x"  # no match: default
    assert image_env("trainer:v2", images, "/x").env == {"A": "1"}
    assert image_env("trainer:v2", images, "/x").python == "/default/bin/python"
    assert image_env("unknown", images, "/x") == ImageEnv("/x")


def test_argv_maps_python_and_keeps_args(tmp_path: Path) -> None:
    image = ImageEnv(sys.executable)
    env = {"PATH": default_path(image, "/usr/bin:/bin"), "N": "7"}
    container = {"command": ["python", "-m", "mod"], "args": ["--n=$(N)", "$$(N)"]}
    assert resolve_argv(container, image, env, str(tmp_path)) == [
        sys.executable,
        "-m",
        "mod",
        "--n=7",
        "$(N)",
    ]
    assert resolve_argv({"command": ["/usr/bin/python3"]}, image, env, "/")[0] == sys.executable
    stub = ImageEnv("/opt/py", command=["python", "stub.py"])
    argv = resolve_argv({"command": ["python", "-m", "real"], "args": ["x"]}, stub, env, "/")
    assert argv == ["/opt/py", "stub.py", "x"]  # command replaced, args kept


def test_argv_looks_up_the_path_venv_first(tmp_path: Path) -> None:
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    tool = venv / "finetune"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    image = ImageEnv(str(venv / "python"))
    path = default_path(image, "/usr/bin:/bin")
    assert path.split(":")[0] == str(venv)
    assert resolve_argv({"command": ["finetune", "operator"]}, image, {"PATH": path}, "/")[0] == (
        str(tool)
    )
    assert resolve_argv({"command": ["sh"]}, image, {"PATH": path}, "/")[0].endswith("/sh")
    with pytest.raises(CommandError, match="not found"):
        resolve_argv({"command": ["no-such-tool-xyz"]}, image, {"PATH": path}, "/")
    with pytest.raises(CommandError, match="no command"):
        resolve_argv({}, image, {"PATH": path}, "/")


# ---- identity, memory, processes -------------------------------------------------


def test_identity_container_overrides_pod() -> None:
    p = pod(securityContext={"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000})
    c = {
        "name": "main",
        "securityContext": {
            "runAsUser": 10001,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    assert identity_of(p, c) == Identity(10001, 1000, (2000,), True, True)
    assert identity_of(pod(), {"name": "main"}) == Identity()
    with pytest.raises(ValueError, match="runAsNonRoot"):
        identity_of(pod(securityContext={"runAsNonRoot": True}), {"name": "main"})


def test_memory_limit_and_oom_accounting() -> None:
    assert memory_limit({"resources": {"limits": {"memory": "128Mi"}}}) == 128 * 2**20
    assert memory_limit({"resources": {"requests": {"memory": "1Gi"}}}) is None
    status = "Name:\tpython\nVmPeak:\t  900 kB\nVmRSS:\t  2048 kB\nThreads:\t1\n"
    assert parse_vmrss(status) == 2048 * 1024
    assert parse_vmrss("Name:\tkthreadd\n") == 0
    assert over_limit(129 * 2**20, 128 * 2**20)
    assert not over_limit(128 * 2**20, 128 * 2**20)
    assert not over_limit(10**12, None)


def test_process_tree_follows_children_and_the_group() -> None:
    # pid: (ppid, pgid, start)
    table = {
        10: (1, 10, 0),  # the container
        11: (10, 10, 0),
        12: (11, 12, 0),  # a grandchild in its own group: still the container's
        13: (1, 10, 0),  # reparented to init, still in the group
        20: (1, 20, 0),  # unrelated
    }
    assert tree_pids(table, 10) == {10, 11, 12, 13}
    line = "123 (my (odd) name) S 45 123 123 0 -1 4194560 " + " ".join(["0"] * 12) + " 999 rest"
    assert parse_stat(line) == (45, 123, 999)
    me = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert parse_stat(me)[0] == os.getppid()


def test_termination_message_and_log_fallback(tmp_path: Path) -> None:
    msg, log = tmp_path / "msg", tmp_path / "log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(200)))
    msg.write_bytes(b"")
    assert termination_message(msg, log, fallback_to_logs=False, exit_code=1) == ""
    fallback = termination_message(msg, log, fallback_to_logs=True, exit_code=1)
    assert fallback.endswith("line 199\n") and fallback.startswith("line 120\n")
    assert termination_message(msg, log, fallback_to_logs=True, exit_code=0) == ""
    msg.write_bytes(b"x" * 5000)
    assert len(termination_message(msg, log, fallback_to_logs=True, exit_code=1)) == 4096
    assert tail_data(b"a\nb\nc\n", 2, None) == b"b\nc\n"
    assert tail_data(b"a\nb\nc\n", None, 3) == b"\nc\n"
    assert tail_data(b"a\nb\n", 0, None) == b""


def test_needs_traversal_finds_closed_ancestors(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    (closed / "inner").mkdir(parents=True)
    closed.chmod(0o700)
    target = closed / "inner" / "python"
    target.touch()
    assert str(closed) in needs_traversal([str(target)], 10001)
    assert needs_traversal([str(target)], 0) == []


def test_sandbox_script_binds_volumes_and_drops_privileges(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    term = tmp_path / "term"
    term.touch()
    box = Sandbox(
        new_root=tmp_path / "root",
        read_only=True,
        mounts=[Mount(vol, "/tmp"), Mount(vol, "/data/in", read_only=True)],
        file_mounts=[Mount(term, "/dev/termination-log")],
        hostname="train-0",
        identity=Identity(10001, 10001, (2000,), True, True),
        cwd="/work",
        argv=["/usr/bin/python3", "-c", "print('hi there')"],
    )
    tools = {k: f"/bin/{k}" for k in ("hostname", "mount", "mkdir", "awk", "chroot", "setpriv")}
    tools |= {"ln": "/bin/ln", "touch": "/bin/touch"}
    script = sandbox_script(box, tools)
    root = str(tmp_path / "root")
    assert f"/bin/mount --rbind / {root}" in script
    assert "remount,bind,ro" in script
    assert f"/bin/mount --bind {vol} {root}/tmp" in script
    assert f"/bin/mount -o remount,bind,ro {root}/data/in" in script
    assert "--reuid=10001 --regid=10001 --groups=2000 --no-new-privs" in script
    assert "'print('\"'\"'hi there'\"'\"')'" in script  # quoted for sh
    writable = sandbox_script(Sandbox(**{**box.__dict__, "read_only": False}), tools)
    assert "awk" not in writable


# ---- status decisions ------------------------------------------------------------


def test_phase_and_restart_rules() -> None:
    assert pod_phase({"a": 0, "b": 0}) == "Succeeded"
    assert pod_phase({"a": 0, "b": 137}) == "Failed"
    assert not should_restart("Never", 1)
    assert should_restart("OnFailure", 1) and not should_restart("OnFailure", 0)
    assert should_restart("Always", 0)
    assert [backoff_seconds(n) for n in (1, 2, 3, 10)] == [1.0, 2.0, 4.0, 30.0]


def test_probe_port_by_name() -> None:
    container = {"ports": [{"name": "health", "containerPort": 8081}]}
    assert probe_port("health", container) == 8081
    assert probe_port(8080, container) == 8080
    assert probe_port("9090", container) == 9090
    with pytest.raises(ValueError):
        probe_port("metrics", container)


def test_kubeconfig_token_and_inline_ca(tmp_path: Path) -> None:
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    (tmp_path / "kc").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
        f"clusters: [{{name: k, cluster: {{server: 'https://127.0.0.1:6443/', certificate-authority-data: {ca}}}}}]\n"
        "users: [{name: u, user: {token: abc}}]\n"
    )
    config = load_kubeconfig(tmp_path / "kc", tmp_path / "scratch")
    assert (config.server, config.host, config.port, config.token) == (
        "https://127.0.0.1:6443",
        "127.0.0.1",
        6443,
        "abc",
    )
    assert config.ca_file is not None and Path(config.ca_file).read_bytes().startswith(b"-----")


def test_unresolvable_registries_fail_to_pull() -> None:
    error = pull_error("registry.example/nope:1", {})
    assert error is not None
    assert '"registry.example/nope:1"' in error and "lookup registry.example: no such host" in error
    assert "/v2/nope/manifests/1" in error
    assert pull_error("reg.invalid:5000/a/b", {}) is not None
    assert pull_error("python:3.11", {}) is None  # no registry: present locally
    assert pull_error("ghcr.io/org/trainer:1", {}) is None
    assert (
        pull_error("registry.example/mapped:1", {"registry.example/mapped": ImageEnv("/p")}) is None
    )
    assert registry_host("localhost/x") == "localhost" and registry_host("team/x") is None


def test_image_mounts_and_user(tmp_path: Path) -> None:
    spec = {"stub": {"mounts": ["/srv/stub", "/srv/models:/models:ro"], "user": "10001:10001"}}
    (tmp_path / "images.json").write_text(__import__("json").dumps(spec))
    image = load_images(tmp_path / "images.json", "/py")["stub"]
    assert image.mounts == (("/srv/stub", "/srv/stub", False), ("/srv/models", "/models", True))
    assert parse_mount("/a:/b") == ("/a", "/b", False)
    assert image.user == (10001, 10001)
    ident = identity_of(pod(), {"name": "main"}, image.user)
    assert (ident.uid, ident.gid) == (10001, 10001)
    p = pod(securityContext={"runAsUser": 5})
    assert identity_of(p, {"name": "main"}, image.user).uid == 5  # the pod overrides USER
