"""A malformed KUBECONFIG: one `error:` line naming the file and what is wrong with it,
exit 2 and no traceback, from every command that talks to a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_cli.app import app

pytestmark = pytest.mark.unit

CONTEXT = (
    "clusters:\n- cluster: {server: 'https://127.0.0.1:1'}\n  name: c\n"
    "contexts:\n- context: {cluster: c, user: u}\n  name: x\ncurrent-context: x\n"
)
BROKEN = {
    "yaml": ("apiVersion: v1\nclusters: [\n", "not valid YAML: "),
    "not-a-mapping": ("hello\n", "is not a kubeconfig: it holds str, not a mapping"),
    "bad-base64": (
        "apiVersion: v1\nusers:\n- name: u\n  user: {client-certificate-data: '!!!x'}\n" + CONTEXT,
        "malformed: Error: Invalid base64",
    ),
    "no-context": (
        "apiVersion: v1\nclusters: []\ncontexts: []\ncurrent-context: nope\n",
        "Expected object with name nope",
    ),
}
COMMANDS = [["get"], ["get", "-A"], ["watch", "x"], ["describe", "x"], ["logs", "x"]]


@pytest.mark.parametrize("broken", list(BROKEN))
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_cluster_command_says_what_is_wrong_with_the_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], broken: str
) -> None:
    text, reason = BROKEN[broken]
    config = tmp_path / "kubeconfig"
    config.write_text(text)
    monkeypatch.setenv("KUBECONFIG", str(config))
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no usable Kubernetes credentials")
    assert f"the kubeconfig {config} could not be used" in lines[0] and reason in lines[0]
    assert "Traceback" not in result.output


def test_the_operator_command_says_it_too(tmp_path: Path) -> None:
    # A process of its own: kubernetes_asyncio reads $KUBECONFIG once, at import.
    config = tmp_path / "kubeconfig"
    config.write_text(BROKEN["yaml"][0])
    env = dict(os.environ, KUBECONFIG=str(config))
    proc = subprocess.run(
        [sys.executable, "-c", "from finetune_cli.app import main; main()", "operator", "-A"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"the kubeconfig {config} could not be used" in lines[0]
    assert "not valid YAML" in lines[0]
