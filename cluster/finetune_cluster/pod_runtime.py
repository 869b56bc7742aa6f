"""Containers as local process trees: a private mount namespace per container, memory
limits by RSS polling, process-group kills, logs and termination messages.

There is no container runtime: `unshare --mount --uts` gives each container its own
view of this machine's filesystem (a recursive bind of `/`, read-only where the
container asks for readOnlyRootFilesystem) with the pod's volumes bound at their
mountPaths, then `chroot` + `setpriv` drop to the pod's user. The process is a session
leader, so its process group is the container: killed as one, never left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pod_env import parse_quantity
from .pod_volumes import Mount

RSS_POLL_SECONDS = 0.2
MESSAGE_MAX_BYTES = 4096
FALLBACK_LINES = 80
FALLBACK_BYTES = 2048
_TOOLS = ("unshare", "mount", "mkdir", "awk", "chroot", "setpriv", "hostname", "ln", "touch")


def tool_paths() -> dict[str, str]:
    """Absolute paths of the tools the sandbox script runs (the pod's PATH may lack them)."""
    found = {tool: shutil.which(tool) for tool in _TOOLS}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        raise RuntimeError(f"node agent needs {', '.join(missing)} on PATH")
    return {tool: str(path) for tool, path in found.items()}


@dataclass(frozen=True)
class Identity:
    """Who the container's process runs as (securityContext; container over pod)."""

    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    no_new_privs: bool = False
    drop_all_caps: bool = False


def identity_of(
    pod: dict[str, Any], container: dict[str, Any], image_user: tuple[int, int] | None = None
) -> Identity:
    """runAsUser/runAsGroup (container overrides pod, both override the image's USER),
    fsGroup + supplementalGroups."""
    pod_sc = pod["spec"].get("securityContext") or {}
    sc = container.get("securityContext") or {}
    image_uid, image_gid = image_user if image_user else (None, None)
    uid = sc.get("runAsUser", pod_sc.get("runAsUser", image_uid))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", image_gid))
    non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    if non_root and not uid:
        raise ValueError("container has runAsNonRoot and image will run as root")
    groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
    if pod_sc.get("fsGroup") is not None:
        groups.insert(0, int(pod_sc["fsGroup"]))
    drop = [str(c).upper() for c in (sc.get("capabilities") or {}).get("drop") or []]
    return Identity(
        uid=int(uid or 0),
        gid=int(gid or 0),
        groups=tuple(dict.fromkeys(groups)),
        no_new_privs=sc.get("allowPrivilegeEscalation") is False,
        drop_all_caps="ALL" in drop,
    )


def read_only_root(container: dict[str, Any]) -> bool:
    return bool((container.get("securityContext") or {}).get("readOnlyRootFilesystem"))


def memory_limit(container: dict[str, Any]) -> int | None:
    """The container's memory limit in bytes (None: unlimited)."""
    raw = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return int(parse_quantity(raw)) if raw is not None else None


def needs_traversal(paths: Iterable[str], uid: int) -> list[str]:
    """Ancestor folders of `paths` a non-root uid could not traverse (no o+x), outermost
    first. Each gets a traversable stand-in in the pod's root (`expose` in the script):
    e.g. an interpreter under /root (mode 0700) stays usable by runAsUser 10001."""
    if uid == 0:
        return []
    out: dict[str, None] = {}
    for path in paths:
        parts = Path(os.path.realpath(path)).parts
        for i in range(2, len(parts)):
            folder = str(Path(*parts[:i]))
            try:
                mode = os.stat(folder).st_mode
            except OSError:
                break
            if not mode & 0o001:
                out[folder] = None
    return sorted(out, key=lambda p: p.count("/"))


@dataclass
class Sandbox:
    """Everything the sandbox script needs for one container start."""

    new_root: Path
    read_only: bool
    mounts: list[Mount]
    file_mounts: list[Mount]
    hostname: str
    identity: Identity
    cwd: str
    argv: list[str]
    expose: list[str] = field(default_factory=list)


def _q(value: str | Path) -> str:
    return shlex.quote(str(value))


def _target(path: str) -> str:
    """A mountPath resolved through this machine's symlinks (/var/run -> /run), which are
    the same in the pod's root: mounts must land on the real folder inside the new root."""
    return os.path.realpath(path)


def sandbox_script(box: Sandbox, tools: Mapping[str, str]) -> str:
    """The shell run by `unshare --mount --uts --propagation private`: build the pod's
    root, bind the volumes, drop privileges, exec the command in its working directory.

    Missing mountpoints (and the parent folders of mountPaths) are created on this
    machine's filesystem, as a container runtime creates them in the image."""
    t = {k: _q(v) for k, v in tools.items()}
    root = _q(box.new_root)
    lines = ["set -eu", f"{t['hostname']} {_q(box.hostname)} 2>/dev/null || true"]
    lines.append(f"{t['mount']} --rbind / {root}")
    for folder in box.expose:
        mode = oct(os.stat(folder).st_mode & 0o7777 | 0o111)[2:]
        dest = _q(f"{box.new_root}{folder}")
        lines.append(f"{t['mount']} -t tmpfs -o mode={mode},size=1m expose {dest}")
        with os.scandir(folder) as entries:
            for entry in entries:
                src, dst = _q(entry.path), _q(f"{box.new_root}{entry.path}")
                if entry.is_symlink():
                    lines.append(f"{t['ln']} -s {_q(os.readlink(entry.path))} {dst}")
                elif entry.is_dir():
                    lines.append(f"{t['mkdir']} {dst} && {t['mount']} --rbind {src} {dst}")
                elif entry.is_file():
                    lines.append(f"{t['touch']} {dst} && {t['mount']} --bind {src} {dst}")
    binds = sorted([*box.mounts, *box.file_mounts], key=lambda m: _target(m.target).count("/"))
    for m in binds:
        dest = _q(f"{box.new_root}{_target(m.target)}")
        if m.source.is_dir():
            lines.append(f"{t['mkdir']} -p {dest}")
        else:
            parent = _q(f"{box.new_root}{os.path.dirname(_target(m.target))}")
            lines.append(f"{t['mkdir']} -p {parent}; [ -e {dest} ] || {t['touch']} {dest}")
    lines.append(f"{t['mkdir']} -p {_q(f'{box.new_root}{_target(box.cwd)}')}")
    if box.read_only:
        # Another pod's volume, copied in by the rbind, may be unmounted while we walk:
        # a remount that fails is an error only if the mount is still there.
        lines.append(
            f"{t['awk']} -v r={root} '$5 == r || index($5, r \"/\") == 1 {{print $5}}' "
            "/proc/self/mountinfo | while read -r m; do\n"
            f'  case "$m" in {root}/proc*|{root}/sys*|{root}/dev*)\n'
            f'    {t["mount"]} -o remount,bind,ro "$m" 2>/dev/null || true ;;\n'
            f'  *) {t["mount"]} -o remount,bind,ro "$m" || ! {t["awk"]} -v m="$m" '
            "'$5 == m {f = 1} END {exit !f}' /proc/self/mountinfo ;;\n"
            "  esac\ndone"
        )
    for m in binds:
        dest = _q(f"{box.new_root}{_target(m.target)}")
        if m.source.is_dir():  # a mountpoint inside a volume bound just before
            lines.append(f"[ -e {dest} ] || {t['mkdir']} -p {dest}")
        lines.append(f"{t['mount']} --bind {_q(m.source)} {dest}")
        if m.read_only:
            lines.append(f"{t['mount']} -o remount,bind,ro {dest}")
    ident = box.identity
    priv = [t["setpriv"]]
    if ident.uid or ident.gid or ident.groups:
        priv += [f"--reuid={ident.uid}", f"--regid={ident.gid}"]
        groups = ",".join(str(g) for g in ident.groups)
        priv += [f"--groups={groups}"] if groups else ["--clear-groups"]
    if ident.no_new_privs:
        priv.append("--no-new-privs")
    if ident.drop_all_caps:
        priv += ["--bounding-set=-all", "--inh-caps=-all"]
    inner = 'cd "$1" || exit 1; shift; unset OLDPWD PWD; exec "$@"'
    argv = " ".join(_q(a) for a in box.argv)
    lines.append(
        f"exec {t['chroot']} {root} {' '.join(priv)} -- /bin/sh -c {_q(inner)} "
        f"sh {_q(box.cwd)} {argv}"
    )
    return "\n".join(lines) + "\n"


def sandbox_argv(box: Sandbox, tools: Mapping[str, str]) -> list[str]:
    return [
        tools["unshare"],
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        sandbox_script(box, tools),
    ]


# ---- process trees -------------------------------------------------------------------


def parse_stat(text: str) -> tuple[int, int, int]:
    """(ppid, pgid, starttime) from a /proc/<pid>/stat line (comm may hold spaces)."""
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), int(fields[2]), int(fields[19])


