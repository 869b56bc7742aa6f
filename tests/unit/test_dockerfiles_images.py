"""The two Dockerfiles: pinned bases, non-root users, the right extras and entry points.

No Docker engine here, so the files are parsed and checked statically; the kind
e2e workflow (.github/workflows/e2e.yaml) builds and runs them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TRAINER = ROOT / "trainer_image" / "Dockerfile"
OPERATOR = ROOT / "operator" / "Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[dict]:
    """Per FROM: the resolved base image, stage name and the instructions after it."""
    args: dict[str, str] = {}
    result: list[dict] = []
    for word, rest in instructions(path):
        if word == "ARG" and not result:
            name, _, default = rest.partition("=")
            args[name] = default.strip().strip('"')
        elif word == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            result.append({"image": image, "name": name, "body": []})
        elif result:
            result[-1]["body"].append((word, rest))
    return result


def is_pinned(image: str) -> bool:
    if re.search(r"@sha256:[a-f0-9]{64}$", image):
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return False  # no tag at all (the colon belonged to a registry port)
    return tag != "latest" and bool(re.match(r"^v?\d+\.\d+(\.\d+)?", tag))


def final_user(stage: dict) -> str | None:
    users = [rest for word, rest in stage["body"] if word == "USER"]
    return users[-1] if users else None


@pytest.mark.parametrize("path", [TRAINER, OPERATOR], ids=["trainer", "operator"])
def test_bases_are_pinned(path: Path) -> None:
    all_stages = stages(path)
    assert all_stages
    names = {s["name"] for s in all_stages if s["name"]}
    for stage in all_stages:
        if stage["image"] in names:
            continue
        assert is_pinned(stage["image"]), f"{path.name}: unpinned base {stage['image']}"


@pytest.mark.parametrize("path", [TRAINER, OPERATOR], ids=["trainer", "operator"])
def test_runs_as_non_root(path: Path) -> None:
    final = stages(path)[-1]
    user = final_user(final)
    assert user, f"{path}: the final stage sets no USER"
    uid = user.split(":")[0]
    assert uid not in ("root", "0"), user
    # Numeric, so Kubernetes runAsNonRoot can verify it without /etc/passwd.
    assert uid.isdigit() and int(uid) >= 1000
    # Nothing after USER switches back.
    body = final["body"]
    after = body[[w for w, _ in body].index("USER") + 1 :]
    assert all(w != "USER" for w, _ in after)


def test_parser_and_pin_rules() -> None:
    assert is_pinned("python:3.11.13-slim-bookworm")
    assert is_pinned("registry:5000/x/y@sha256:" + "0" * 64)
    assert not is_pinned("python:latest")
    assert not is_pinned("python")
    assert not is_pinned("registry:5000/python")
    assert not is_pinned("python:3-slim")  # a major-only tag moves
    assert not is_pinned("python:slim")


def test_trainer_image() -> None:
    (stage,) = stages(TRAINER)
    assert re.match(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime$", stage["image"])
    body = stage["body"]
    runs = " ".join(rest for word, rest in body if word == "RUN")
    assert '".[trainer]"' in runs
    # The base's CUDA torch is kept as a constraint, never silently replaced.
    assert "-c /tmp/constraints.txt" in runs
    volumes = " ".join(rest for word, rest in body if word == "VOLUME")
    assert "/cache/huggingface" in volumes and "/output" in volumes
    env = " ".join(rest for word, rest in body if word == "ENV")
    assert "HF_HOME=/cache/huggingface" in env
    assert "chown -R 10001:10001 /cache /output" in runs
    assert ("ENTRYPOINT", '["python", "-m", "finetune_trainer"]') in body


def test_operator_image() -> None:
    build, final = stages(OPERATOR)
    assert re.match(r"python:3\.\d+\.\d+-slim", final["image"])
    runs = " ".join(rest for word, rest in build["body"] if word == "RUN")
    assert '".[operator]"' in runs and "trainer]" not in runs
    assert ("ENTRYPOINT", '["finetune", "operator"]') in final["body"]
    exposed = " ".join(rest for word, rest in final["body"] if word == "EXPOSE").split()
    assert {"8080", "8081"} <= set(exposed)


# --------------------------------------------------------------------------- .dockerignore


def _regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path (or a parent folder) wins."""
    result = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        rx = _regex(raw.lstrip("!").strip("/"))
        if any(rx.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def test_dockerignore_keeps_what_the_builds_copy() -> None:
    patterns = dockerignore()
    for dockerfile in (TRAINER, OPERATOR):
        for word, rest in instructions(dockerfile):
            if word != "COPY" or rest.startswith("--from"):
                continue
            *sources, _dest = rest.split()
            for source in sources:
                path = ROOT / source
                assert path.exists(), source
                files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
                assert files, source
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    assert not ignored(rel, patterns), f"{rel} is excluded by .dockerignore"


def test_dockerignore_drops_the_heavy_and_the_private() -> None:
    patterns = dockerignore()
    for rel in (
        ".git/config",
        ".venv/bin/python",
        "tests/unit/test_dockerfiles.py",
        "examples/data/sst2/train.tsv",
        "runs/x/model.safetensors",
        "benchmarks/operator_scale.py",
        "helm/finetune/values.yaml",
        ".env",
        "crds/finetune_api/__pycache__/models.cpython-311.pyc",
    ):
        assert ignored(rel, patterns), rel
