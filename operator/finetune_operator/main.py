"""Run the operator: kopf with our settings, plus the /metrics and liveness servers.

`finetune operator` calls `run_operator(...)`; tests and the benchmark call the
async `serve(...)` with a stop flag to run it in-process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import threading
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# Both kinds' handlers register themselves on kopf's default registry on import.
from finetune_operator import handlers_job, handlers_sweep, kube
from finetune_operator.config import OperatorConfig
from finetune_operator.state import ReconcileState

__all__ = ("handlers_job", "handlers_sweep", "run_operator", "serve")

log = logging.getLogger("finetune_operator")


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, else KUBECONFIG / ~/.kube/config.

    In-cluster, the server is KUBERNETES_SERVICE_HOST:PORT, as client-go (and kube.py's
    config) read it: kopf's own login names https://kubernetes.default.svc, which needs
    cluster DNS (found on the local cluster, which has none)."""
    if os.path.exists(kube.SERVICE_ACCOUNT_TOKEN) and not os.environ.get("KUBECONFIG"):
        info = kopf.login_with_service_account(settings=settings)
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        if info is None or not host:
            return info
        host = f"[{host}]" if ":" in host else host
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        return dataclasses.replace(info, server=f"https://{host}:{port}")
    return kopf.login_with_kubeconfig(settings=settings)


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: every handler here is an event or index handler, and kopf reads a diff
    base only for change handlers (on.create/update/delete/resume), yet by default
    deep-copies each object into one on every watch event. (A test checks that no change
    handler is registered.)"""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def configure_settings(
    settings: kopf.OperatorSettings, *, peering: str | None, namespaces: list[str] | None = None
) -> None:
    """kopf settings: quiet event posting, timeouts, peering; no namespace scanning when
    the namespaces are named (so a namespaced install needs no cluster-wide RBAC)."""
    if namespaces and not any(ch in ns for ns in namespaces for ch in "*?!,"):
        settings.scanning.disabled = True
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING  # our own Events carry the milestones
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.batching.error_delays = (1, 2, 5, 10, 30, 60)
    if peering:
        settings.peering.name = peering
        settings.peering.standalone = False
        settings.peering.mandatory = True
    else:
        settings.peering.standalone = True


async def start_metrics_server(
    port: int, registry: CollectorRegistry, host: str = "0.0.0.0"
) -> web.AppRunner:
    """/metrics (Prometheus text format) and a trivial /healthz on the same port."""

    async def metrics_view(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_view(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", health_view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve(
    *,
    namespaces: list[str] | None = None,
    metrics_port: int = 8080,
    health_port: int | None = 8081,
    trainer_image: str | None = None,
    peering: str | None = None,
    kubeconfig: str | None = None,
    host: str = "0.0.0.0",
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    config: OperatorConfig | None = None,
) -> None:
    """Run the operator until stop_flag is set (or forever)."""
    cfg = config or OperatorConfig.from_env(trainer_image)
    if kubeconfig:  # kopf's login handler and kube.py then read the same file
        os.environ["KUBECONFIG"] = kubeconfig
    client = await kube.connect(await kube.load_configuration(kubeconfig=kubeconfig))
    state = ReconcileState.create(cfg, client)
    runner = await start_metrics_server(metrics_port, state.publisher.instruments.registry, host)
    settings = kopf.OperatorSettings()
    configure_settings(settings, peering=peering, namespaces=namespaces)
    log.info(
        "finetune operator: namespaces=%s metrics=:%d health=:%s image=%s peering=%s",
        namespaces or "all",
        metrics_port,
        health_port,
        cfg.trainer_image,
        peering or "off",
    )
    try:
        await kopf.operator(
            settings=settings,
            standalone=peering is None,
            peering_name=peering,
            clusterwide=not namespaces,
            namespaces=namespaces or (),
            liveness_endpoint=f"http://{host}:{health_port}/healthz" if health_port else None,
            memo=kopf.Memo(config=cfg, state=state),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        state.cancel()
        await runner.cleanup()
        await client.close()


def run_operator(
    *,
    namespaces: list[str],
    metrics_port: int,
    health_port: int,
    log_level: str = "info",
    trainer_image: str | None = None,
    peering: str | None = None,
) -> None:
    """Blocking entry point for `finetune operator`."""
    level = log_level.upper()
    kopf.configure(debug=level == "DEBUG", quiet=level in ("WARNING", "ERROR"))
    logging.getLogger().setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Everything imported so far lives for the whole process: move it out of the collector's
    # sight, and collect young objects less often. A burst of watch events allocates many
    # short-lived dicts; with the defaults the collector took a sixth of the operator's CPU.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    asyncio.run(
        serve(
            namespaces=namespaces,
            metrics_port=metrics_port,
            health_port=health_port,
            trainer_image=trainer_image,
            peering=peering,
        )
    )
