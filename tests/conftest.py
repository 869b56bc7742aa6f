"""Repository-wide test settings: never reach a model hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


import pytest


@pytest.fixture(scope="session")
def control_plane():  # type: ignore[no-untyped-def]
    """The session's real control plane (support/plane.py), started on first use."""
    import shutil
    import tempfile
    from pathlib import Path

    from finetune_cluster.controlplane import stop
    from support.plane import start_plane

    # Not under /tmp: every trainer pod mounts an emptyDir at /tmp, which would hide the
    # node agent's volume folders and the stub's orders from it.
    root = Path(tempfile.mkdtemp(prefix="finetune-cluster-", dir="/var/tmp"))
    root.chmod(0o755)
    plane = start_plane(root)
    try:
        yield plane
    finally:
        stop(plane.cp.dir)
        shutil.rmtree(plane.stub_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def server_validate(control_plane):  # type: ignore[no-untyped-def]
    """doc -> the real kube-apiserver's refusal messages for a dry-run create (empty when it
    would be stored), with kubectl's strict field validation: what `kubectl apply
    --dry-run=server` reports. Each message is `field: reason` from the 422's causes."""
    from support.plane import dry_run_create

    with control_plane.client() as client:
        yield lambda doc: dry_run_create(client, doc)
