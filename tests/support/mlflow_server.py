"""A real MLflow tracking server (`mlflow server`, SQLite backend) on 127.0.0.1 for tests.

The server's own dependencies (Flask, alembic, SQLAlchemy pins) do not fit the project's
venv, which holds only the client (`mlflow-skinny`), so the server runs from its own venv:
`FINETUNE_MLFLOW_SERVER_VENV` (default /var/tmp/finetune-mlflow-server), built on first
use with `pip install mlflow==<the client's version>` (the package registry only).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

VENV = Path(os.environ.get("FINETUNE_MLFLOW_SERVER_VENV", "/var/tmp/finetune-mlflow-server"))


def server_executable() -> Path:
    exe = VENV / "bin" / "mlflow"
    if exe.is_file():
        return exe
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    client = version("mlflow-skinny")
    pip = [str(VENV / "bin" / "pip"), "install", "-q"]
    if subprocess.run([*pip, f"mlflow=={client}"], check=False).returncode != 0:
        # A registry can hold the new mlflow-skinny before the full mlflow's own pins (seen:
        # skinny 3.18.0 without mlflow-tracing 3.18.0); the REST API the tests read is the
        # same across releases, so the newest earlier server does.
        print(f"mlflow=={client} cannot be installed; using the newest earlier mlflow")
        subprocess.run([*pip, f"mlflow<{client}"], check=True)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MlflowServer:
    url: str

    def get(self, endpoint: str, **params: Any) -> dict[str, Any]:
        query = urllib.parse.urlencode(params)
        address = f"{self.url}/api/2.0/mlflow/{endpoint}?{query}"
        with urllib.request.urlopen(address, timeout=10) as r:
            return dict(json.loads(r.read()))

    def post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/api/2.0/mlflow/{endpoint}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            return dict(json.loads(r.read()))

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.get("runs/get", run_id=run_id)["run"])

    def metric_history(self, run_id: str, key: str) -> list[dict[str, Any]]:
        found = self.get("metrics/get-history", run_id=run_id, metric_key=key, max_results=25000)
        return list(found.get("metrics", []))

    def artifacts(self, run_id: str, path: str = "") -> list[str]:
        found = self.get("artifacts/list", run_id=run_id, path=path)
        return [f["path"] for f in found.get("files", [])]

    def runs(self, experiment_id: str) -> list[dict[str, Any]]:
        found = self.post("runs/search", {"experiment_ids": [experiment_id]})
        return list(found.get("runs", []))


@contextmanager
def mlflow_server(root: Path) -> Iterator[MlflowServer]:
    exe = server_executable()
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(exe), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield MlflowServer(url)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
