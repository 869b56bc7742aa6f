"""Models and data read by URI (spec.model.uri, spec.dataset.train/eval.uri).

A source URI is any fsspec URL storage.py can open: s3://, gs://, az:// (object stores)
and hf:// (huggingface_hub's HfFileSystem: hf://org/model, hf://datasets/org/name/f.jsonl,
`@revision` after the repo). It is downloaded into a local cache folder, then loaded as a
path is today:

- the folder is `<cache>/<sha256(uri)[:16]>/` (cache: FINETUNE_SOURCE_CACHE, else
  $HF_HOME/finetune-sources, HF_HOME defaulting to ~/.cache/huggingface);
  a read-only cache that lacks a source falls back to $TMPDIR/finetune-sources;
- a download goes to a temporary name and is renamed into place, with a marker
  (`.finetune-source.json`: the uri and the remote listing, name/size/etag) written
  inside first, so a folder there is always complete;
- the next run lists the remote again (the probe, before training) and reuses the folder
  when the listing is unchanged, else downloads afresh. With HF_HUB_OFFLINE=1 an hf://
  source is used from the cache only.

A model URI is a folder (a prefix, a hub repository or a folder in one) holding
config.json; a data URI is one file (its extension gives the format).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.models import FineTuneJobSpec
from finetune_trainer import storage

MARKER = ".finetune-source.json"


def cache_root() -> Path:
    configured = os.environ.get("FINETUNE_SOURCE_CACHE")
    if configured:
        return Path(configured).expanduser()
    hf_home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(hf_home).expanduser() / "finetune-sources"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Remote:
    """What a probe found at a source URI: files (relative name -> size/etag)."""

    uri: str
    field: str
    fs: Any
    root: str
    files: dict[str, dict[str, Any]]
    single: bool  # the URI is one file


def _signature(entry: dict[str, Any]) -> dict[str, Any]:
    keep = {"size": entry.get("size")}
    for key in ("ETag", "etag", "e_tag", "blob_id", "sha256", "LastModified", "last_modified"):
        value = entry.get(key)
        if value is not None:
            keep[key] = str(value)
    lfs = entry.get("lfs")
    if isinstance(lfs, dict) and lfs.get("sha256"):
        keep["sha256"] = str(lfs["sha256"])
    return keep


def probe(uri: str, field: str, *, single: bool) -> Remote:
    """List the source (one request or a few): a wrong bucket or repository, missing
    credentials, an unreachable endpoint or an unknown scheme is one line naming `field`."""
    scheme = storage.scheme_of(uri)
    instance_ok = bool(os.environ.get("FINETUNE_ALLOW_INSTANCE_CREDENTIALS"))
    if scheme == "s3" and not storage.has_credentials("s3") and not instance_ok:
        reason = storage.describe(RuntimeError("no credentials"))
        raise storage.StorageError(f"{field}: {uri}: {reason}")
    fs, root = storage.filesystem(uri, field)
    try:
        if single:
            info = fs.info(root)
            if info.get("type") == "directory":
                raise storage.StorageError(
                    f"{field}: {uri}: is a folder; name one data file (csv, tsv, jsonl, json, "
                    "parquet, txt)"
                )
            files = {root.rsplit("/", 1)[-1]: _signature(info)}
        else:
            found = fs.find(root, detail=True)
            prefix = root.rstrip("/") + "/"
            files = {
                str(path)[len(prefix) :]: _signature(entry)
                for path, entry in found.items()
                if str(path).startswith(prefix) and entry.get("type", "file") != "directory"
            }
    except storage.StorageError:
        raise
    except FileNotFoundError as err:
        reason = storage.describe(err, scheme)
        if reason.startswith("FileNotFoundError"):
            reason = f"not found ({reason})"
        raise storage.StorageError(f"{field}: {uri}: {reason}") from None
    except Exception as err:
        raise storage.StorageError(f"{field}: {uri}: {storage.describe(err, scheme)}") from None
    if not files:
        raise storage.StorageError(f"{field}: {uri}: no such object or prefix (nothing there)")
    if not single and "config.json" not in files:
        raise storage.StorageError(
            f"{field}: {uri}: not a Hugging Face model folder (no config.json among "
            f"{len(files)} file(s))"
        )
    return Remote(uri, field, fs, root, files, single)


def _complete(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _cached(uri: str) -> Path:
    """The cache folder of `uri`; when the cache is read-only (a read-only spec.cache)
    and does not hold it complete, a folder under TMPDIR instead."""
    name = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = cache_root() / name
    if _complete(target) is not None or _writable(cache_root()):
        return target
    return Path(tempfile.gettempdir()) / "finetune-sources" / name


def _writable(folder: Path) -> bool:
    """Whether folder (or the nearest existing folder above it) can be written."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return os.access(candidate, os.W_OK | os.X_OK)
    return False


