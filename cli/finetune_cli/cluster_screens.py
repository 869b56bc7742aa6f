"""What `finetune get / watch / describe / logs` do: read with cluster.py, show with views.py.

`run_command` connects (KUBECONFIG or in-cluster, -n/-A/--context), runs one coroutine and
maps errors the user can act on to exit 2 with one line, Ctrl-C to 130.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live

from finetune_api.manifest import UserError
from finetune_cli import cluster, views
from finetune_cli.cluster import FTJ, SWEEP, SWEEP_LABEL, ClusterError, Obj, Session, meta

EXIT_FAILED = 1
LOG_RETRY_SECONDS = 1.0
TERMINAL = ("Succeeded", "Failed", "Pruned")


def run_command(
    body: Callable[[Session], Awaitable[int]],
    namespace: str | None,
    all_ns: bool,
    context: str | None,
) -> None:
    """Connect, run one command's coroutine, close; map errors and Ctrl-C to exit codes."""

    async def main() -> int:
        session = await cluster.connect(namespace, all_ns, context)
        try:
            return await body(session)
        finally:
            await cluster.close(session)

    try:
        code = asyncio.run(main())
    except UserError as err:  # ClusterError, or no usable credentials
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(code)


# --------------------------------------------------------------------------- get


async def get_view(session: Session, console: Console) -> int:
    jobs, sweeps = await cluster.list_resources(session)
    if not jobs and not sweeps:
        where = f"namespace {session.namespace!r}" if session.namespace else "any namespace"
        console.print(f"No FineTuneJobs or HyperparameterSweeps in {where}.")
        return 0
    console.print(views.get_table(jobs, sweeps, all_namespaces=session.namespace is None))
    return 0


# --------------------------------------------------------------------------- watch


async def _merge(*sources: AsyncIterator[tuple[str, Obj]]) -> AsyncIterator[tuple[int, str, Obj]]:
    """Interleave several watch streams as (source index, event type, object)."""
    queue: asyncio.Queue[tuple[int, str, Obj] | BaseException] = asyncio.Queue()

    async def pump(i: int, source: AsyncIterator[tuple[str, Obj]]) -> None:
        try:
            async for kind, obj in source:
                await queue.put((i, kind, obj))
        except Exception as err:  # surfaced to the reader
            await queue.put(err)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(sources)]
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Screen:
    """A rich Live view on a terminal; elsewhere (a pipe, CI) one line per change."""

    def __init__(
        self, console: Console, render: Callable[[], RenderableType], line: Callable[[], str]
    ):
        self.console, self.line, self.last = console, line, ""
        self.live = (
            Live(get_renderable=render, console=console, refresh_per_second=4)
            if console.is_terminal
            else None
        )

    def __enter__(self) -> Screen:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.stop()

    def update(self) -> None:
        if self.live is not None:
            self.live.refresh()
            return
        line = self.line()
        if line != self.last:
            self.console.print(line, highlight=False, soft_wrap=True)
            self.last = line


def _finished(obj: Obj, console: Console) -> int | None:
    """The exit code once the object reached a final phase, else None."""
    phase = views.phase_of(obj)
    if phase not in TERMINAL:
        return None
    if phase == "Failed":
        message = cluster.status(obj).get("message") or "no message in status"
        console.print(f"[red]error: {meta(obj)['name']} failed: {message}[/red]", highlight=False)
        return EXIT_FAILED
    return 0


async def watch_job(session: Session, ftj: Obj, console: Console) -> int:
    state = {"obj": ftj}
    with Screen(
        console, lambda: views.job_panel(state["obj"]), lambda: views.job_line(state["obj"])
    ) as screen:
        screen.update()
        if (code := _finished(ftj, console)) is not None:
            return code
        async for kind, obj in cluster.watch(session, FTJ, name=meta(ftj)["name"]):
            if kind == "DELETED":
                raise ClusterError(f"{meta(ftj)['name']} was deleted while watched")
            state["obj"] = obj
            screen.update()
            if (code := _finished(obj, console)) is not None:
                return code
    return 0  # pragma: no cover - the watch never ends by itself


