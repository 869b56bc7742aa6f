"""`finetune`: the command line. Top layer: parses arguments, delegates, prints errors.

Heavy packages load lazily: `finetune crds` and `finetune operator` never import
torch; `finetune run`, `advise`, `predict` and `sweep` import the trainer only when called.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from finetune_api.manifest import UserError
from finetune_cli import cluster_commands
from finetune_cli.help_examples import epilog

app = typer.Typer(
    name="finetune",
    help="Fine-tune Hugging Face models from one YAML file, locally or on Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a manifest field, e.g. --set spec.hyperparameters.epochs=1 or "
        "--set spec.model.path=DIR (replaces model.name) (repeatable; the value is YAML). "
        "A relative path given here resolves against the current directory; the "
        "file's own relative paths resolve against the file's folder.",
    ),
]
SweepSetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a manifest field, e.g. --set spec.maxTrials=4 or, for every trial, "
        "--set spec.template.hyperparameters.epochs=1 (repeatable; the value is YAML). "
        "A relative path given here resolves against the current directory.",
    ),
]


def fail(message: str, code: int = 2) -> NoReturn:
    if "tqdm" in sys.modules:  # a run's progress bar may have the cursor mid-line
        from finetune_trainer.failure import close_progress_bars

        close_progress_bars()
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def unexpected(err: Exception) -> NoReturn:
    """A failure nobody foresaw: one `error:` line (traceback with FINETUNE_DEBUG=1), exit 1."""
    from finetune_trainer.failure import report_unexpected

    report_unexpected(err)
    raise typer.Exit(1)


def interrupted(output_dir: Path | None, how: str = "Ctrl-C", code: int = 130) -> NoReturn:
    """Ctrl-C (exit 130) or SIGTERM (exit 143) during `finetune run`: one line saying what
    happened and what a rerun does, instead of a traceback (metrics.json says it too)."""
    if output_dir is not None:
        from finetune_trainer.interrupt import interrupted_message

        message = interrupted_message(output_dir, how)
        typer.secho(f"finetune: {message}", fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(code)


def output_source(output: Path | None, job_output: str | None) -> str:
    """Where a run's output directory came from, for an error message."""
    if output is not None:
        return "--output"
    return "spec.output.path" if job_output else "output directory (default ./runs/NAME)"


@app.command(epilog=epilog("run"))
def run(
    file: Annotated[Path, typer.Argument(help="A FineTuneJob manifest (YAML).")],
    overrides: SetOption = None,
    output: Annotated[
        Path | None, typer.Option(help="Artifact directory (overrides spec.output.path).")
    ] = None,
) -> None:
    """Run a FineTuneJob in-process on this machine (CPU or GPU)."""
    from finetune_api.manifest import load_manifest
    from finetune_api.models import FineTuneJob
    from finetune_trainer.signals import SIGTERM_EXIT, BudgetExhausted, Terminated, sigterm_raises

    output_dir: Path | None = None
    try:
        with sigterm_raises():
            job = load_manifest(file, FineTuneJob, overrides)
            from finetune_cli.launch import default_output

            output_dir = (output or default_output(job)).resolve()
            from finetune_trainer.rundir import prepare

            prepare(output_dir, output_source(output, job.spec.output.path))
            if job.spec.resources.nodes > 1:  # worker processes under torchrun, as in a pod
                from finetune_cli.launch import run_workers

                run_workers(job, spec_dir=file.resolve().parent, output=output_dir)
                return
            from finetune_trainer.run import run_local

            run_local(job, spec_dir=file.resolve().parent, output=output_dir)
    except UserError as err:
        fail(str(err))
    except KeyboardInterrupt:
        interrupted(output_dir)
    except Terminated:
        interrupted(output_dir, "SIGTERM", SIGTERM_EXIT)
    except BudgetExhausted as err:  # spec.budget spent: checkpoint saved, phase Suspended
        typer.echo(f"finetune: {err.message}", err=True)
    except Exception as err:
        unexpected(err)


@app.command(epilog=epilog("advise"))
def advise(
    file: Annotated[Path, typer.Argument(help="A FineTuneJob manifest (YAML).")],
    overrides: SetOption = None,
) -> None:
    """Should I fine-tune? Data size, token lengths, domain fit and a baseline; no training."""
    from finetune_api.manifest import load_manifest
    from finetune_api.models import FineTuneJob

    try:
        job = load_manifest(file, FineTuneJob, overrides)
        from finetune_trainer.advise import advise as do_advise
        from finetune_trainer.advise import render

        render(do_advise(job, spec_dir=file.resolve().parent))
    except UserError as err:
        fail(str(err))


