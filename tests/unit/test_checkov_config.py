""".checkov.yaml and tests/checkov/run_checkov.py: every skip has a reason, every input is scanned.

checkov itself runs in `make lint` (`make checkov`, its own venv); these tests keep its
configuration honest without it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".checkov.yaml"
CHECK_ID = re.compile(r"^CKV2?_[A-Z0-9]+_\d+$")


def load_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "run_checkov", ROOT / "tests/checkov/run_checkov.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_skipped_check_has_a_reason() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    skips = config["skip-check"]
    assert skips and all(CHECK_ID.match(s) for s in skips), skips
    assert len(set(skips)) == len(skips)
    for check in skips:
        (line,) = [li for li in CONFIG.read_text().splitlines() if re.match(rf"\s*- {check}\b", li)]
        reason = line.partition("#")[2].strip()
        assert len(reason) >= 30, f"{check}: the skip needs a reason after '#'"
    assert set(config["framework"]) == {"kubernetes", "dockerfile"}
    assert config.get("skip-download") is True  # no network in CI


def test_the_scan_covers_every_value_set_example_and_dockerfile(tmp_path: Path) -> None:
    runner = load_runner()
    sets = runner.chart_value_sets()
    from test_helm_chart import VALUE_SETS

    assert set(VALUE_SETS) <= set(sets) and "argocd-application" in sets
    assert runner.render_chart(tmp_path / "c") == len(sets)
    # Each rendering holds the operator Deployment checkov inspects.
    for folder in (tmp_path / "c").iterdir():
        kinds = [
            d["kind"] for f in folder.iterdir() for d in yaml.safe_load_all(f.read_text()) if d
        ]
        assert "Deployment" in kinds, folder.name
    trainable = [
        doc
        for path in runner.MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") in ("FineTuneJob", "HyperparameterSweep")
    ]
    assert (
        runner.trainer_jobs(tmp_path / "j")
        == len(trainable)
        >= len(list((ROOT / "examples").glob("*.yaml")))
    )
    scanned = {
        path.stem: [d for d in yaml.safe_load_all(path.read_text()) if d]
        for path in (tmp_path / "j" / "trainer-jobs").iterdir()
    }
    assert len(scanned) == len(trainable) + 1  # and the two-node variant
    assert [d["kind"] for d in scanned["multi-node"]] == ["Job", "Service"]
    for docs in scanned.values():
        job = docs[0]
        assert job["kind"] == "Job" and job["metadata"]["namespace"]
        pod = job["spec"]["template"]["spec"]
        assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert {p.parent.name for p in runner.DOCKERFILES} == {"operator", "trainer_image"}
    assert all(p.is_file() for p in runner.DOCKERFILES)


def test_make_lint_runs_checkov() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lint:.*\bcheckov\b", makefile, re.M)
    assert "tests/checkov/run_checkov.py" in makefile
