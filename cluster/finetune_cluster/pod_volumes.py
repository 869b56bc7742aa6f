"""A pod's volumes as folders on this machine, and the files the kubelet writes for it.

Each volume becomes a host folder that the container's private mount namespace binds at
its mountPath (pod_runtime): emptyDir and projected content under the pod's state
folder, a PVC under `state-dir/pvc/<namespace>/<claim>` (kept across pods, so a
claim's data outlives them as on a real volume), hostPath as is. Service-account tokens
come from the TokenRequest API, bound to the pod, so in-cluster clients are subject to
RBAC exactly as on a real node.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .kube_rest import Api, ApiError
from .pod_env import EnvError, expand, parse_quantity, resolve_field_ref, resolve_resource_ref

TOKEN_DEFAULT_SECONDS = 3600
_SOURCE_KINDS = (
    "emptyDir",
    "persistentVolumeClaim",
    "hostPath",
    "secret",
    "configMap",
    "projected",
    "downwardAPI",
)


class VolumeError(Exception):
    """A volume cannot be set up yet (the kubelet's FailedMount; retried)."""


@dataclass
class PodPaths:
    """Where a pod's state lives: `state-dir/pods/<ns>_<pod>_<uid>/`."""

    state_dir: Path
    namespace: str
    name: str
    uid: str

    @property
    def root(self) -> Path:
        return self.state_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid}"

    @property
    def volumes(self) -> Path:
        return self.root / "volumes"

    def log(self, container: str) -> Path:
        return self.root / f"{container}.log"

    def termination_log(self, container: str) -> Path:
        return self.root / f"{container}.termination-log"

    def hosts(self) -> Path:
        return self.root / "etc-hosts"

    def new_root(self, container: str) -> Path:
        return self.root / f"rootfs-{container}"


@dataclass
class Volume:
    """A volume's host folder (or file) and how it is mounted by default."""

    path: Path
    read_only: bool = False
    tmpfs: bool = False


@dataclass(frozen=True)
class Mount:
    """One bind into the container: host source -> container path."""

    source: Path
    target: str
    read_only: bool = False


@dataclass
class TokenFile:
    """A projected service-account token to write now and refresh at 80% of its life."""

    path: Path
    audience: str | None
    expiration_seconds: int
    mode: int


@dataclass
class PodVolumes:
    volumes: dict[str, Volume] = field(default_factory=dict)
    tokens: list[TokenFile] = field(default_factory=list)


