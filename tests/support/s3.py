"""A real S3-compatible server on 127.0.0.1 for the tests, built from its Go module.

The server is gofakes3 (github.com/johannesboyne/gofakes3, the S3 implementation behind
rclone's `serve s3`), compiled from tests/support/s3server (go.mod / go.sum pin it) into
the user cache once, in seconds. Why not moto's server mode: moto needs boto3/botocore,
which require python-dateutil < 3, and this environment pins python-dateutil 4. Why not
MinIO: its Go module tree takes many minutes to compile on a 2-core machine. gofakes3 does
not verify request signatures, so "missing credentials" is the client's own check
(finetune_trainer.storage), which runs before any request.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "s3server"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "finetune-tests"


def binary() -> Path:
    """The server binary, built on first use (go build, module proxy or module cache)."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    text = (SOURCE / "go.sum").read_text() + (SOURCE / "main.go").read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    target = CACHE / f"s3server-{digest}"
    if not target.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        subprocess.run([go, "build", "-o", str(partial), "."], cwd=SOURCE, check=True, timeout=600)
        os.replace(partial, target)
    return target


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[str]

    def env(self) -> dict[str, str]:
        """The standard AWS settings a client reads (any key works: no signature check)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "finetune-test",
            "AWS_SECRET_ACCESS_KEY": "finetune-test-secret",
            "AWS_REGION": "us-east-1",
        }

    def make_bucket(self, name: str) -> None:
        """Create the bucket (an existing one is fine)."""
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except urllib.error.HTTPError as err:
            if err.code != 409:  # BucketAlreadyExists / BucketAlreadyOwnedByYou
                raise

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start() -> S3Server:
    process = subprocess.Popen(
        [str(binary()), "-addr", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("listening "):
        process.kill()
        raise RuntimeError(f"s3 server did not start: {line!r}")
    return S3Server(f"http://{line.split(' ', 1)[1]}", process)
