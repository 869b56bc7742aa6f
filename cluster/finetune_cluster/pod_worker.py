"""One pod's life on this node: volumes, init containers, containers, status, deletion.

The status written back is what a kubelet writes (phase, conditions, container states
with exit codes, reasons and termination messages), so the real Job and Deployment
controllers, and the operator reading pod states (OOMKilled retries, gang failures),
behave as on a real cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import ClientError

from .kube_rest import Api, ApiError
from .pod_env import EnvError, build_env, referenced_objects
from .pod_images import (
    CommandError,
    ImageEnv,
    default_path,
    image_env,
    pull_error,
    resolve_argv,
)
from .pod_probes import probe_once, run_probe
from .pod_runtime import (
    ContainerProcess,
    Exit,
    Sandbox,
    identity_of,
    memory_limit,
    needs_traversal,
    read_only_root,
    sandbox_argv,
    termination_message,
)
from .pod_volumes import (
    Mount,
    PodPaths,
    PodVolumes,
    VolumeError,
    cleanup_pod_dir,
    container_mounts,
    hosts_file,
    pod_hostname,
    prepare_volumes,
    write_token,
)

log = logging.getLogger("node-agent.pod")

POD_IP = "127.0.0.1"
RETRY_SECONDS = 2.0
BACKOFF_BASE = 1.0
BACKOFF_MAX = 30.0
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
JOB_NAME_KEY = "batch.kubernetes.io/job-name"


def rfc3339(ts: float | None = None) -> str:
    moment = datetime.fromtimestamp(ts, UTC) if ts is not None else datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class LogState:
    """A container's current log, for the kubelet endpoint (follow ends with the run)."""

    path: Path
    running: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class NodeContext:
    """What every pod worker of the agent shares."""

    api: Api
    state_dir: Path
    allocatable: dict[str, str]
    images: dict[str, ImageEnv]
    default_python: str
    cwd: str
    tools: dict[str, str]
    service_env: dict[str, str]
    host_path: str
    lang: str | None
    logs: dict[tuple[str, str, str], LogState] = field(default_factory=dict)


def pod_phase(exit_codes: Mapping[str, int]) -> str:
    """The terminal phase once every container has exited for good."""
    return "Succeeded" if all(code == 0 for code in exit_codes.values()) else "Failed"


def terminated_reason(ex: Exit) -> str:
    if ex.oom_killed:
        return "OOMKilled"
    return "Completed" if ex.exit_code == 0 else "Error"


def should_restart(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def backoff_seconds(restarts: int) -> float:
    """Seconds before restart n (1 s doubling to 30 s: shorter than the kubelet's
    10 s..5 min, so crash loops in tests stay quick)."""
    return float(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, restarts - 1)))


