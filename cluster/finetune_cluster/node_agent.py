"""A small kubelet: registers Nodes and runs the pods bound to them as local processes.

    python -m finetune_cluster.node_agent --kubeconfig K --state-dir DIR \
        [--node NAME ...] [--gpus 4] [--cpu 16] [--memory 64Gi] [--port-base 10250] \
        [--images FILE.json] [--python PATH] [--workdir DIR] [--delete-nodes-on-exit]

With a real control plane (controlplane.py) the scheduler binds pods to these Nodes and
the Job/Deployment controllers see real pod states: the agent is the one piece of a
cluster that is emulated, at the container-runtime boundary. Pods run in this machine's
Python environment (pod_images), in private mount namespaces with their volumes
(pod_runtime, pod_volumes); `kubectl logs` reaches them through the apiserver and the
kubelet endpoint (kubelet_server). Runs as root (mount namespaces, chroot, setuid).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

from aiohttp import ClientError

from .kube_rest import Api, ApiError, load_kubeconfig, sleep_or_stop
from .kubelet_server import serve
from .pod_images import ImageEnv, load_images
from .pod_runtime import kill_stale, tool_paths
from .pod_volumes import PodPaths, cleanup_pod_dir
from .pod_worker import LogState, NodeContext, PodWorker, rfc3339

log = logging.getLogger("node-agent")

KUBELET_VERSION = "v1.37.2"
STATUS_SECONDS = 20.0
LEASE_SECONDS = 10.0
LEASE_DURATION = 40
WATCH_RETRY_SECONDS = 1.0
CONDITION_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def node_object(name: str, port: int, capacity: dict[str, str]) -> dict[str, Any]:
    """The Node as registered: labels, no taints, capacity = allocatable, Ready."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {},
        "status": node_status(name, port, capacity),
    }


