"""KServe's real InferenceService CRD, taken from KServe's published Go module at test
time (`go mod download`, through the Go module proxy into the Go module cache; never
copied into this repository), and installed on a control plane."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

KSERVE_MODULE = "github.com/kserve/kserve"
KSERVE_VERSION = "v0.15.2"
CRD_FILE = "config/crd/full/serving.kserve.io_inferenceservices.yaml"
CRD_NAME = "inferenceservices.serving.kserve.io"


def inference_service_crd(version: str = KSERVE_VERSION) -> dict[str, Any]:
    found = subprocess.run(
        ["go", "mod", "download", "-json", f"{KSERVE_MODULE}@{version}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    folder = Path(json.loads(found.stdout)["Dir"])
    return dict(yaml.safe_load((folder / CRD_FILE).read_text()))


def install(client: httpx.Client, crd: dict[str, Any], timeout: float = 60) -> None:
    """Create the CRD (kept when already there) and wait until it is Established."""
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    resp = client.post(path, json=crd)
    if resp.status_code not in (200, 201, 409):
        raise RuntimeError(f"installing {CRD_NAME}: {resp.status_code} {resp.text[:500]}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = client.get(f"{path}/{CRD_NAME}").json()
        conditions = (got.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{CRD_NAME} not Established in {timeout:.0f} s")