@app.command(epilog=epilog("predict"))
def predict(
    run_dir: Annotated[Path, typer.Argument(help="The artifact directory of a finished run.")],
    texts: Annotated[list[str], typer.Argument(help="Inputs to classify or prompts to continue.")],
    max_new_tokens: Annotated[int, typer.Option(help="causal-lm: tokens to generate.")] = 32,
) -> None:
    """Load a finished run and print labels (classification) or generations (causal LM).

    One line per input on stdout; which run is read (directory, finish time, a later
    failed run) goes to stderr first."""
    try:
        for number, text in enumerate(texts, 1):
            if not text.strip():
                raise UserError(
                    f"input {number} of {len(texts)} is empty: give the text to classify or "
                    'continue, e.g. finetune predict RUN_DIR "a gorgeous, moving film"'
                )
        from finetune_trainer.predict import predict as do_predict
        from finetune_trainer.rundir import describe

        lines = do_predict(run_dir, texts, max_new_tokens=max_new_tokens)
        typer.echo(describe(run_dir), err=True)
        for line in run_summary(run_dir):  # tracking link, lm-eval results
            typer.echo(line, err=True)
        for line in lines:
            typer.echo(line)
    except UserError as err:
        fail(str(err))


def run_summary(run_dir: Path) -> list[str]:
    """`predict`'s lines after the first: the MLflow run, lm-eval's table, the base model's
    metrics (spec.promote.when.beatsBase) and the promotion, where present."""
    import json

    from finetune_cli.views import base_lines, lm_eval_rows, promotion_lines, tracking_lines

    try:
        state = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return []
    lines = [f"finetune: {line}" for line in tracking_lines(state.get("artifacts") or {})]
    for task, metric, value, stderr in lm_eval_rows(state.get("metrics") or {}):
        spread = f" ± {stderr:.4f}" if stderr is not None else ""
        lines.append(f"finetune: lm-eval {task} {metric} {value:.4f}{spread}")
    extra = base_lines(state.get("metrics") or {}) + promotion_lines(state)
    return lines + [f"finetune: {line}" for line in extra]


@app.command(epilog=epilog("sweep"))
def sweep(
    file: Annotated[Path, typer.Argument(help="A HyperparameterSweep manifest (YAML).")],
    overrides: SweepSetOption = None,
    output: Annotated[
        Path | None, typer.Option(help="Where trials and results go (default ./runs/NAME).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Trials run at once, in worker processes.")] = 1,
) -> None:
    """Run a HyperparameterSweep locally: trials in-process or in worker processes."""
    from finetune_api.manifest import load_manifest
    from finetune_api.models import HyperparameterSweep

    try:
        spec = load_manifest(file, HyperparameterSweep, overrides)
        from finetune_cli.sweep_local import run_sweep

        run_sweep(spec, spec_dir=file.resolve().parent, output=output, workers=workers)
    except UserError as err:
        fail(str(err))


@app.command(epilog=epilog("operator"))
def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Watch this namespace (repeatable)."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace.")
    ] = False,
    metrics_port: Annotated[int, typer.Option(help="Port for /metrics (Prometheus).")] = 8080,
    health_port: Annotated[int, typer.Option(help="Port for the /healthz liveness probe.")] = 8081,
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error.")] = "info",
    trainer_image: Annotated[
        str | None,
        typer.Option(envvar="FINETUNE_TRAINER_IMAGE", help="Default trainer image for Jobs."),
    ] = None,
    peering: Annotated[
        str | None, typer.Option(help="kopf peering name for leader election (off by default).")
    ] = None,
) -> None:
    """Run the operator (kopf) against the cluster in KUBECONFIG or in-cluster config."""
    if not namespace and not all_namespaces:
        fail("choose --all-namespaces or at least one --namespace NS")
    if namespace and all_namespaces:
        fail("--namespace and --all-namespaces exclude each other")
    from finetune_operator.main import run_operator

    try:
        run_operator(
            namespaces=namespace or [],
            metrics_port=metrics_port,
            health_port=health_port,
            log_level=log_level,
            trainer_image=trainer_image,
            peering=peering,
        )
    except UserError as err:  # no credentials, a bad FINETUNE_* setting
        fail(str(err))


@app.command(epilog=epilog("crds"))
def crds(
    write: Annotated[
        bool, typer.Option(help="Write crds/*.yaml in a checkout instead of printing.")
    ] = False,
) -> None:
    """Print the CustomResourceDefinitions generated from the typed API models."""
    from finetune_api import crd

    if write:
        for path in crd.write_all():
            typer.echo(f"wrote {path}")
    else:
        sys.stdout.write(crd.render_all())


cluster_commands.register(app)  # get, watch, describe, logs


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # python -m finetune_cli.app ...
    main()