class PodWorker:
    """Runs one pod; `update` feeds it the latest object from the watch."""

    def __init__(self, ctx: NodeContext, pod: dict[str, Any]) -> None:
        self.ctx = ctx
        self.pod = pod
        meta = pod["metadata"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.paths = PodPaths(ctx.state_dir, self.ns, self.name, self.uid)
        self.statuses: dict[str, dict[str, Any]] = {}
        self.init_statuses: dict[str, dict[str, Any]] = {}
        self.procs: dict[str, ContainerProcess] = {}
        self.conditions: dict[str, dict[str, Any]] = {}
        self.phase = "Pending"
        self.start_time = (pod.get("status") or {}).get("startTime") or rfc3339()
        self.volumes = PodVolumes()
        self.terminating = False
        self.gone = False
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._dirty = False
        self._flusher: asyncio.Task[None] | None = None
        self._cache: dict[tuple[str, str], dict[str, Any] | None] = {}

    # ---- feeding -----------------------------------------------------------------

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.pod["spec"])

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"pod {self.ns}/{self.name}")

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.terminating:
            self.begin_termination(self.grace_seconds())

    def forget(self) -> None:
        """The pod is gone from the API: kill its processes at once, write nothing."""
        self.gone = True
        self.begin_termination(0)

    def grace_seconds(self) -> float:
        meta = self.pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.spec.get("terminationGracePeriodSeconds", 30)
        return float(grace)

    def begin_termination(self, grace: float) -> None:
        """SIGTERM every container now, SIGKILL what is left after the grace period."""
        self.terminating = True
        self.wake.set()
        for proc in list(self.procs.values()):
            proc.signal(signal.SIGKILL if grace <= 0 else signal.SIGTERM)
        if grace > 0:
            asyncio.get_running_loop().call_later(grace, self._kill_all)

    def _kill_all(self) -> None:
        for proc in list(self.procs.values()):
            proc.signal(signal.SIGKILL)

    async def shutdown(self) -> None:
        """The agent stops: kill the pod's process groups and wait for the worker."""
        self.gone = True
        self.begin_termination(0)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        self._kill_all()

    # ---- life cycle --------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._life()
        except asyncio.CancelledError:
            self._kill_all()
            raise
        except Exception:
            log.exception("pod %s/%s: worker failed", self.ns, self.name)
            self._kill_all()
        while not self.terminating:  # done: the pod object stays until it is deleted
            await self._sleep(3600)
        if self.gone:
            cleanup_pod_dir(self.paths)
        elif self.pod["metadata"].get("deletionTimestamp"):
            await self._final_delete()

    async def _life(self) -> None:
        status = self.pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed") or self.terminating:
            return  # finished before an agent restart, or deleted before it started
        restarts = await self._resume(status)
        if self.phase != "Pending":
            return
        self._set_condition("PodScheduled", True)
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled":
                self.conditions["PodScheduled"] = dict(cond)
        init = self.spec.get("initContainers") or []
        for c in init:
            self.init_statuses[c["name"]] = self._waiting(c, "PodInitializing", restarts)
        for c in self.spec["containers"]:
            reason = "PodInitializing" if init else "ContainerCreating"
            self.statuses[c["name"]] = self._waiting(c, reason, restarts)
        self._set_condition("PodReadyToStartContainers", False)
        self._set_condition("Initialized", not init, "ContainersNotInitialized")
        self._set_condition("ContainersReady", False, "ContainersNotReady")
        self._set_condition("Ready", False, "ContainersNotReady")
        await self.push()

        if not await self._prepare():
            return
        self._set_condition("PodReadyToStartContainers", True)
        await self.push()
        refresher = asyncio.create_task(self._refresh_tokens())
        sidecars: list[asyncio.Task[int | None]] = []
        try:
            for c in init:
                if c.get("restartPolicy") == "Always":  # a sidecar: keeps running
                    sidecars.append(asyncio.create_task(self._run_container(c, True, restarts)))
                    await self._started(c["name"], init=True)
                    continue
                code = await self._run_container(c, True, restarts)
                if code != 0 or self.terminating:
                    await self._finish({c["name"]: code if code is not None else 1})
                    return
            self._set_condition("Initialized", True)
            runs = [self._run_container(c, False, restarts) for c in self.spec["containers"]]
            codes = await asyncio.gather(*runs)
            for c in init:
                if c.get("restartPolicy") == "Always" and c["name"] in self.procs:
                    self.procs[c["name"]].signal(signal.SIGTERM)
            await asyncio.gather(*sidecars, return_exceptions=True)
            exit_codes = {
                c["name"]: code if code is not None else 137
                for c, code in zip(self.spec["containers"], codes, strict=True)
            }
            await self._finish(exit_codes)
        finally:
            refresher.cancel()
            for task in sidecars:
                task.cancel()

    async def _resume(self, status: dict[str, Any]) -> int:
        """After an agent restart: a pod whose containers had started has lost them.
        With restartPolicy Never it fails (ContainerStatusUnknown), else it restarts."""
        started = [
            cs
            for cs in status.get("containerStatuses") or []
            if "running" in (cs.get("state") or {}) or "terminated" in (cs.get("state") or {})
        ]
        if not started and status.get("phase") != "Running":
            return 0
        restarts = max((int(cs.get("restartCount") or 0) for cs in started), default=0)
        if self.spec.get("restartPolicy", "Always") != "Never":
            return restarts + 1
        for c in self.spec["containers"]:
            self.statuses[c["name"]] = {
                **self._waiting(c, "", restarts),
                "state": {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located when the pod was terminated",
                        "startedAt": self.start_time,
                        "finishedAt": rfc3339(),
                    }
                },
            }
        self.phase = "Failed"
        self._set_condition("Ready", False, "PodFailed")
        self._set_condition("ContainersReady", False, "PodFailed")
        await self.push()
        return restarts

    async def _sleep(self, seconds: float) -> None:
        """Sleep, woken early by termination."""
        self.wake.clear()
        if self.terminating:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)

    async def _prepare(self) -> bool:
        """Volumes and /etc/hosts, retried (FailedMount) until they work or the pod goes."""
        while not self.terminating:
            try:
                self.paths.root.mkdir(parents=True, exist_ok=True)
                self.volumes = await prepare_volumes(
                    self.ctx.api, self.pod, self.paths, self.ctx.allocatable
                )
                self.paths.hosts().write_text(
                    hosts_file(
                        self.ns,
                        pod_hostname(self.pod),
                        self.spec.get("subdomain"),
                        await self._job_peers(),
                        self.spec.get("hostAliases"),
                    )
                )
                return True
            except (VolumeError, EnvError, ApiError, ClientError, OSError, ValueError) as err:
                log.warning("pod %s/%s: volumes: %s", self.ns, self.name, err)
                for cs in self.statuses.values():
                    waiting = cs["state"].get("waiting")
                    if waiting is not None:
                        waiting["message"] = f"FailedMount: {err}"
                await self.push()
                await self._sleep(RETRY_SECONDS)
        return False

    async def _job_peers(self) -> list[str]:
        """Hostnames `<job>-<i>` of an Indexed Job's pods (its gang), else none."""
        labels = self.pod["metadata"].get("labels") or {}
        job = labels.get(JOB_NAME_KEY)
        if not job or not self.spec.get("subdomain"):
            return []
        obj = await self.ctx.api.get_or_none(f"/apis/batch/v1/namespaces/{self.ns}/jobs/{job}")
        if not obj or obj["spec"].get("completionMode") != "Indexed":
            return []
        return [f"{job}-{i}" for i in range(int(obj["spec"].get("completions") or 1))]

    async def _refresh_tokens(self) -> None:
        """Re-request projected tokens at 80% of their lifetime, as the kubelet does."""
        if not self.volumes.tokens:
            return
        fs_group = (self.spec.get("securityContext") or {}).get("fsGroup")
        period = min(t.expiration_seconds for t in self.volumes.tokens) * 0.8
        while True:
            await asyncio.sleep(period)
            for token in self.volumes.tokens:
                try:
                    await write_token(self.ctx.api, self.pod, token, fs_group)
                except (VolumeError, OSError) as err:
                    log.warning("pod %s/%s: token refresh: %s", self.ns, self.name, err)

    # ---- containers --------------------------------------------------------------

    def _waiting(self, c: dict[str, Any], reason: str, restarts: int) -> dict[str, Any]:
        waiting = {"reason": reason} if reason else {}
        return {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": restarts,
            "state": {"waiting": waiting},
        }

    def _launch(self, c: dict[str, Any]) -> tuple[list[str], dict[str, str], ImageEnv, int | None]:
        """argv (the sandbox), env and image of one container start; raises EnvError,
        VolumeError, CommandError or ValueError (identity)."""
        image = image_env(c.get("image", ""), self.ctx.images, self.ctx.default_python)
        hostname = pod_hostname(self.pod)
        base = {"PATH": default_path(image, self.ctx.host_path), "HOSTNAME": hostname}
        if self.ctx.lang:
            base["LANG"] = self.ctx.lang
        base.update(image.env)
        secrets, maps = referenced_objects(c)
        env = build_env(
            self.pod,
            c,
            service_env=self.ctx.service_env,
            secrets=self._objects("secrets", secrets),
            config_maps=self._objects("configmaps", maps),
            allocatable=self.ctx.allocatable,
            pod_ip=POD_IP,
            host_ip=POD_IP,
        )
        env = {**base, **env}
        ident = identity_of(self.pod, c, image.user)
        cwd = c.get("workingDir") or self.ctx.cwd
        argv = resolve_argv(c, image, env, cwd)
        mounts = container_mounts(c, self.volumes.volumes, env)
        mounts += [Mount(Path(host), path, ro) for host, path, ro in image.mounts]
        term = self.paths.termination_log(c["name"])
        term.write_bytes(b"")
        os.chmod(term, 0o666)
        files = [
            Mount(term, c.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH),
            Mount(self.paths.hosts(), "/etc/hosts"),
        ]
        new_root = self.paths.new_root(c["name"])
        new_root.mkdir(parents=True, exist_ok=True)
        box = Sandbox(
            new_root=new_root,
            read_only=read_only_root(c),
            mounts=mounts,
            file_mounts=files,
            hostname=hostname,
            identity=ident,
            cwd=cwd,
            argv=argv,
            expose=needs_traversal([argv[0], image.python, cwd], ident.uid),
        )
        return sandbox_argv(box, self.ctx.tools), env, image, memory_limit(c)

    def _objects(self, plural: str, names: set[str]) -> dict[str, dict[str, Any] | None]:
        return {name: self._cache.get((plural, name)) for name in names}

    async def _fetch_objects(self, c: dict[str, Any]) -> None:
        """Fetch the secrets and config maps the env refers to (before `_launch`)."""
        secrets, maps = referenced_objects(c)
        self._cache = {}
        for plural, names in (("secrets", secrets), ("configmaps", maps)):
            for name in names:
                path = f"/api/v1/namespaces/{self.ns}/{plural}/{name}"
                self._cache[(plural, name)] = await self.ctx.api.get_or_none(path)

    async def _run_container(self, c: dict[str, Any], init: bool, restarts: int) -> int | None:
        """Start the container, restart it as its policy says; its last exit code (None:
        never ran, the pod went first)."""
        name = c["name"]
        table = self.init_statuses if init else self.statuses
        policy = c.get("restartPolicy") if init else None
        policy = policy or self.spec.get("restartPolicy", "Always")
        if init and policy != "Always":
            policy = "Never" if self.spec.get("restartPolicy") == "Never" else "OnFailure"
        last: int | None = None
        key = (self.ns, self.name, name)
        while not self.terminating:
            cs = table[name]
            cs["restartCount"] = restarts
            if not await self._pull(c, cs):
                break
            try:
                await self._fetch_objects(c)
                argv, env, _image, limit = self._launch(c)
            except (EnvError, VolumeError, ValueError, ApiError, ClientError, OSError) as err:
                cs["state"] = {
                    "waiting": {"reason": "CreateContainerConfigError", "message": str(err)}
                }
                await self.push()
                await self._sleep(RETRY_SECONDS)
                continue
            except CommandError as err:
                now = rfc3339()
                ex_state = {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": str(err),
                    "startedAt": now,
                    "finishedAt": now,
                }
                last = 128
            else:
                log_path = self.paths.log(name)
                if log_path.exists():
                    os.replace(log_path, log_path.with_name(log_path.name + ".1"))
                state = LogState(log_path, running=True)
                self.ctx.logs[key] = state
                proc = ContainerProcess(argv, env, log_path, self.paths.root / f"{name}.pid")
                await proc.start()
                self.procs[name] = proc
                if self.terminating:  # deleted while starting
                    proc.signal(signal.SIGKILL)
                cs.update(
                    containerID=f"local://{proc.pid}",
                    imageID=f"local://{c.get('image', '')}",
                    started=not c.get("startupProbe"),
                    ready=not init and not c.get("readinessProbe") and not c.get("startupProbe"),
                    state={"running": {"startedAt": rfc3339(proc.started_at)}},
                )
                if init and policy == "Always":
                    cs["ready"] = not c.get("readinessProbe")
                self._update_running()
                await self.push()
                probes = asyncio.create_task(self._probe(c, proc, cs, env, init))
                try:
                    ex = await proc.wait(limit)
                finally:
                    probes.cancel()
                    state.running = False
                    state.finished.set()
                    self.procs.pop(name, None)
                last = ex.exit_code
                fallback = c.get("terminationMessagePolicy") == "FallbackToLogsOnError"
                message = termination_message(
                    self.paths.termination_log(name), log_path, fallback, ex.exit_code
                )
                ex_state = {
                    "exitCode": ex.exit_code,
                    "reason": terminated_reason(ex),
                    "startedAt": rfc3339(ex.started_at),
                    "finishedAt": rfc3339(ex.finished_at),
                    "containerID": f"local://{proc.pid}",
                }
                if message:
                    ex_state["message"] = message
            cs.update(ready=False, state={"terminated": ex_state})
            self._update_running()
            if self.terminating or not should_restart(policy, last):
                # The last regular container to end: the pod's final phase and this state
                # go out in one status (_finish), as a kubelet's do. A status of phase
                # Running with every container terminated made the operator see a
                # finished trainer as "Starting" (found by the fault tests).
                regular = [self.statuses[x["name"]] for x in self.spec["containers"]]
                if not all("terminated" in x["state"] for x in regular):
                    await self.push()
                return last
            restarts += 1
            delay = backoff_seconds(restarts)
            cs["lastState"] = cs["state"]
            cs["state"] = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:g}s restarting failed container={name} "
                    f"pod={self.name}_{self.ns}({self.uid})",
                }
            }
            await self.push()
            await self._sleep(delay)
        return last

    async def _pull(self, c: dict[str, Any], cs: dict[str, Any]) -> bool:
        """ErrImagePull, then ImagePullBackOff, retried until the image "pulls" (never,
        for an unresolvable registry) or the pod goes. False when the pod went first."""
        image = str(c.get("image", ""))
        attempts = 0
        while not self.terminating:
            error = pull_error(image, self.ctx.images)
            if error is None:
                return True
            attempts += 1
            cs["state"] = {"waiting": {"reason": "ErrImagePull", "message": error}}
            await self.push()
            await self._sleep(1.0)
            message = f'Back-off pulling image "{image}": ErrImagePull: {error}'
            cs["state"] = {"waiting": {"reason": "ImagePullBackOff", "message": message}}
            await self.push()
            await self._sleep(backoff_seconds(attempts))
        return False

    async def _started(self, name: str, *, init: bool) -> None:
        """Wait until a sidecar reports started (or the pod goes)."""
        table = self.init_statuses if init else self.statuses
        while not self.terminating and not table[name].get("started"):
            await asyncio.sleep(0.2)

    async def _probe(
        self,
        c: dict[str, Any],
        proc: ContainerProcess,
        cs: dict[str, Any],
        env: dict[str, str],
        init: bool,
    ) -> None:
        """Startup, then liveness and readiness probes of one container start."""
        image = image_env(c.get("image", ""), self.ctx.images, self.ctx.default_python)
        ident = identity_of(self.pod, c, image.user)

        def attempt(probe: dict[str, Any]) -> Any:
            return lambda: probe_once(probe, c, env, proc.pid, (ident.uid, ident.gid))

        def kill(ok: bool) -> None:
            if not ok:
                log.info("pod %s/%s: %s failed its probe, killing", self.ns, self.name, c["name"])
                proc.signal(signal.SIGTERM)
                grace = float(self.spec.get("terminationGracePeriodSeconds", 30))
                asyncio.get_running_loop().call_later(grace, proc.signal, signal.SIGKILL)

        def ready(ok: bool) -> None:
            if cs.get("ready") != ok:
                cs["ready"] = ok
                self._update_running()
                asyncio.get_running_loop().create_task(self.push())

        if c.get("startupProbe"):
            await run_probe(c["startupProbe"], attempt(c["startupProbe"]), kill, until_success=True)
            cs["started"] = True
            if not c.get("readinessProbe") and not init:
                ready(True)
            else:
                await self.push()
        tasks = []
        if c.get("livenessProbe"):
            tasks.append(run_probe(c["livenessProbe"], attempt(c["livenessProbe"]), kill))
        if c.get("readinessProbe"):
            tasks.append(run_probe(c["readinessProbe"], attempt(c["readinessProbe"]), ready))
        if tasks:
            await asyncio.gather(*tasks)

    # ---- status ------------------------------------------------------------------

    def _set_condition(self, kind: str, value: bool, reason: str = "") -> None:
        status = "True" if value else "False"
        old = self.conditions.get(kind)
        if old and old.get("status") == status:
            if reason and not value:
                old["reason"] = reason
            return
        cond: dict[str, Any] = {"type": kind, "status": status, "lastTransitionTime": rfc3339()}
        cond["lastProbeTime"] = None
        if reason and not value:
            cond["reason"] = reason
        self.conditions[kind] = cond

    def _update_running(self) -> None:
        """Phase Running once a regular container has started; readiness conditions."""
        if self.phase in ("Succeeded", "Failed"):
            return
        regular = [self.statuses[c["name"]] for c in self.spec["containers"]]
        if any(
            "running" in cs["state"] or "terminated" in cs["state"] or cs.get("lastState")
            for cs in regular
        ):
            self.phase = "Running"
        ready = all(cs.get("ready") for cs in regular)
        self._set_condition("ContainersReady", ready, "ContainersNotReady")
        self._set_condition("Ready", ready, "ContainersNotReady")

    async def _finish(self, exit_codes: Mapping[str, int]) -> None:
        self.phase = pod_phase(exit_codes)
        for cs in self.statuses.values():
            cs["ready"] = False
        self._set_condition("ContainersReady", False, "PodCompleted")
        self._set_condition("Ready", False, "PodCompleted")
        await self.push()
        for name in [*self.statuses, *self.init_statuses]:
            self.ctx.logs.pop((self.ns, self.name, name), None)
        cleanup_pod_dir(self.paths, keep_logs=True)

    def status_body(self) -> dict[str, Any]:
        """The whole status as a merge patch (lists replaced entirely)."""
        keep = [
            c
            for c in (self.pod.get("status") or {}).get("conditions") or []
            if c.get("type") not in self.conditions
        ]
        status: dict[str, Any] = {
            "phase": self.phase,
            "conditions": [*self.conditions.values(), *keep],
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": self.start_time,
            "containerStatuses": [
                self.statuses[c["name"]]
                for c in self.spec["containers"]
                if c["name"] in self.statuses
            ],
        }
        init = [
            self.init_statuses[c["name"]]
            for c in self.spec.get("initContainers") or []
            if c["name"] in self.init_statuses
        ]
        if init:
            status["initContainerStatuses"] = init
        return {"status": status}

    async def push(self) -> None:
        """Write the current status; returns once it (or a newer one) is stored.

        One flusher per pod sends the latest status, retrying through API outages (an
        apiserver restart must not lose a pod's final state), so bursts coalesce."""
        if self.gone:
            return
        self._dirty = True
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        path = f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status"
        delay = 0.5
        while self._dirty and not self.gone:
            self._dirty = False
            try:
                answer = await self.ctx.api.merge_patch(path, self.status_body())
            except ApiError as err:
                if err.status == 404:
                    self.gone = True
                    return
                log.warning("pod %s/%s: status: %s", self.ns, self.name, err)
                if err.status < 500 and err.status != 429:
                    continue  # refused as invalid: retrying the same body would not help
            except (OSError, TimeoutError, ClientError) as err:
                log.warning("pod %s/%s: status (retrying): %s", self.ns, self.name, err)
            else:
                delay = 0.5
                if answer.get("metadata", {}).get("uid") == self.uid:
                    self.pod = {**self.pod, "status": answer.get("status", {})}
                continue
            self._dirty = True
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)

    async def _final_delete(self) -> None:
        """The kubelet's last word: delete the terminated pod with grace period 0."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        path = f"/api/v1/namespaces/{self.ns}/pods/{self.name}"
        for attempt in range(30):  # through an apiserver restart
            try:
                await self.ctx.api.delete(path, body)
                break
            except ApiError as err:
                if err.status not in (404, 409):
                    log.warning("pod %s/%s: final delete: %s", self.ns, self.name, err)
                if err.status < 500:
                    break
            except (ClientError, OSError, TimeoutError) as err:
                log.warning("pod %s/%s: final delete (retrying): %s", self.ns, self.name, err)
            await asyncio.sleep(min(5.0, 0.5 * 2**attempt))
        cleanup_pod_dir(self.paths, keep_logs=True)