def parse_vmrss(status: str) -> int:
    """VmRSS of a /proc/<pid>/status text, in bytes (0 for a zombie or kernel thread)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            return int(parts[1]) * 1024
    return 0


_TABLE: tuple[float, dict[int, tuple[int, int, int]]] = (0.0, {})


def proc_table(max_age: float = 0.0) -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, pgid, starttime) for every process; a scan at most max_age seconds
    old may be shared (the memory watches of all pods poll together)."""
    global _TABLE
    if max_age and time.monotonic() - _TABLE[0] <= max_age:
        return _TABLE[1]
    out: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                out[int(entry)] = parse_stat(fh.read())
        except (OSError, ValueError, IndexError):
            continue
    _TABLE = (time.monotonic(), out)
    return out


def tree_pids(table: Mapping[int, tuple[int, ...]], root: int) -> set[int]:
    """The root, its descendants, and every member of its process group."""
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info[0], []).append(pid)
    out = {pid for pid, info in table.items() if info[1] == root}
    seen: set[int] = set()
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack.extend(children.get(pid, []))
    return out | seen


def tree_rss(pids: Iterable[int]) -> int:
    """The summed resident memory of pids (shared pages count once per process, so this
    errs high, as a cgroup limit on RSS + page cache would rather than low)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += parse_vmrss(fh.read())
        except OSError:
            continue
    return total


def over_limit(rss: int, limit: int | None) -> bool:
    return limit is not None and rss > limit


def kill_tree(root: int, sig: int) -> None:
    """Signal the container's process group and any descendant that left it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(root, sig)
    for pid in tree_pids(proc_table(), root) - {root}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_stale(state_dir: Path) -> int:
    """Kill process groups recorded by a previous agent that are still alive (pid files
    hold pid and start time, so a reused pid is left alone). Returns how many."""
    killed = 0
    table = proc_table()
    for pid_file in (state_dir / "pods").glob("*/*.pid"):
        try:
            pid, start = (int(x) for x in pid_file.read_text().split())
        except (OSError, ValueError):
            continue
        if pid in table and table[pid][2] == start:
            kill_tree(pid, signal.SIGKILL)
            killed += 1
        pid_file.unlink(missing_ok=True)
    return killed


