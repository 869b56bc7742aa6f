"""The reporter and its sinks: metrics.json, stdout lines, the Kubernetes status patch."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.trainer


class FakeApiServer:
    """Records PATCH requests; answers 200 (or 500 when failing)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append(
                    {
                        "path": self.path,
                        "type": self.headers["Content-Type"],
                        "body": json.loads(body),
                    }
                )
                self.send_response(500 if outer.fail else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.close()


def test_reporter_fans_out_and_survives_a_failing_sink(tmp_path: Path) -> None:
    from finetune_trainer.report import Event, MetricsFileSink, Reporter, RunState, StdoutSink

    class Broken:
        def emit(self, event: Event, state: RunState) -> None:
            raise RuntimeError("boom")

    stream = io.StringIO()
    reporter = Reporter([Broken(), MetricsFileSink(tmp_path / "m.json"), StdoutSink(stream)])
    reporter.start(10, "hello")
    reporter.progress(step=5, epoch=0.5, metrics={"trainLoss": 0.5})
    for step in range(105):
        reporter.evaluation(step=step, epoch=1.0, metrics={"accuracy": 0.9})
    reporter.end(phase="Succeeded", metrics={"accuracy": 0.91}, artifacts={"model": "/m"})
    state = json.loads((tmp_path / "m.json").read_text())
    assert state["phase"] == "Succeeded" and state["metrics"]["accuracy"] == 0.91
    assert len(state["history"]) == 100 and state["history"][-1]["step"] == 104
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[start] hello"
    assert lines[1] == "[progress] step 5/10 epoch 0.50 trainLoss=0.5"
    assert lines[-1].startswith("[succeeded]")


def test_a_failure_before_any_step_prints_no_failed_line() -> None:
    from finetune_trainer.report import Reporter, StdoutSink

    stream = io.StringIO()
    Reporter([StdoutSink(stream)]).end(phase="Failed", message="no such file")
    assert stream.getvalue() == ""  # the caller's `error:` line comes first and alone
    stream = io.StringIO()
    reporter = Reporter([StdoutSink(stream)])
    reporter.start(10)
    reporter.progress(step=3, epoch=0.3, metrics={})
    reporter.end(phase="Failed", message="out of memory")
    assert stream.getvalue().splitlines()[-1] == "[failed] step 3/10 epoch 0.30"


def test_kubernetes_sink_merge_patches_status_and_throttles(api: FakeApiServer) -> None:
    from finetune_trainer.report import KubernetesSink, Reporter

    now = [0.0]
    sink = KubernetesSink(
        api_url=api.url, namespace="ns", name="job1", interval=5, clock=lambda: now[0]
    )
    reporter = Reporter([sink])
    reporter.start(100)
    reporter.progress(step=1, epoch=0.01, metrics={"trainLoss": 1.0})  # throttled
    now[0] = 6.0
    reporter.progress(step=2, epoch=0.02, metrics={"trainLoss": 0.9})  # sent
    reporter.evaluation(step=2, epoch=0.02, metrics={"accuracy": 0.7})  # always sent
    reporter.end(phase="Succeeded", artifacts={"model": "/output/model"})  # always sent
    assert len(api.requests) == 4
    first = api.requests[0]
    assert first["path"] == "/apis/finetune.dev/v1alpha1/namespaces/ns/finetunejobs/job1/status"
    assert first["type"] == "application/merge-patch+json"
    last = api.requests[-1]["body"]["status"]
    assert last["progress"] == {"epoch": 0.02, "step": 2, "totalSteps": 100}
    assert last["metrics"] == {"trainLoss": 0.9, "accuracy": 0.7}
    assert last["history"] == [{"epoch": 0.02, "step": 2, "accuracy": 0.7}]
    assert last["artifacts"] == {"model": "/output/model"}


def test_kubernetes_sink_failure_never_stops_the_run(
    api: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    from finetune_trainer.report import KubernetesSink, Reporter

    api.fail = True
    dead = KubernetesSink(api_url="http://127.0.0.1:9", namespace="ns", name="j", timeout=1)
    reporter = Reporter([KubernetesSink(api_url=api.url, namespace="ns", name="j"), dead])
    reporter.evaluation(step=1, epoch=1.0, metrics={"accuracy": 0.5})
    reporter.end(phase="Succeeded")
    assert len(api.requests) == 2
    assert "failed" in caplog.text


def test_status_metric_names() -> None:
    from finetune_trainer.report import status_metrics

    assert status_metrics(
        {
            "eval_loss": 0.5,
            "eval_accuracy": 0.9,
            "eval_f1_macro": 0.8,
            "train_samples_per_second": 100.0,
            "eval_runtime": 3.0,
            "loss": float("nan"),
        }
    ) == {"evalLoss": 0.5, "accuracy": 0.9, "f1Macro": 0.8, "samplesPerSecond": 100.0}