async def watch_sweep(session: Session, sweep: Obj, console: Console) -> int:
    name = meta(sweep)["name"]
    state: dict[str, Any] = {"sweep": sweep, "trials": {}}
    for trial in await cluster.trials_of(session, sweep):
        state["trials"][meta(trial)["name"]] = trial

    def trials() -> list[Obj]:
        return sorted(state["trials"].values(), key=cluster.trial_number)

    render = lambda: views.sweep_panel(state["sweep"], trials())  # noqa: E731
    with Screen(console, render, lambda: views.sweep_line(state["sweep"], trials())) as screen:
        screen.update()
        if (code := _finished(sweep, console)) is not None:
            return code
        streams = _merge(
            cluster.watch(session, SWEEP, name=name),
            cluster.watch(session, FTJ, label=f"{SWEEP_LABEL}={name}"),
        )
        async for source, kind, obj in streams:
            if source == 1:
                if kind == "DELETED":
                    state["trials"].pop(meta(obj)["name"], None)
                else:
                    state["trials"][meta(obj)["name"]] = obj
            elif kind == "DELETED":
                raise ClusterError(f"{name} was deleted while watched")
            else:
                state["sweep"] = obj
            screen.update()
            if source == 0 and (code := _finished(obj, console)) is not None:
                return code
    return 0  # pragma: no cover


async def watch_view(session: Session, name: str, console: Console) -> int:
    plural, obj = await cluster.find(session, name)
    session = cluster.in_namespace(session, obj)
    if plural == SWEEP:
        return await watch_sweep(session, obj, console)
    return await watch_job(session, obj, console)


# --------------------------------------------------------------------------- describe


async def describe_view(session: Session, name: str, console: Console) -> int:
    plural, obj = await cluster.find(session, name)
    session = cluster.in_namespace(session, obj)
    if plural == SWEEP:
        trials = await cluster.trials_of(session, obj)
        events = [
            e
            for e in await cluster.list_objects(session, "", "v1", "events")
            if (e.get("involvedObject") or {}).get("name") == name
        ]
        console.print(Group(*views.describe_sweep(obj, trials, events)))
    else:
        console.print(Group(*views.describe_job(obj, await cluster.details(session, obj))))
    return 0


# --------------------------------------------------------------------------- logs


async def logs_view(
    session: Session, name: str, follow: bool, rank: int | None, console: Console
) -> int:
    plural, obj = await cluster.find(session, name)
    if plural == SWEEP:
        raise ClusterError(
            f"{name} is a HyperparameterSweep; its trials have logs: finetune logs {name}-trial-N"
        )
    session = cluster.in_namespace(session, obj)
    pod = cluster.pick_pod(await cluster.pods_of(session, name), rank)
    which = f" with rank {rank}" if rank is not None else ""
    if pod is None and not follow:
        phase = views.phase_of(obj)
        raise ClusterError(f"no trainer pod{which} for {name} yet (phase {phase})")
    if pod is None:
        console.print(f"waiting for a trainer pod{which} of {name} ...", highlight=False)
        pod = await cluster.wait_for_pod(session, name, rank)
    rank_note = f" (rank {rank})" if rank is not None else ""
    console.print(f"==> pod {meta(pod)['name']}{rank_note} <==", style="bold", highlight=False)
    await _copy_log(session, pod, follow)
    return 0


async def _copy_log(session: Session, pod: Obj, follow: bool) -> None:
    """The pod's log to stdout; when following, wait while its container is starting."""
    out = sys.stdout.buffer
    while True:
        try:
            async for line in cluster.log_lines(session, pod, follow=follow):
                out.write(line)
                out.flush()
            return
        except cluster.NoLogYet:
            if not follow:
                raise
            await asyncio.sleep(LOG_RETRY_SECONDS)
