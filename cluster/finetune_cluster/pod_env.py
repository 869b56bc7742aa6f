"""A container's environment as the kubelet builds it: pure functions, no I/O.

Kept free of the API so every rule ($(VAR) expansion, the downward API, resource field
references, envFrom precedence) is unit-tested without a cluster; the secrets and
config maps an env refers to are fetched beforehand (`referenced_objects`) and passed in.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

# Objects by name; None where the API said 404.
Objects = Mapping[str, dict[str, Any] | None]

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE]?)$")
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


class EnvError(Exception):
    """A reference the container's config cannot resolve (CreateContainerConfigError)."""


def parse_quantity(value: str | int | float) -> Fraction:
    """A Kubernetes resource quantity ("500m", "2Gi", "1e3", 4) as an exact number."""
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"not a quantity: {value!r}")
    number, suffix = Fraction(match.group(1)), match.group(2)
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return number * Fraction(10) ** int(suffix[1:])
    return number * _DECIMAL[suffix]


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion (third_party/forked/golang/expansion).

    `$(NAME)` becomes the value of NAME where defined, else stays as written; `$$` is an
    escaped `$` (so `$$(NAME)` gives the literal `$(NAME)`); any other `$` is kept."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(value):
        if value[cursor] == "$" and cursor + 1 < len(value):
            out.append(value[checkpoint:cursor])
            nxt = value[cursor + 1]
            if nxt == "$":
                out.append("$")
                advance = 1
            elif nxt == "(":
                close = value.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = value[cursor + 2 : close]
                    out.append(env.get(name, f"$({name})"))
                    advance = close - cursor
            else:
                out.append("$" + nxt)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(value[checkpoint:])
    return "".join(out)


def _quote(value: str) -> str:
    """Go's strconv.Quote for the label/annotation files of a downwardAPI volume."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\t", "\\t") + '"'


def format_map(values: Mapping[str, str]) -> str:
    """`key="value"` lines, sorted: the downward API's whole-map form."""
    return "\n".join(f"{k}={_quote(str(values[k]))}" for k in sorted(values))


def resolve_field_ref(
    pod: dict[str, Any], field_path: str, *, pod_ip: str, host_ip: str, whole_maps: bool = False
) -> str:
    """The value of a downward-API fieldRef on this pod (IPs are this node's)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    match = _SUBSCRIPT.match(field_path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if whole_maps and field_path in ("metadata.labels", "metadata.annotations"):
        return format_map(meta.get(field_path.split(".")[1]) or {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if field_path not in simple:
        raise EnvError(f"unsupported fieldRef {field_path!r}")
    return str(simple[field_path] or "")


def resolve_resource_ref(
    pod: dict[str, Any], container_name: str, ref: dict[str, Any], allocatable: Mapping[str, str]
) -> str:
    """A resourceFieldRef: limits/requests of a container, divided and rounded up.

    As the kubelet: a missing limit is the node's allocatable amount; cpu is compared in
    millicores, the rest in units (so `limits.cpu` of "500m" with divisor 1 gives "1")."""
    name = ref.get("containerName") or container_name
    containers = [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
    container = next((c for c in containers if c.get("name") == name), None)
    if container is None:
        raise EnvError(f"resourceFieldRef: no container {name!r}")
    kind, _, resource = str(ref.get("resource", "")).partition(".")
    if kind not in ("limits", "requests") or not resource:
        raise EnvError(f"unsupported resourceFieldRef {ref.get('resource')!r}")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(resource)
    if raw is None and kind == "limits":
        raw = allocatable.get(resource)
    if raw is None and kind == "requests":
        raw = (resources.get("limits") or {}).get(resource, 0)
    amount = parse_quantity(raw if raw is not None else 0)
    divisor = parse_quantity(ref.get("divisor") or 1) or Fraction(1)  # the API defaults "0"
    return str(math.ceil(amount / divisor))


def object_data(obj: dict[str, Any], *, secret: bool) -> dict[str, str]:
    """The string data of a ConfigMap (data, binaryData) or Secret (base64 data)."""
    out: dict[str, str] = {}
    if secret:
        for key, val in (obj.get("data") or {}).items():
            out[key] = base64.b64decode(val).decode("utf-8", errors="replace")
        out.update(obj.get("stringData") or {})
    else:
        for key, val in (obj.get("binaryData") or {}).items():
            out[key] = base64.b64decode(val).decode("utf-8", errors="replace")
        out.update(obj.get("data") or {})
    return out


def referenced_objects(container: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The secret and config map names the container's env and envFrom read."""
    secrets: set[str] = set()
    maps: set[str] = set()
    for item in container.get("env") or []:
        source = item.get("valueFrom") or {}
        if "secretKeyRef" in source:
            secrets.add(source["secretKeyRef"].get("name", ""))
        if "configMapKeyRef" in source:
            maps.add(source["configMapKeyRef"].get("name", ""))
    for item in container.get("envFrom") or []:
        if "secretRef" in item:
            secrets.add(item["secretRef"].get("name", ""))
        if "configMapRef" in item:
            maps.add(item["configMapRef"].get("name", ""))
    return secrets, maps


def _key_ref(ref: dict[str, Any], objects: Objects, kind: str, *, secret: bool) -> str | None:
    """A secretKeyRef/configMapKeyRef value; None where optional and missing."""
    name, key, optional = ref.get("name", ""), ref.get("key", ""), bool(ref.get("optional"))
    obj = objects.get(name)
    if obj is None:
        if optional:
            return None
        raise EnvError(f'{kind} "{name}" not found')
    data = object_data(obj, secret=secret)
    if key not in data:
        if optional:
            return None
        raise EnvError(f"couldn't find key {key} in {kind} {name}")
    return data[key]


def build_env(
    pod: dict[str, Any],
    container: dict[str, Any],
    *,
    service_env: Mapping[str, str],
    secrets: Objects,
    config_maps: Objects,
    allocatable: Mapping[str, str],
    pod_ip: str = "127.0.0.1",
    host_ip: str = "127.0.0.1",
) -> dict[str, str]:
    """The container's variables: envFrom, then env in order ($(VAR) over those before it
    and the service variables), the service variables where not set by the pod."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        if "configMapRef" in source:
            ref, kind, secret = source["configMapRef"], "configmap", False
            obj = config_maps.get(ref.get("name", ""))
        elif "secretRef" in source:
            ref, kind, secret = source["secretRef"], "secret", True
            obj = secrets.get(ref.get("name", ""))
        else:
            continue
        if obj is None:
            if ref.get("optional"):
                continue
            raise EnvError(f'{kind} "{ref.get("name", "")}" not found')
        for key, val in sorted(object_data(obj, secret=secret).items()):
            if "=" not in key and key:
                env[prefix + key] = val
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(str(item.get("value", "")), {**service_env, **env})
            continue
        source = item["valueFrom"] or {}
        value: str | None
        if "fieldRef" in source:
            path = source["fieldRef"].get("fieldPath", "")
            value = resolve_field_ref(pod, path, pod_ip=pod_ip, host_ip=host_ip)
        elif "resourceFieldRef" in source:
            value = resolve_resource_ref(
                pod, container["name"], source["resourceFieldRef"], allocatable
            )
        elif "secretKeyRef" in source:
            value = _key_ref(source["secretKeyRef"], secrets, "secret", secret=True)
        elif "configMapKeyRef" in source:
            value = _key_ref(source["configMapKeyRef"], config_maps, "configmap", secret=False)
        else:
            raise EnvError(f"env {name}: unsupported valueFrom {sorted(source)}")
        if value is not None:
            env[name] = value
    return {**service_env, **env}
