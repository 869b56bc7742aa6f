"""`finetune operator` refuses unusable settings with a message, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_cli.app import app

pytestmark = pytest.mark.unit


def test_namespace_choice_is_required() -> None:
    result = CliRunner().invoke(app, ["operator"])
    assert result.exit_code == 2
    assert "--all-namespaces or at least one --namespace" in result.stderr


def test_no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    result = CliRunner().invoke(app, ["operator", "-A", "--metrics-port", "0"])
    assert result.exit_code == 2, result.output
    assert "no usable Kubernetes credentials" in result.stderr
    assert str(missing) in result.stderr


def test_bad_gpu_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_DEFAULT_TOLERATIONS", '{"key": "not a list"}')
    result = CliRunner().invoke(app, ["operator", "-n", "team-a"])
    assert result.exit_code == 2
    assert "FINETUNE_DEFAULT_TOLERATIONS must be a JSON list" in result.stderr


def test_no_diff_base_is_safe_only_without_change_handlers() -> None:
    """`NoDiffBase` drops kopf's per-event diff base, which only change handlers
    (on.create/update/delete/resume) read: adding one must also restore the default."""
    import kopf

    from finetune_operator.main import NoDiffBase, configure_settings

    registry = kopf.get_default_registry()
    assert registry._watching.get_all_handlers()  # the operator's handlers are registered
    assert registry._changing.get_all_handlers() == []
    settings = kopf.OperatorSettings()
    configure_settings(settings, peering=None, namespaces=["ns"])
    assert isinstance(settings.persistence.diffbase_storage, NoDiffBase)
