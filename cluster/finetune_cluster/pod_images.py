"""Container images mapped onto this machine's Python environments (no image pulls).

There is no container runtime: an image name only selects an interpreter, an optional
replacement command and default variables (`--images FILE.json`), so a test can map a
stub image to a stub program while every other image runs in the agent's environment.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pod_env import expand

PYTHON_NAMES = ("python", "python3")
_PYTHON_DIRS = ("", "/bin", "/usr/bin", "/usr/local/bin")


@dataclass(frozen=True)
class ImageEnv:
    """What an image means here: an interpreter, a command override, default env."""

    python: str
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    user: tuple[int, int] | None = None  # the image's USER uid:gid (default: root)
    # Host paths bound into every container of the image, over its volumes (files "baked
    # into the image", e.g. a test's stub program and its order folder): (host, path, ro).
    mounts: tuple[tuple[str, str, bool], ...] = ()

    @property
    def bin_dir(self) -> str:
        """The environment's bin folder (a venv's), first on the pod's PATH."""
        return os.path.dirname(os.path.abspath(self.python))


def load_images(path: Path, default_python: str) -> dict[str, ImageEnv]:
    """Parse `{image: {"python": .., "command": [..] | null, "env": {..}, "user": "uid[:gid]",
    "mounts": ["HOST[:PATH[:ro]]", ..]}}` (every key optional)."""
    raw: dict[str, Any] = json.loads(path.read_text())
    out: dict[str, ImageEnv] = {}
    for image, entry in raw.items():
        entry = entry or {}
        command = entry.get("command")
        user = None
        if entry.get("user") is not None:
            uid, _, gid = str(entry["user"]).partition(":")
            user = (int(uid), int(gid or 0))
        out[image] = ImageEnv(
            python=str(entry.get("python") or default_python),
            command=[str(c) for c in command] if command else None,
            env={str(k): str(v) for k, v in (entry.get("env") or {}).items()},
            user=user,
            mounts=tuple(parse_mount(str(m)) for m in entry.get("mounts") or []),
        )
    return out


def parse_mount(text: str) -> tuple[str, str, bool]:
    """`HOST[:PATH[:ro]]` -> (host, path in the container, read-only)."""
    parts = text.split(":")
    host = parts[0]
    path = parts[1] if len(parts) > 1 and parts[1] else host
    return host, path, len(parts) > 2 and parts[2] == "ro"


def image_repository(image: str) -> str:
    """The image without digest and tag: `reg:5000/a/b:1.0@sha256:..` -> `reg:5000/a/b`."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


# Top-level domains that never resolve (RFC 2606/6761): an image from such a registry
# fails to pull, deterministically and without a network, as it would on a real node.
UNRESOLVABLE_TLDS = ("example", "invalid")


def registry_host(image: str) -> str | None:
    """The registry of an image that names one (`host.tld/...`, `host:port/...`)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def pull_error(image: str, images: Mapping[str, ImageEnv]) -> str | None:
    """Why the image cannot be pulled (a containerd-style message), or None. Mapped images
    and images of any other registry are "present": they run in a local environment."""
    host = registry_host(image)
    if host is None or image in images or image_repository(image) in images:
        return None
    name = host.split(":")[0]
    if name.rsplit(".", 1)[-1] not in UNRESOLVABLE_TLDS:
        return None
    repo = image_repository(image)[len(host) + 1 :]
    tag = image.split("@", 1)[0][len(image_repository(image)) + 1 :] or "latest"
    return (
        f'rpc error: code = Unknown desc = failed to pull and unpack image "{image}": '
        f'failed to resolve reference "{image}": failed to do request: Head '
        f'"https://{host}/v2/{repo}/manifests/{tag}": dial tcp: lookup {name}: no such host'
    )


def image_env(image: str, images: Mapping[str, ImageEnv], default_python: str) -> ImageEnv:
    """The mapping of an image: exact name, else its name before the tag, else default."""
    if image in images:
        return images[image]
    repo = image_repository(image)
    if repo in images:
        return images[repo]
    return ImageEnv(python=default_python)


def default_path(image: ImageEnv, host_path: str | None) -> str:
    """The pod's PATH when it sets none: the environment's bin folder, then the host's."""
    rest = [p for p in (host_path or "/usr/local/bin:/usr/bin:/bin").split(":") if p]
    return ":".join(dict.fromkeys([image.bin_dir, *rest]))


def is_python(arg0: str) -> bool:
    """`python`, `python3` or such at a standard place: the configured interpreter."""
    head, base = os.path.split(arg0)
    return base in PYTHON_NAMES and head.rstrip("/") in _PYTHON_DIRS


class CommandError(Exception):
    """The command cannot be started (the runtime's StartError)."""


def resolve_argv(
    container: Mapping[str, Any], image: ImageEnv, env: Mapping[str, str], cwd: str
) -> list[str]:
    """The argv to exec: command (or the image's override) + args, $(VAR)-expanded,
    `python` as the configured interpreter, bare names looked up on the pod's PATH."""
    command = list(image.command or container.get("command") or [])
    args = list(container.get("args") or [])
    argv = [expand(str(a), env) for a in [*command, *args]]
    if not argv:
        raise CommandError("no command specified (images carry no entrypoint here)")
    arg0 = argv[0]
    if is_python(arg0):
        argv[0] = image.python
    elif "/" not in arg0:
        found = shutil.which(arg0, path=env.get("PATH") or default_path(image, None))
        if found is None:
            raise CommandError(f'exec: "{arg0}": executable file not found in $PATH')
        argv[0] = found
    else:
        path = arg0 if os.path.isabs(arg0) else os.path.join(cwd, arg0)
        if not os.path.exists(path):
            raise CommandError(f'exec: "{arg0}": stat {arg0}: no such file or directory')
    return argv
