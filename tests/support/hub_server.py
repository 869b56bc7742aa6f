"""A small Hugging Face Hub on 127.0.0.1 for the tests: the HTTP endpoints that
huggingface_hub's own client calls to create a repository, upload a commit (regular files
inline, large files through the git-LFS batch API) and read files back (repo info, tree,
paths-info, resolve with HEAD and Range).

Why our own: no installable server implements the hub's write API. KohakuHub (a
self-hosted hub) needs LakeFS, MinIO and Docker; olah and the hf-mirror tools are
read-only proxies of huggingface.co; huggingface_hub's own tests run against the
hub's staging server (hub-ci.huggingface.co), not a local one. The endpoints and JSON
shapes here are the ones read in huggingface_hub 2.4's hf_api.py (create_repo, whoami,
create_branch, repo_info, list_repo_tree, get_paths_info, _validate_yaml),
_commit_api.py (preupload, commit ndjson), lfs.py (batch, basic PUT upload, verify),
file_download.py (HEAD metadata: X-Repo-Commit, ETag, Content-Length) and
hf_file_system.py. Xet storage is not implemented: clients run with
HF_HUB_DISABLE_XET=1, which makes huggingface_hub use the LFS path.

Files live in a temp folder: LFS objects by sha256, regular files by git blob id; each
branch is a map of path -> file. Writes need `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REGULAR_SUFFIXES = (".json", ".md", ".txt", ".jsonl", ".csv", ".tsv", ".model", ".py")
REGULAR_MAX = 1_000_000  # bytes: larger files, and binary ones, go through LFS
KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class File:
    size: int
    blob_id: str
    sha256: str | None  # LFS files only
    stored: Path


@dataclass
class Repo:
    kind: str
    repo_id: str
    private: bool
    branches: dict[str, dict[str, File]] = field(default_factory=lambda: {"main": {}})
    heads: dict[str, str] = field(default_factory=lambda: {"main": "0" * 40})
    commits: list[dict[str, Any]] = field(default_factory=list)


class Hub:
    """The state behind the handler (repos, stored objects), guarded by one lock."""

    def __init__(self, root: Path, token: str, user: str = "tester") -> None:
        self.root = root
        self.token = token
        self.user = user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.Lock()
        self.requests: list[str] = []  # "METHOD path" of every request, for the tests
        (root / "lfs").mkdir(parents=True, exist_ok=True)
        (root / "blobs").mkdir(parents=True, exist_ok=True)

    def lfs_path(self, oid: str) -> Path:
        return self.root / "lfs" / oid

    def store_blob(self, data: bytes) -> File:
        blob = git_blob_id(data)
        path = self.root / "blobs" / blob
        path.write_bytes(data)
        return File(len(data), blob, None, path)


@dataclass
class HubServer:
    url: str
    hub: Hub
    server: ThreadingHTTPServer

    def env(self) -> dict[str, str]:
        """What a client needs: the endpoint, the token, online mode, the LFS path."""
        return {
            "HF_ENDPOINT": self.url,
            "HF_TOKEN": self.hub.token,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Handler(BaseHTTPRequestHandler):
    server_version = "finetune-test-hub/1"
    hub: Hub  # set on the subclass by start()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    # ------------------------------------------------------------------ plumbing

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
        head: bool = False,
    ) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        self.send_response(status)
        is_json = not isinstance(body, bytes)
        self.send_header(
            "Content-Type", "application/json" if is_json else "application/octet-stream"
        )
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
        self._send(
            status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message}, head
        )

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _repo(self, kind: str, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.hub.repos.get((kind, repo_id))
        if repo is None or (repo.private and not self._authorized()):
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}", head)
            return None
        return repo

    def _branch(self, repo: Repo, revision: str, head: bool = False) -> dict[str, File] | None:
        revision = urllib.parse.unquote(revision)
        if revision in repo.branches:
            return repo.branches[revision]
        for commit in repo.commits:  # a commit id: that commit's tree
            if commit["id"] == revision:
                return dict(commit["tree"])
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        return None

    def _head_of(self, repo: Repo, revision: str) -> str:
        revision = urllib.parse.unquote(revision)
        return repo.heads.get(revision, revision)

    def _entry(self, path: str, f: File) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": path}
        if f.sha256:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
        return entry

    def _folders(self, files: dict[str, File]) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}

    # ------------------------------------------------------------------ routing

    def _route(self, method: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        parts = [p for p in parsed.path.split("/") if p]  # still quoted
        query = urllib.parse.parse_qs(parsed.query)
        with self.hub.lock:
            self.hub.requests.append(f"{method} {parsed.path}")
            self._dispatch(method, parts, query)

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def _dispatch(self, method: str, parts: list[str], query: dict[str, list[str]]) -> None:
        head = method == "HEAD"
        if parts[:2] == ["api", "whoami-v2"]:
            return self._whoami()
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo()
        if parts[:2] == ["api", "validate-yaml"]:
            self._body()
            return self._send(200, {"errors": [], "warnings": []})
        if parts and parts[0] == "lfs-upload" and method == "PUT":
            return self._lfs_put(parts[1])
        if parts and parts[0] == "lfs-verify" and method == "POST":
            return self._lfs_verify()
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in KINDS:
            kind, repo_id, rest = KINDS[parts[1]], f"{parts[2]}/{parts[3]}", parts[4:]
            return self._api(method, kind, repo_id, rest, query)
        kind = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            kind, parts = KINDS[parts[0]], parts[1:]
        if (
            len(parts) >= 3
            and parts[1].endswith(".git")
            and parts[2:5] == ["info", "lfs", "objects"]
        ):
            return self._lfs_batch(kind, f"{parts[0]}/{parts[1][: -len('.git')]}")
        if len(parts) >= 5 and parts[2] == "resolve":
            path = urllib.parse.unquote("/".join(parts[4:]))
            return self._resolve(kind, f"{parts[0]}/{parts[1]}", parts[3], path, head)
        return self._error(404, "NotFound", f"no route for {method} {self.path}", head)

    def _api(
        self, method: str, kind: str, repo_id: str, rest: list[str], query: dict[str, list[str]]
    ) -> None:
        if method == "GET" and (not rest or rest[0] == "revision"):
            return self._repo_info(kind, repo_id, rest[1] if len(rest) > 1 else "main")
        if method == "GET" and rest and rest[0] == "tree":
            path = urllib.parse.unquote("/".join(rest[2:]))
            recursive = (query.get("recursive") or ["false"])[0].lower() == "true"
            return self._tree(kind, repo_id, rest[1], path, recursive)
        if method == "POST" and rest and rest[0] == "paths-info":
            return self._paths_info(kind, repo_id, rest[1])
        if not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        if method == "POST" and rest and rest[0] == "preupload":
            return self._preupload(kind, repo_id, rest[1])
        if method == "POST" and rest and rest[0] == "commit":
            return self._commit(kind, repo_id, rest[1])
        if method == "POST" and rest and rest[0] == "branch":
            return self._create_branch(kind, repo_id, urllib.parse.unquote(rest[1]))
        return self._error(404, "NotFound", f"no route for {method} {self.path}")

    # ------------------------------------------------------------------ endpoints

    def _whoami(self) -> None:
        if not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        return self._send(
            200,
            {
                "type": "user",
                "name": self.hub.user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"role": "write"}},
            },
        )

    def _create_repo(self) -> None:
        payload = json.loads(self._body() or b"{}")
        if not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        name, org = payload.get("name"), payload.get("organization") or self.hub.user
        kind = payload.get("type") or "model"
        repo_id = f"{org}/{name}"
        prefix = "" if kind == "model" else f"{kind}s/"
        url = f"http://{self.headers.get('Host')}/{prefix}{repo_id}"
        if (kind, repo_id) in self.hub.repos:
            return self._send(409, {"error": "You already created this repo", "url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.hub.repos[(kind, repo_id)] = Repo(kind, repo_id, private)
        return self._send(200, {"url": url, "name": repo_id})

    def _create_branch(self, kind: str, repo_id: str, branch: str) -> None:
        payload = json.loads(self._body() or b"{}")
        repo = self._repo(kind, repo_id)
        if repo is None:
            return None
        if branch in repo.branches:
            return self._error(409, "Conflict", f"Reference already exists: {branch}")
        start = payload.get("startingPoint") or "main"
        source = self._branch(repo, start)
        if source is None:
            return None
        repo.branches[branch] = dict(source)
        repo.heads[branch] = self._head_of(repo, start)
        return self._send(200, {})

    def _repo_info(self, kind: str, repo_id: str, revision: str) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None:
            return None
        files = self._branch(repo, revision)
        if files is None:
            return None
        return self._send(
            200,
            {
                "id": repo_id,
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "sha": self._head_of(repo, revision),
                "private": repo.private,
                "siblings": [{"rfilename": p} for p in sorted(files)],
                "tags": [],
            },
        )

    def _tree(self, kind: str, repo_id: str, revision: str, path: str, recursive: bool) -> None:
        repo = self._repo(kind, repo_id)
        files = self._branch(repo, revision) if repo else None
        if repo is None or files is None:
            return None
        prefix = f"{path.rstrip('/')}/" if path else ""
        folders = self._folders(files)
        if path and path not in folders:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
        depth = prefix.count("/")
        out: list[dict[str, Any]] = []
        for folder in sorted(folders):
            if folder.startswith(prefix) and (recursive or folder.count("/") == depth):
                out.append(
                    {"type": "directory", "oid": git_blob_id(folder.encode()), "path": folder}
                )
        for name, f in sorted(files.items()):
            if name.startswith(prefix) and (recursive or name.count("/") == depth):
                out.append(self._entry(name, f))
        return self._send(200, out)

    def _paths_info(self, kind: str, repo_id: str, revision: str) -> None:
        form = urllib.parse.parse_qs(self._body().decode())
        repo = self._repo(kind, repo_id)
        files = self._branch(repo, revision) if repo else None
        if repo is None or files is None:
            return None
        folders = self._folders(files)
        out: list[dict[str, Any]] = []
        for path in form.get("paths", []):
            if path in files:
                out.append(self._entry(path, files[path]))
            elif path in folders:
                out.append({"type": "directory", "oid": git_blob_id(path.encode()), "path": path})
        return self._send(200, out)

    def _preupload(self, kind: str, repo_id: str, revision: str) -> None:
        payload = json.loads(self._body())
        repo = self._repo(kind, repo_id)
        files = self._branch(repo, revision) if repo else None
        if repo is None or files is None:
            return None
        out = []
        for item in payload["files"]:
            sample = base64.b64decode(item["sample"])
            regular = (
                item["path"].endswith(REGULAR_SUFFIXES)
                and item["size"] <= REGULAR_MAX
                and b"\0" not in sample
            )
            existing = files.get(item["path"])
            out.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular" if regular else "lfs",
                    "shouldIgnore": False,
                    "oid": existing.blob_id if existing else None,
                }
            )
        return self._send(200, {"files": out, "commitOid": self._head_of(repo, revision)})

    def _lfs_batch(self, kind: str, repo_id: str) -> None:
        payload = json.loads(self._body())
        if not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        if self._repo(kind, repo_id) is None:
            return None
        base = f"http://{self.headers.get('Host')}"
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not self.hub.lfs_path(oid).is_file():
                entry["actions"] = {
                    "upload": {"href": f"{base}/lfs-upload/{oid}"},
                    "verify": {"href": f"{base}/lfs-verify"},
                }
            objects.append(entry)
        return self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, "BadRequest", "the content does not match its oid")
        self.hub.lfs_path(oid).write_bytes(data)
        return self._send(200, {})

    def _lfs_verify(self) -> None:
        payload = json.loads(self._body())
        path = self.hub.lfs_path(payload["oid"])
        if not path.is_file() or path.stat().st_size != payload["size"]:
            return self._error(404, "NotFound", "object not found")
        return self._send(200, {})

    def _commit(self, kind: str, repo_id: str, revision: str) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        repo = self._repo(kind, repo_id)
        files = self._branch(repo, revision) if repo else None
        if repo is None or files is None:
            return None
        branch = urllib.parse.unquote(revision)
        if branch not in repo.branches:
            return self._error(400, "BadRequest", "commits go to a branch")
        tree = dict(files)
        header: dict[str, Any] = {}
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                header = value
            elif key == "file":
                tree[value["path"]] = self.hub.store_blob(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                stored = self.hub.lfs_path(value["oid"])
                if not stored.is_file():
                    return self._error(
                        422, "UnprocessableEntity", f"LFS object {value['oid']} missing"
                    )
                pointer = f"oid sha256:{value['oid']}\nsize {value['size']}\n".encode()
                tree[value["path"]] = File(
                    value["size"], git_blob_id(pointer), value["oid"], stored
                )
            elif key == "deletedFile":
                tree.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                tree = {p: f for p, f in tree.items() if not p.startswith(folder)}
        oid = hashlib.sha1(
            json.dumps([repo_id, branch, len(repo.commits), sorted(tree)]).encode()
        ).hexdigest()
        repo.commits.append({"id": oid, "title": header.get("summary", ""), "tree": dict(tree)})
        repo.branches[branch] = tree
        repo.heads[branch] = oid
        prefix = "" if kind == "model" else f"{kind}s/"
        url = f"http://{self.headers.get('Host')}/{prefix}{repo_id}/commit/{oid}"
        return self._send(200, {"commitUrl": url, "commitOid": oid, "success": True})

    def _resolve(self, kind: str, repo_id: str, revision: str, path: str, head: bool) -> None:
        repo = self._repo(kind, repo_id, head)
        files = self._branch(repo, revision, head) if repo else None
        if repo is None or files is None:
            return None
        f = files.get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist", head)
        data = f.stored.read_bytes()
        etag = f'"{f.sha256 or f.blob_id}"'
        headers = {
            "ETag": etag,
            "X-Repo-Commit": self._head_of(repo, revision),
            "Accept-Ranges": "bytes",
        }
        if f.sha256:
            headers["X-Linked-Etag"] = etag
            headers["X-Linked-Size"] = str(f.size)
        status = 200
        ranged = self.headers.get("Range")
        if ranged and ranged.startswith("bytes=") and not head:
            start_text, _, end_text = ranged[len("bytes=") :].partition("-")
            start = int(start_text or 0)
            end = min(int(end_text), len(data) - 1) if end_text else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        return self._send(status, data, headers, head)


def start(root: Path, token: str = "hf_test_token_0123456789") -> HubServer:
    hub = Hub(root, token)
    handler = type("BoundHandler", (Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return HubServer(f"http://127.0.0.1:{server.server_address[1]}", hub, server)
