"""The trainer image's entry point: `python -m finetune_trainer` (docs/CONTRACTS.md).

Reads the FineTuneJob manifest (JSON) from env FINETUNE_JOB or `--spec FILE` (JSON or
YAML), runs it into spec.output.path (default /output), reports to stdout (and, with
FINETUNE_STATUS_SINK=kubernetes, to the FineTuneJob's status), and writes the
termination message. Exit 0 on success, 2 for an error the user can fix, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from finetune_api.manifest import SpecError, UserError, load_manifest, parse
from finetune_api.models import FineTuneJob
from finetune_trainer.signals import SIGTERM_EXIT, BudgetExhausted, Terminated

DEFAULT_OUTPUT = "/output"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LIMIT = 4096


def load_job(spec_file: str | None) -> tuple[FineTuneJob, Path | None]:
    if spec_file:
        path = Path(spec_file)  # JSON is YAML: the same reader as `finetune run`
        return load_manifest(path, FineTuneJob), path.resolve().parent
    raw = os.environ.get("FINETUNE_JOB")
    if not raw:
        raise SpecError("no job: set env FINETUNE_JOB to the FineTuneJob JSON or pass --spec FILE")
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as err:
        raise SpecError(f"FINETUNE_JOB: not valid JSON: {err}") from None
    return parse(FineTuneJob, doc, prefix="FINETUNE_JOB: "), None


def termination_message(payload: dict[str, Any]) -> str:
    """JSON of at most 4096 bytes: drop artifacts, then metrics, then cut the message."""
    text = json.dumps(payload)
    if len(text.encode()) <= TERMINATION_LIMIT:
        return text
    payload = dict(payload)
    for key in ("artifacts", "metrics"):
        payload[key] = {}
        text = json.dumps(payload)
        if len(text.encode()) <= TERMINATION_LIMIT:
            return text
    payload["message"] = str(payload.get("message", ""))[:2000] + " ..."
    return json.dumps(payload)[:TERMINATION_LIMIT]


def write_termination(payload: dict[str, Any]) -> None:
    path = os.environ.get("FINETUNE_TERMINATION_LOG")
    if not path:
        if not (
            os.path.exists(DEFAULT_TERMINATION_LOG) and os.access(DEFAULT_TERMINATION_LOG, os.W_OK)
        ):
            return
        path = DEFAULT_TERMINATION_LOG
    try:
        Path(path).write_text(termination_message(payload))
    except OSError as err:
        print(f"warning: cannot write the termination message to {path}: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_trainer", description=__doc__)
    parser.add_argument("--spec", help="FineTuneJob manifest file (JSON or YAML)")
    parser.add_argument("--output", help="artifact directory (overrides spec.output.path)")
    parser.add_argument("--spec-dir", help="resolve relative paths in the spec against this folder")
    args = parser.parse_args(argv)
    output = Path(args.output or DEFAULT_OUTPUT)
    try:
        job, spec_dir = load_job(args.spec)
        spec_dir = Path(args.spec_dir).resolve() if args.spec_dir else spec_dir
        from finetune_trainer.report import KubernetesSink, Sink, StdoutSink
        from finetune_trainer.run import METRICS_FILE, run

        sinks: list[Sink] = [StdoutSink(sys.stdout)]
        if os.environ.get("FINETUNE_STATUS_SINK", "").lower() == "kubernetes":
            try:
                sinks.append(
                    KubernetesSink.from_env(
                        namespace=job.metadata.namespace, name=job.metadata.name
                    )
                )
            except Exception as err:  # reporting must never stop training
                print(f"warning: no Kubernetes status sink: {err}", file=sys.stderr)
        output = Path(args.output or job.spec.output.path or DEFAULT_OUTPUT)
        metrics = run(job, spec_dir=spec_dir, output_dir=output, sinks=sinks)
        if os.environ.get("RANK", "0") != "0":
            return 0  # under torchrun, the main process reports the run (and its pod's result)
        state = json.loads((output / METRICS_FILE).read_text())
        write_termination(
            {
                "phase": "Succeeded",
                "metrics": metrics,
                "artifacts": state.get("artifacts", {}),
                "message": state.get("message", ""),  # e.g. what tracking lost
            }
        )
        return 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        reason = getattr(err, "reason", None)  # e.g. ChatTemplate: the Failed condition's reason
        write_termination(
            {"phase": "Failed", "metrics": {}, "artifacts": {}, "message": str(err)}
            | ({"reason": reason} if reason else {})
        )
        return 2
    except BudgetExhausted as err:  # spec.budget spent, checkpoint saved: not a failure
        print(f"finetune: {err.message}", file=sys.stderr, flush=True)
        write_termination(
            {"phase": "Suspended", "reason": err.reason, "metrics": {}, "artifacts": {}}
            | {"message": err.message, "step": err.step}
        )
        return 0  # exit 0: the Job completes, nothing retries a spent budget
    except (Terminated, KeyboardInterrupt) as err:  # one line, metrics.json says it too
        from finetune_trainer.interrupt import failure_message

        message = failure_message(err, output)
        print(f"finetune: {message}", file=sys.stderr, flush=True)
        write_termination({"phase": "Failed", "metrics": {}, "artifacts": {}, "message": message})
        return SIGTERM_EXIT if isinstance(err, Terminated) else 130
    except Exception as err:  # one `error:` line, never a traceback (failure.py)
        from finetune_trainer.failure import report_unexpected

        message = report_unexpected(err)
        write_termination({"phase": "Failed", "metrics": {}, "artifacts": {}, "message": message})
        return 1


if __name__ == "__main__":
    sys.exit(main())