def fetch(uri: str, field: str, *, single: bool) -> Path:
    """The source's local copy: the folder (a model) or the file (data) in the cache."""
    target = _cached(uri)
    if storage.scheme_of(uri) == "hf" and _offline():
        marker = _complete(target)
        if marker is None:
            raise storage.StorageError(
                f"{field}: {uri}: not in the local cache ({target}) and HF_HUB_OFFLINE=1 "
                "forbids reaching the hub; unset it (a read-only spec.cache sets it) or use "
                "a path"
            )
        return _local(target, marker, single)
    remote = probe(uri, field, single=single)
    marker = _complete(target)
    if marker is not None and marker.get("uri") == uri and marker.get("files") == remote.files:
        return _local(target, marker, single)
    return _local(target, _download(remote, target), single)


def _local(target: Path, marker: dict[str, Any], single: bool) -> Path:
    if not single:
        return target
    return target / str(next(iter(marker["files"])))


def _download(remote: Remote, target: Path) -> dict[str, Any]:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        for name in remote.files:
            source = remote.root if remote.single else f"{remote.root}/{name}"
            local = partial / name
            local.parent.mkdir(parents=True, exist_ok=True)
            remote.fs.get_file(source, str(local))
    except Exception as err:
        shutil.rmtree(partial, ignore_errors=True)
        reason = storage.describe(err, storage.scheme_of(remote.uri))
        raise storage.StorageError(f"{remote.field}: {remote.uri}: download: {reason}") from None
    marker = {"uri": remote.uri, "files": remote.files}
    (partial / MARKER).write_text(json.dumps(marker))
    stale = target.parent / f".{target.name}.stale-{os.getpid()}"
    if target.exists():
        os.replace(target, stale)
    try:
        os.replace(partial, target)
    except OSError:  # another process (a rank on this machine) renamed its copy first
        if _complete(target) is None:
            raise
        shutil.rmtree(partial, ignore_errors=True)
    with contextlib.suppress(OSError):
        shutil.rmtree(stale)
    return marker


def uris(spec: FineTuneJobSpec) -> list[tuple[str, str, bool]]:
    """(uri, spec field, single file) of every source the spec reads by URI."""
    found = []
    if spec.model.uri:
        found.append((spec.model.uri, "spec.model.uri", False))
    for role, source in (("train", spec.dataset.train), ("eval", spec.dataset.eval)):
        if source is not None and source.uri:
            found.append((source.uri, f"spec.dataset.{role}.uri", True))
    teacher = spec.distillation.teacher if spec.distillation else None
    if teacher is not None and teacher.uri:
        found.append((teacher.uri, "spec.distillation.teacher.uri", False))
    return found


def check(spec: FineTuneJobSpec) -> None:
    """Before anything loads: every source URI is listed (or, offline, found in the
    cache), so a bad one fails in seconds with its field named."""
    for uri, field, single in uris(spec):
        if storage.scheme_of(uri) == "hf" and _offline():
            if _complete(_cached(uri)) is None:
                fetch(uri, field, single=single)  # raises the offline message
            continue
        probe(uri, field, single=single)
