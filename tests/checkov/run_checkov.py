"""checkov over everything this project ships to a cluster or builds into an image.

- the Helm chart, rendered (helm-python-sdk, as the tests do) with every value set of
  tests/unit/test_helm_chart.py and the values of the Argo CD Application in deploy/;
- deploy/ as committed (RBAC, monitoring, Argo CD);
- operator/Dockerfile and trainer_image/Dockerfile;
- the batch/v1 Job the operator's builder (`jobs.build_job`) makes for every FineTuneJob
  in examples/ and deploy/argocd/jobs/, and for trial 0 of every HyperparameterSweep.

Skipped checks live in .checkov.yaml at the repository root, each with its reason.
Run from the main venv (it renders the chart and builds the Jobs); checkov itself lives
in its own venv (`make checkov` creates .venv-checkov: its pins clash with torch's):

    .venv/bin/python tests/checkov/run_checkov.py --checkov .venv-checkov/bin/checkov

Exit status: checkov's (1 when any check fails).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "finetune"
CONFIG = ROOT / ".checkov.yaml"
DOCKERFILES = [ROOT / "operator" / "Dockerfile", ROOT / "trainer_image" / "Dockerfile"]
MANIFESTS = [
    *sorted((ROOT / "examples").glob("*.yaml")),
    *sorted((ROOT / "deploy/argocd/jobs").glob("*.yaml")),
]
RELEASE, NAMESPACE = "finetune", "finetune-system"
JOB_NAMESPACE = "ml-jobs"  # a FineTuneJob always has one on a cluster
UID = "00000000-0000-4000-8000-000000000000"


def chart_value_sets() -> dict[str, dict[str, Any]]:
    """The value sets the chart tests render, plus the Argo CD Application's values."""
    path = ROOT / "tests" / "unit" / "test_helm_chart.py"
    spec = importlib.util.spec_from_file_location("_chart_tests", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sets: dict[str, dict[str, Any]] = dict(module.VALUE_SETS)
    for doc in yaml.safe_load_all((ROOT / "deploy" / "argocd" / "application.yaml").read_text()):
        source = (doc or {}).get("spec", {}).get("source", {})
        if source.get("path") == "helm/finetune":
            sets["argocd-application"] = source.get("helm", {}).get("valuesObject", {})
    return sets


def render_chart(out: Path) -> int:
    import helm_python as helm

    count = 0
    chart = helm.Chart.load(CHART)
    try:
        for name, values in sorted(chart_value_sets().items()):
            rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE)
            folder = out / f"chart-{name}"
            folder.mkdir(parents=True)
            for template, text in rendered.items():
                if template.endswith(".yaml") and text.strip():
                    (folder / Path(template).name).write_text(text)
            count += 1
    finally:
        chart.close()
    return count


def trainer_jobs(out: Path) -> int:
    """The Job for each FineTuneJob (and sweep trial 0) in the example manifests, plus a
    two-node variant of the first (Indexed Job + headless Service, HF cache on a PVC)."""
    from finetune_api.manifest import parse
    from finetune_api.models import FineTuneJob, HyperparameterSweep

    folder = out / "trainer-jobs"
    folder.mkdir(parents=True)
    count = 0
    first: dict[str, Any] | None = None
    for path in MANIFESTS:
        for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d):
            doc.setdefault("metadata", {})["namespace"] = JOB_NAMESPACE
            if doc.get("kind") == "FineTuneJob":
                first = first or doc
                ftj = parse(FineTuneJob, doc, prefix=f"{path}: ")
            elif doc.get("kind") == "HyperparameterSweep":
                from finetune_operator.sweep_space import trial_job

                ftj = trial_job(parse(HyperparameterSweep, doc, prefix=f"{path}: "), 0, {})
            else:
                continue
            _write_job(ftj, folder / f"{path.parent.name}-{path.stem}-{i}.yaml")
            count += 1
    if first is not None:
        multi = {**first, "metadata": {**first["metadata"], "name": "multi-node"}}
        spec = first["spec"]
        multi["spec"] = {
            **spec,
            "resources": {**spec.get("resources", {}), "nodes": 2},
            "cache": {"pvc": "hf-cache"},
        }
        _write_job(
            parse(FineTuneJob, multi, prefix="two-node variant: "), folder / "multi-node.yaml"
        )
    return count


def _write_job(ftj: Any, path: Path) -> None:
    """The operator's Job for ftj (and its headless Service when it has one)."""
    from finetune_operator.config import OperatorConfig
    from finetune_operator.gang import build_service
    from finetune_operator.jobs import build_job

    job = build_job(ftj, UID, OperatorConfig())
    service = build_service(job, ftj)
    path.write_text(yaml.safe_dump_all([job] if service is None else [job, service]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkov", default=shutil.which("checkov") or "checkov")
    parser.add_argument("--keep", type=Path, help="write the generated manifests here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="checkov-") as tmp:
        out = args.keep or Path(tmp)
        charts, jobs = render_chart(out), trainer_jobs(out)
        # One checkov run over one folder (-d and -f together scan only the folders).
        shutil.copytree(ROOT / "deploy", out / "deploy")
        for dockerfile in DOCKERFILES:
            target = out / "dockerfiles" / dockerfile.parent.name / dockerfile.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dockerfile, target)
        print(f"checkov: {charts} chart renderings, {jobs} trainer Jobs, deploy/, 2 Dockerfiles")
        command = [args.checkov, "--config-file", str(CONFIG), "-d", str(out)]
        return subprocess.run(command, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
