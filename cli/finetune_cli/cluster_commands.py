"""`finetune get / watch / describe / logs`: the cluster views (read-only).

Only the typer signatures live here, so importing the CLI stays light: the work
(cluster_screens.py, on the operator's kube client) is imported when a command runs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from finetune_cli.help_examples import epilog

Namespace = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace (default: the context's).")
]
AllNamespaces = Annotated[bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")]
Context = Annotated[str | None, typer.Option("--context", help="kubeconfig context to use.")]
Name = Annotated[str, typer.Argument(help="A FineTuneJob or HyperparameterSweep.")]


# --------------------------------------------------------------------------- typer


def register(app: typer.Typer) -> None:
    """Add the four cluster commands to the `finetune` app."""
    from rich.console import Console

    @app.command(epilog=epilog("get"))
    def get(
        namespace: Namespace = None, all_namespaces: AllNamespaces = False, context: Context = None
    ) -> None:
        """FineTuneJobs and sweeps on the cluster: phase, progress, key metric, ETA, age."""
        from finetune_cli import cluster_screens as screens

        screens.run_command(
            lambda s: screens.get_view(s, Console()), namespace, all_namespaces, context
        )

    @app.command(epilog=epilog("watch"))
    def watch(
        name: Name,
        namespace: Namespace = None,
        all_namespaces: AllNamespaces = False,
        context: Context = None,
    ) -> None:
        """Live progress until the job or sweep ends; exit 0 on success, 1 on failure."""
        from finetune_cli import cluster_screens as screens

        screens.run_command(
            lambda s: screens.watch_view(s, name, Console()), namespace, all_namespaces, context
        )

    @app.command(epilog=epilog("describe"))
    def describe(
        name: Name,
        namespace: Namespace = None,
        all_namespaces: AllNamespaces = False,
        context: Context = None,
    ) -> None:
        """Conditions, why it failed, events, the Job and Pods, artifacts; trials for a sweep."""
        from finetune_cli import cluster_screens as screens

        screens.run_command(
            lambda s: screens.describe_view(s, name, Console()), namespace, all_namespaces, context
        )

    @app.command(epilog=epilog("logs"))
    def logs(
        name: Name,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming.")] = False,
        rank: Annotated[
            int | None, typer.Option(help="Multi-node: the pod with job-completion-index N.")
        ] = None,
        namespace: Namespace = None,
        all_namespaces: AllNamespaces = False,
        context: Context = None,
    ) -> None:
        """The trainer pod's log (names the pod it reads); -f follows it."""
        console = Console(stderr=True)
        from finetune_cli import cluster_screens as screens

        screens.run_command(
            lambda s: screens.logs_view(s, name, follow, rank, console),
            namespace,
            all_namespaces,
            context,
        )
