"""The committed CRDs' schemas, read from crds/*.yaml (no validation: the real
kube-apiserver validates, see tests/conftest.py `server_validate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def load_crds() -> dict[str, dict[str, Any]]:
    """kind -> openAPIV3Schema from the committed crds/*.yaml."""
    out = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        kind = crd["spec"]["names"]["kind"]
        out[kind] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return out