def node_status(
    name: str, port: int, capacity: dict[str, str], since: str | None = None
) -> dict[str, Any]:
    """The Node's status (conditions' heartbeat now, unchanged since `since`); sent whole
    as a merge patch."""
    now = rfc3339()
    uname = platform.uname()

    def cond(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": since or now,
        }

    return {
        "capacity": dict(capacity),
        "allocatable": dict(capacity),
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
            cond("Ready", "True", "KubeletReady", "finetune node agent is posting ready status"),
        ],
        "nodeInfo": {
            "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, f"{uname.node}/{name}").hex,
            "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
            "bootID": _boot_id(),
            "kernelVersion": uname.release,
            "osImage": _os_image(),
            "containerRuntimeVersion": "local://0.1.0",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _os_image() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "Linux"


class NodeAgent:
    """The Nodes, their heartbeats and leases, and one pod watch per Node."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state_dir: Path = args.state_dir.resolve()
        self.nodes: list[str] = args.node or ["node-0"]
        self.ports = {name: args.port_base + i for i, name in enumerate(self.nodes)}
        self.capacity = {
            "cpu": str(args.cpu),
            "memory": str(args.memory),
            "pods": "110",
            "nvidia.com/gpu": str(args.gpus),
            "ephemeral-storage": "100Gi",
        }
        self.workers: dict[str, PodWorker] = {}
        self.since = rfc3339()  # the conditions' last transition: this agent's start
        self.stop = asyncio.Event()
        self.ctx: NodeContext | None = None

    # ---- nodes -------------------------------------------------------------------

    async def register(self, api: Api, name: str) -> None:
        """Create the Node, or update an existing one (agent restart): idempotent."""
        body = node_object(name, self.ports[name], self.capacity)
        try:
            await api.create("/api/v1/nodes", body)
        except ApiError as err:
            if err.status != 409:
                raise
            await api.merge_patch(
                f"/api/v1/nodes/{name}", {"metadata": {"labels": body["metadata"]["labels"]}}
            )
        await self.post_status(api, name)
        await self.untaint(api, name)

    async def untaint(self, api: Api, name: str) -> None:
        """Drop the not-ready/unreachable taints (TaintNodesByCondition admission adds
        not-ready on create; the node lifecycle controller, which would lift it once
        Ready, may not run here). Other taints (a test's own) stay."""
        node = await api.get(f"/api/v1/nodes/{name}")
        taints = node.get("spec", {}).get("taints") or []
        keep = [t for t in taints if t.get("key") not in CONDITION_TAINTS]
        if len(keep) != len(taints):
            await api.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"taints": keep or None}})

    async def post_status(self, api: Api, name: str) -> None:
        status = node_status(name, self.ports[name], self.capacity, self.since)
        await api.merge_patch(f"/api/v1/nodes/{name}/status", {"status": status})

    async def renew_lease(self, api: Api, name: str, node_uid: str | None) -> None:
        """The node heartbeat the node lifecycle controller reads (kube-node-lease)."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        now = rfc3339().replace("Z", ".000000Z")
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION, "renewTime": now}
        try:
            await api.merge_patch(path, {"spec": spec})
        except ApiError as err:
            if err.status != 404:
                raise
            meta: dict[str, Any] = {"name": name, "namespace": "kube-node-lease"}
            if node_uid:
                meta["ownerReferences"] = [
                    {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}
                ]
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": meta,
                "spec": spec,
            }
            await api.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body)

    async def heartbeat(self, api: Api, name: str) -> None:
        """Lease every 10 s, Ready heartbeat every 20 s; errors are logged and retried."""
        node_uid: str | None = None
        ticks = 0
        while not self.stop.is_set():
            try:
                if node_uid is None:
                    node = await api.get_or_none(f"/api/v1/nodes/{name}")
                    if node is None:
                        await self.register(api, name)
                        continue
                    node_uid = node["metadata"]["uid"]
                await self.renew_lease(api, name, node_uid)
                if ticks % int(STATUS_SECONDS / LEASE_SECONDS) == 0 and ticks:
                    await self.post_status(api, name)
                    await self.untaint(api, name)
                ticks += 1
            except (ApiError, ClientError, OSError, TimeoutError) as err:
                log.warning("node %s: heartbeat: %s", name, err)
                if isinstance(err, ApiError) and err.status == 404:
                    node_uid = None  # the Node was deleted: register again
            await sleep_or_stop(self.stop, LEASE_SECONDS)

    # ---- pods --------------------------------------------------------------------

    def on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                self.workers.pop(uid)
                worker.forget()
            if worker is None or worker.task is None or worker.task.done():
                meta = pod["metadata"]
                cleanup_pod_dir(PodPaths(self.state_dir, meta["namespace"], meta["name"], uid))
            return
        if worker is None:
            assert self.ctx is not None
            worker = PodWorker(self.ctx, pod)
            self.workers[uid] = worker
            worker.update(pod)
            worker.start()
            log.info("pod %s/%s: started worker", pod["metadata"]["namespace"], worker.name)
        else:
            worker.update(pod)

    async def watch_pods(self, api: Api, node: str) -> None:
        """List then watch the node's pods; resume on resourceVersion, relist on 410."""
        selector = f"spec.nodeName={node}"
        rv: str | None = None
        while not self.stop.is_set():
            try:
                if rv is None:
                    listing = await api.get("/api/v1/pods", fieldSelector=selector)
                    rv = listing["metadata"]["resourceVersion"]
                    seen = set()
                    for pod in listing.get("items") or []:
                        seen.add(pod["metadata"]["uid"])
                        self.on_pod("MODIFIED", pod)
                    for uid, worker in list(self.workers.items()):
                        if worker.pod["spec"].get("nodeName") == node and uid not in seen:
                            self.on_pod("DELETED", worker.pod)
                async for event in api.watch("/api/v1/pods", rv, fieldSelector=selector):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            rv = None
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion") or rv
                    if kind == "BOOKMARK":
                        continue
                    self.on_pod(str(kind), obj)
            except ApiError as err:
                if err.status == 410:
                    rv = None
                else:
                    log.warning("node %s: pod watch: %s", node, err)
                    await sleep_or_stop(self.stop, WATCH_RETRY_SECONDS)
            except (ClientError, OSError, TimeoutError, ValueError) as err:
                log.warning("node %s: pod watch: %s", node, err)
                await sleep_or_stop(self.stop, WATCH_RETRY_SECONDS)

    def log_lookup(self, ns: str, pod: str, container: str) -> tuple[Path | None, LogState | None]:
        """The log of a container: the running one, else the newest on disk."""
        assert self.ctx is not None
        state = self.ctx.logs.get((ns, pod, container))
        if state is not None:
            return state.path, state
        candidates = sorted(
            (self.state_dir / "pods").glob(f"{ns}_{pod}_*/{container}.log"),
            key=lambda p: p.stat().st_mtime,
        )
        return (candidates[-1], None) if candidates else (None, None)

    # ---- main --------------------------------------------------------------------

    async def run(self) -> None:
        args = self.args
        (self.state_dir / "pods").mkdir(parents=True, exist_ok=True)
        stale = kill_stale(self.state_dir)
        if stale:
            log.warning("killed %d container process group(s) left by a previous agent", stale)
        config = load_kubeconfig(args.kubeconfig, self.state_dir / "kubeconfig")
        python = str(args.python or sys.executable)
        images: dict[str, ImageEnv] = load_images(args.images, python) if args.images else {}
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        async with Api(config) as api:
            self.ctx = NodeContext(
                api=api,
                state_dir=self.state_dir,
                allocatable=dict(self.capacity),
                images=images,
                default_python=python,
                cwd=str(Path(args.workdir or os.getcwd()).resolve()),
                tools=tool_paths(),
                service_env={
                    "KUBERNETES_SERVICE_HOST": config.host,
                    "KUBERNETES_SERVICE_PORT": str(config.port),
                    "KUBERNETES_SERVICE_PORT_HTTPS": str(config.port),
                    "KUBERNETES_PORT": f"tcp://{config.host}:{config.port}",
                },
                host_path=os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
                lang=os.environ.get("LANG"),
            )
            runner = await serve(
                self.log_lookup, list(self.ports.values()), self.state_dir / "kubelet"
            )
            try:
                for node in self.nodes:
                    await self.register(api, node)
                    log.info("node %s registered (kubelet port %d)", node, self.ports[node])
                tasks = [asyncio.create_task(self.heartbeat(api, n)) for n in self.nodes]
                tasks += [asyncio.create_task(self.watch_pods(api, n)) for n in self.nodes]
                await self.stop.wait()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                await self.shutdown(api)
                await runner.cleanup()

    async def shutdown(self, api: Api) -> None:
        """Kill every pod's process group (no orphans); optionally delete the Nodes."""
        workers = list(self.workers.values())
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        if self.args.delete_nodes_on_exit:
            for node in self.nodes:
                with contextlib.suppress(ApiError, ClientError, OSError, TimeoutError):
                    await api.delete(f"/api/v1/nodes/{node}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m finetune_cluster.node_agent")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--node", action="append", help="a Node to register (repeatable)")
    parser.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu per node")
    parser.add_argument("--cpu", default="16")
    parser.add_argument("--memory", default="64Gi")
    parser.add_argument("--port-base", type=int, default=10250, help="kubelet port of node 0")
    parser.add_argument("--images", type=Path, help="JSON: image -> {python, command, env}")
    parser.add_argument("--python", help="what `python` means in pods (default: this one)")
    parser.add_argument("--workdir", help="default working directory of containers (cwd)")
    parser.add_argument("--delete-nodes-on-exit", action="store_true")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if os.geteuid() != 0:
        sys.exit("node agent: must run as root (mount namespaces, chroot, setuid)")
    asyncio.run(NodeAgent(args).run())


if __name__ == "__main__":
    main()
