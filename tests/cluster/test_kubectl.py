"""What a user's first minute does, with the real kubectl against the real kube-apiserver:
every example applies (server-side dry run), `kubectl get` prints the CRDs' columns and
`kubectl explain` shows the field descriptions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from support.plane import Plane

pytestmark = pytest.mark.cluster

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_the_crds_are_established_with_their_names(control_plane: Plane) -> None:
    out = control_plane.kubectl("get", "crd", "-o", "yaml").stdout
    crds = {c["metadata"]["name"]: c for c in yaml.safe_load(out)["items"]}
    for name in ("finetunejobs.finetune.dev", "hyperparametersweeps.finetune.dev"):
        conditions = {c["type"]: c["status"] for c in crds[name]["status"]["conditions"]}
        assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    resources = control_plane.kubectl("api-resources", "--api-group=finetune.dev").stdout
    assert "ftj" in resources and "hps,sweep" in resources
    # The category: `kubectl get finetune` lists both kinds.
    assert control_plane.kubectl("get", "finetune", "-A").returncode == 0


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_applies_server_side(control_plane: Plane, path: Path) -> None:
    out = control_plane.kubectl("apply", "--dry-run=server", "-n", "team-a", "-f", str(path))
    assert "created (server dry run)" in out.stdout, out.stdout + out.stderr


def test_a_bad_manifest_is_refused_with_the_field_named(control_plane: Plane) -> None:
    doc = yaml.safe_load((EXAMPLES[0].parent / "sst2-minilm.yaml").read_text())
    doc["spec"]["hyperparameters"]["learningRate"] = -1e-4
    doc["spec"]["lora"] = {"rank": 0}
    out = control_plane.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        "team-a",
        "-f",
        "-",
        input=yaml.safe_dump(doc),
        check=False,
    )
    assert out.returncode != 0
    assert "spec.hyperparameters.learningRate" in out.stderr
    assert "spec.lora.rank" in out.stderr


def test_get_shows_the_printer_columns(control_plane: Plane) -> None:
    path = EXAMPLES[0].parent / "sst2-minilm.yaml"
    control_plane.kubectl("apply", "-n", "team-b", "-f", str(path))
    try:
        control_plane.kubectl(
            "patch", "ftj", "sst2-minilm", "-n", "team-b", "--subresource=status", "--type=merge",
            "-p", '{"status": {"phase": "Running", "progress": {"step": 120},'
            ' "metrics": {"accuracy": 0.8245, "evalLoss": 0.4101}}}',
        )  # fmt: skip
        table = control_plane.kubectl("get", "ftj", "-n", "team-b").stdout.splitlines()
        assert table[0].split() == ["NAME", "TASK", "PHASE", "STEP", "ACCURACY", "EVAL-LOSS", "AGE"]
        assert table[1].split()[:6] == [
            "sst2-minilm", "classification", "Running", "120", "0.8245", "0.4101",
        ]  # fmt: skip
    finally:
        control_plane.kubectl("delete", "ftj", "sst2-minilm", "-n", "team-b")
    path = EXAMPLES[0].parent / "sweep-sst2.yaml"
    control_plane.kubectl("apply", "-n", "team-b", "-f", str(path))
    try:
        header = control_plane.kubectl("get", "sweep", "-n", "team-b").stdout.splitlines()[0]
        assert header.split() == ["NAME", "PHASE", "METRIC", "BEST", "TRIALS", "RUNNING", "AGE"]
        wide = control_plane.kubectl("get", "sweep", "-n", "team-b", "-o", "wide").stdout
        assert "BEST-TRIAL" in wide.splitlines()[0]
    finally:
        control_plane.kubectl("delete", "sweep", "--all", "-n", "team-b")


def test_explain_shows_the_descriptions(control_plane: Plane) -> None:
    out = control_plane.kubectl("explain", "finetunejob.spec.lora").stdout
    assert "LoRA" in out or "lora" in out
    assert "rank" in out
    hp = control_plane.kubectl("explain", "finetunejob.spec.hyperparameters.learningRate").stdout
    assert "Peak learning rate" in hp