def hosts_file(
    namespace: str,
    hostname: str,
    subdomain: str | None,
    peers: list[str],
    host_aliases: list[dict[str, Any]] | None = None,
    ip: str = "127.0.0.1",
) -> str:
    """The pod's /etc/hosts: localhost, itself and, with a subdomain, every peer hostname
    of its Job in all the forms cluster DNS would resolve (there is no DNS here)."""
    lines = [
        "# Kubernetes-managed hosts file (finetune node agent).",
        f"{ip}\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    names = [hostname, *[p for p in peers if p != hostname]]
    for name in names:
        forms = []
        if subdomain:
            base = f"{name}.{subdomain}"
            forms = [f"{base}.{namespace}.svc.cluster.local", f"{base}.{namespace}.svc", base]
        lines.append("\t".join([ip, *forms, name]))
    for alias in host_aliases or []:
        if alias.get("ip") and alias.get("hostnames"):
            lines.append("\t".join([str(alias["ip"]), *map(str, alias["hostnames"])]))
    return "\n".join(lines) + "\n"


def pod_hostname(pod: dict[str, Any]) -> str:
    """spec.hostname, else the pod name (cut to 63 characters, as the kubelet does)."""
    spec = pod.get("spec") or {}
    name = str(spec.get("hostname") or pod["metadata"]["name"])
    return name[:63].rstrip("-.")


def _object_bytes(obj: dict[str, Any], *, secret: bool) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if secret:
        out = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    else:
        out = {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
        out.update({k: str(v).encode() for k, v in (obj.get("data") or {}).items()})
    return out


def _select(
    data: Mapping[str, bytes], items: list[dict[str, Any]] | None, mode: int, what: str
) -> dict[str, tuple[bytes, int]]:
    """Files of a secret/config map: every key, or the listed items (key -> path, mode)."""
    if not items:
        return {key: (val, mode) for key, val in data.items()}
    out: dict[str, tuple[bytes, int]] = {}
    for item in items:
        key = item.get("key", "")
        if key not in data:
            raise VolumeError(f"{what}: key {key!r} not found")
        out[item.get("path") or key] = (data[key], int(item.get("mode", mode)))
    return out


def write_files(folder: Path, files: Mapping[str, tuple[bytes, int]], fs_group: int | None) -> None:
    """Write files (atomically: temp + rename), group-owned by fsGroup where set."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel, (content, mode) in files.items():
        target = folder / rel.lstrip("/")
        if not target.resolve().is_relative_to(folder.resolve()):
            raise VolumeError(f"file path {rel!r} leaves its volume")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(content)
        os.chmod(tmp, mode)
        if fs_group is not None:
            os.chown(tmp, -1, fs_group)
        os.replace(tmp, target)
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            os.chmod(path, 0o755)
            if fs_group is not None:
                os.chown(path, -1, fs_group)


async def request_token(api: Api, pod: dict[str, Any], audience: str | None, seconds: int) -> str:
    """A token for the pod's service account, bound to the pod (TokenRequest API)."""
    meta = pod["metadata"]
    sa = pod["spec"].get("serviceAccountName") or "default"
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [audience] if audience else [],
            "expirationSeconds": max(600, seconds),
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }
    path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token"
    try:
        answer = await api.create(path, body)
    except ApiError as err:
        raise VolumeError(f"token for service account {sa}: {err}") from err
    return str(answer["status"]["token"])


async def write_token(
    api: Api, pod: dict[str, Any], token: TokenFile, fs_group: int | None
) -> None:
    value = await request_token(api, pod, token.audience, token.expiration_seconds)
    write_files(token.path.parent, {token.path.name: (value.encode(), token.mode)}, fs_group)


async def _fetch(api: Api, namespace: str, kind: str, name: str, optional: bool) -> Any:
    """A secret or config map of the pod's namespace (None if optional and missing)."""
    plural = "secrets" if kind == "secret" else "configmaps"
    obj = await api.get_or_none(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
    if obj is None and not optional:
        raise VolumeError(f'{kind} "{name}" not found')
    return obj


def _set_dir_owner(path: Path, fs_group: int | None, mode: int) -> None:
    if fs_group is not None:
        os.chown(path, -1, fs_group)
        mode |= 0o2070
    os.chmod(path, mode)


def _mount_tmpfs(path: Path, size: str | None) -> None:
    if os.path.ismount(path):
        return
    options = "mode=1777" + (f",size={int(parse_quantity(size))}" if size else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)


async def prepare_volumes(
    api: Api,
    pod: dict[str, Any],
    paths: PodPaths,
    allocatable: Mapping[str, str],
) -> PodVolumes:
    """Create every volume of the pod (idempotent: re-run on retries and restarts)."""
    spec = pod["spec"]
    ns = pod["metadata"]["namespace"]
    fs_group = (spec.get("securityContext") or {}).get("fsGroup")
    out = PodVolumes()
    for vol in spec.get("volumes") or []:
        name = vol["name"]
        folder = paths.volumes / name
        if "emptyDir" in vol:
            source = vol["emptyDir"] or {}
            folder.mkdir(parents=True, exist_ok=True)
            if source.get("medium") == "Memory":
                _mount_tmpfs(folder, source.get("sizeLimit"))
            _set_dir_owner(folder, fs_group, 0o777)
            out.volumes[name] = Volume(folder, tmpfs=source.get("medium") == "Memory")
        elif "persistentVolumeClaim" in vol:
            source = vol["persistentVolumeClaim"]
            folder = paths.state_dir / "pvc" / ns / source["claimName"]
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                _set_dir_owner(folder, fs_group, 0o777 if fs_group is None else 0o775)
            elif fs_group is not None:
                _set_dir_owner(folder, fs_group, 0o775)
            out.volumes[name] = Volume(folder, read_only=bool(source.get("readOnly")))
        elif "hostPath" in vol:
            source = vol["hostPath"]
            host = Path(source["path"])
            kind = source.get("type") or ""
            if kind == "DirectoryOrCreate":
                host.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate" and not host.exists():
                host.parent.mkdir(parents=True, exist_ok=True)
                host.touch(mode=0o644)
            elif kind and not host.exists():
                raise VolumeError(f"hostPath {host} ({kind}) does not exist")
            out.volumes[name] = Volume(host)
        elif "secret" in vol or "configMap" in vol:
            is_secret = "secret" in vol
            source = vol["secret" if is_secret else "configMap"]
            obj_name = source.get("secretName" if is_secret else "name", "")
            kind = "secret" if is_secret else "configmap"
            obj = await _fetch(api, ns, kind, obj_name, bool(source.get("optional")))
            data = _object_bytes(obj, secret=is_secret) if obj else {}
            mode = int(source.get("defaultMode", 0o644))
            files = _select(data, source.get("items"), mode, f"{kind} {obj_name}")
            write_files(folder, files, fs_group)
            out.volumes[name] = Volume(folder, read_only=True)
        elif "projected" in vol:
            await _projected(api, pod, vol["projected"], folder, allocatable, out, fs_group)
            out.volumes[name] = Volume(folder, read_only=True)
        elif "downwardAPI" in vol:
            source = vol["downwardAPI"]
            mode = int(source.get("defaultMode", 0o644))
            files = _downward_files(pod, source.get("items") or [], mode, allocatable)
            write_files(folder, files, fs_group)
            out.volumes[name] = Volume(folder, read_only=True)
        else:
            kinds = sorted(set(vol) - {"name"})
            raise VolumeError(f"volume {name}: unsupported source {kinds} (have {_SOURCE_KINDS})")
    for token in out.tokens:
        await write_token(api, pod, token, fs_group)
    return out


def _downward_files(
    pod: dict[str, Any], items: list[dict[str, Any]], mode: int, allocatable: Mapping[str, str]
) -> dict[str, tuple[bytes, int]]:
    files: dict[str, tuple[bytes, int]] = {}
    for item in items:
        if "fieldRef" in item:
            path = item["fieldRef"].get("fieldPath", "")
            value = resolve_field_ref(
                pod, path, pod_ip="127.0.0.1", host_ip="127.0.0.1", whole_maps=True
            )
        elif "resourceFieldRef" in item:
            container = item["resourceFieldRef"].get("containerName", "")
            value = resolve_resource_ref(pod, container, item["resourceFieldRef"], allocatable)
        else:
            continue
        files[item["path"]] = (value.encode(), int(item.get("mode", mode)))
    return files


async def _projected(
    api: Api,
    pod: dict[str, Any],
    source: dict[str, Any],
    folder: Path,
    allocatable: Mapping[str, str],
    out: PodVolumes,
    fs_group: int | None,
) -> None:
    ns = pod["metadata"]["namespace"]
    mode = int(source.get("defaultMode", 0o644))
    files: dict[str, tuple[bytes, int]] = {}
    for part in source.get("sources") or []:
        if "serviceAccountToken" in part:
            tok = part["serviceAccountToken"]
            seconds = int(tok.get("expirationSeconds") or TOKEN_DEFAULT_SECONDS)
            out.tokens.append(
                TokenFile(folder / tok["path"], tok.get("audience") or None, seconds, mode)
            )
        elif "configMap" in part or "secret" in part:
            is_secret = "secret" in part
            ref = part["secret" if is_secret else "configMap"]
            kind = "secret" if is_secret else "configmap"
            obj = await _fetch(api, ns, kind, ref.get("name", ""), bool(ref.get("optional")))
            if obj is None:
                continue
            data = _object_bytes(obj, secret=is_secret)
            files |= _select(data, ref.get("items"), mode, f"{kind} {ref.get('name')}")
        elif "downwardAPI" in part:
            try:
                files |= _downward_files(
                    pod, part["downwardAPI"].get("items") or [], mode, allocatable
                )
            except EnvError as err:
                raise VolumeError(str(err)) from err
        else:
            raise VolumeError(f"projected source {sorted(part)} is not supported")
    write_files(folder, files, fs_group)


def container_mounts(
    container: dict[str, Any], volumes: Mapping[str, Volume], env: Mapping[str, str]
) -> list[Mount]:
    """The container's volumeMounts as host binds (subPath/subPathExpr inside the volume)."""
    mounts: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        vol = volumes.get(vm["name"])
        if vol is None:
            raise VolumeError(f"volumeMount {vm['name']}: no such volume")
        source = vol.path
        sub = vm.get("subPath") or (expand(vm["subPathExpr"], env) if vm.get("subPathExpr") else "")
        if sub:
            source = vol.path / sub.lstrip("/")
            if not source.resolve().is_relative_to(vol.path.resolve()):
                raise VolumeError(f"subPath {sub!r} leaves volume {vm['name']}")
            if not source.exists():
                source.mkdir(parents=True, exist_ok=True)
        read_only = bool(vm.get("readOnly")) or vol.read_only
        mounts.append(Mount(source, vm["mountPath"], read_only))
    return mounts


def cleanup_pod_dir(paths: PodPaths, keep_logs: bool = False) -> None:
    """Unmount the pod's tmpfs volumes (emptied first: other pods' mount namespaces may
    hold a copy of the mount) and remove its state folder, or all but the logs."""
    if paths.volumes.is_dir():
        for folder in paths.volumes.iterdir():
            if os.path.ismount(folder):
                for child in folder.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
                subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)
    if keep_logs:
        shutil.rmtree(paths.volumes, ignore_errors=True)
    else:
        shutil.rmtree(paths.root, ignore_errors=True)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