# ---- messages and logs ---------------------------------------------------------------


def termination_message(path: Path, log: Path, fallback_to_logs: bool, exit_code: int) -> str:
    """The terminated state's message: the termination file (at most 4096 bytes), or with
    FallbackToLogsOnError and a failure, the log's last 80 lines / 2048 bytes."""
    try:
        data = path.read_bytes()[:MESSAGE_MAX_BYTES]
    except OSError:
        data = b""
    if not data and fallback_to_logs and exit_code != 0:
        data = tail_bytes(log, FALLBACK_LINES, FALLBACK_BYTES)
    return data.decode("utf-8", errors="replace")


def tail_data(data: bytes, lines: int | None, max_bytes: int | None) -> bytes:
    """The last `lines` lines of data, then at most its last `max_bytes` bytes."""
    if lines is not None:
        parts = data.splitlines(keepends=True)
        data = b"".join(parts[-lines:]) if lines > 0 else b""
    if max_bytes is not None and len(data) > max_bytes:
        data = data[-max_bytes:]
    return data


def tail_bytes(path: Path, lines: int | None, max_bytes: int | None) -> bytes:
    """tail_data of a file (empty if unreadable)."""
    try:
        return tail_data(path.read_bytes(), lines, max_bytes)
    except OSError:
        return b""


def rotate_log(log: Path) -> None:
    """Keep the previous attempt's log as `.log.1` (kubectl logs --previous)."""
    if log.exists():
        os.replace(log, log.with_name(log.name + ".1"))


@dataclass
class Exit:
    """How a container's process ended."""

    exit_code: int
    oom_killed: bool
    started_at: float
    finished_at: float


class ContainerProcess:
    """One start of a container: the process group, its memory watch, its exit."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log: Path, pid_file: Path):
        self.argv = argv
        self.env = dict(env)
        self.log = log
        self.pid_file = pid_file
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.oom_killed = False

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    async def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        self.started_at = time.time()
        table = proc_table()
        start = table.get(self.proc.pid, (0, 0, 0))[2]
        self.pid_file.write_text(f"{self.proc.pid} {start}\n")

    async def wait(self, limit: int | None) -> Exit:
        """Wait for the exit, SIGKILLing the tree when its RSS passes the memory limit."""
        assert self.proc is not None
        waiter = asyncio.ensure_future(self.proc.wait())
        try:
            while not waiter.done():
                if limit is not None and not self.oom_killed:
                    table = proc_table(max_age=RSS_POLL_SECONDS / 2)
                    rss = tree_rss(tree_pids(table, self.proc.pid))
                    if over_limit(rss, limit):
                        self.oom_killed = True
                        kill_tree(self.proc.pid, signal.SIGKILL)
                await asyncio.wait({waiter}, timeout=RSS_POLL_SECONDS if limit else None)
        finally:
            if not waiter.done():
                waiter.cancel()
        code = self.proc.returncode
        assert code is not None
        kill_tree(self.proc.pid, signal.SIGKILL)  # the container's other processes die with it
        self.pid_file.unlink(missing_ok=True)
        exit_code = 128 - code if code < 0 else code
        if self.oom_killed:
            exit_code = 137
        return Exit(exit_code, self.oom_killed, self.started_at, time.time())

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            kill_tree(self.proc.pid, sig)
