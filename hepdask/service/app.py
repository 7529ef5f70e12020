"""The ``hepdask service`` application: the jobs API, the MLaaS4HEP endpoints and inference on
every succeeded job's model, in one process in front of one Dask cluster.

The cluster is chosen like ``run``'s (``[cluster]``, ``--scheduler``, ``--gateway``): a local
cluster (started here) or a running scheduler is shared by every job, each job's
``hepdask run`` subprocess joining it with ``--scheduler``; with a dask-gateway, each job gets
a cluster of its own, sized by its hints.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

import fastapi
import uvicorn

from ..cluster import Connection, open_cluster
from ..config import ClusterConfig, from_table
from ..errors import HepdaskError, RequestError
from ..serve import inference_router, is_loopback, new_app
from .api import Place, Service, jobs_router, uploads_router
from .auth import User, user_dependency
from .compat import compat_router
from .runner import Runner
from .settings import ServiceSettings
from .state import JobRecord, Store

__all__ = ["DEFAULT_PORT", "make_app", "placement", "run_service"]

log = logging.getLogger("hepdask")

DEFAULT_PORT = 8765


def make_app(settings: ServiceSettings, *, auth: Callable[[str], User] | None, runner: Runner,
             store: Store, place: Place | None = None) -> fastapi.FastAPI:
    """The ASGI application of the service.

    Parameters
    ----------
    auth
        Token → user (:func:`~hepdask.service.auth.authenticator`); None: no auth, every
        request is the admin ``local`` (only for a service on loopback).
    place
        Maps a job's resource hints to the cluster (:func:`placement`); by default hints are
        recorded as given and jobs keep no [cluster] of their own.
    """
    user = user_dependency(auth, admins=settings.admins)
    app = new_app("hepdask service",
                  "Submit trainings (TOML configs or MLaaS4HEP workflows), follow them, fetch "
                  "their run bundles, and score events with the models of succeeded jobs.", user)
    service = Service(settings, store, runner,
                      place=place or (lambda hints: ({**hints, "cluster": "as given"}, {})))

    @app.get("/health", summary="Liveness (no token needed)")
    async def health() -> dict:
        return {"status": "ok"}

    app.include_router(jobs_router(service, user))
    app.include_router(uploads_router(service, user))
    app.include_router(compat_router(service, user))
    app.include_router(inference_router(service.bundles_for, user))
    return app


def placement(config: ClusterConfig, table: Mapping[str, Any],
              connection: Connection | None) -> Place:
    """How jobs' hints map to the cluster.

    On a shared cluster (``connection``) a hint beyond what it offers is refused: memory over
    the largest worker's limit, more cores than all its threads, a GPU without GPU workers. With
    a gateway, the job's own cluster gets ``worker_cores`` and ``worker_memory`` from the hints,
    beside the operator's ``[cluster.gateway]`` settings (``table``).
    """

    def shared(hints: dict) -> tuple[dict, dict]:
        workers = connection.client.scheduler_info()["workers"].values()
        threads = sum(w.get("nthreads", 0) for w in workers)
        memory = max((w.get("memory_limit") or 0 for w in workers), default=0)
        gpus = sum(w.get("resources", {}).get("GPU", 0) for w in workers)
        offer = (f"{len(workers)} workers, {threads} threads in all, up to "
                 f"{memory / 2**30:.1f} GiB per worker, {gpus or 'no'} GPUs")
        problems = []
        if hints.get("cpus", 0) > threads:
            problems.append(f"cpus = {hints['cpus']} (the cluster has {threads} threads)")
        if memory and hints.get("memory_bytes", 0) > memory:
            problems.append(f"memory = {hints['memory']} (its largest worker has "
                            f"{memory / 2**30:.1f} GiB)")
        if hints.get("device") == "gpu" and not gpus:
            problems.append("device = gpu (it has no GPU workers)")
        if problems:
            raise RequestError(f"This service's cluster ({offer}) cannot give the job "
                               f"{'; '.join(problems)}: ask for less, or leave the hint out.")
        recorded = {k: v for k, v in hints.items() if k != "memory_bytes"}
        return {**recorded, "cluster": f"shared cluster: {offer}"}, {}

    def own_gateway_cluster(hints: dict) -> tuple[dict, dict]:
        if hints.get("device") == "gpu":
            raise RequestError("This service's dask-gateway clusters have no GPU option: leave "
                               "device out or use \"cpu\".")
        job_table = copy.deepcopy(dict(table))
        gateway = job_table.setdefault("gateway", {})
        if "cpus" in hints:
            gateway["worker_cores"] = hints["cpus"]
        if "memory_bytes" in hints:
            gateway["worker_memory"] = round(hints["memory_bytes"] / 2**30, 3)
        mapped = ", ".join(f"{k} = {gateway[k]}" for k in ("worker_cores", "worker_memory")
                           if k in gateway) or "the gateway's default workers"
        recorded = {k: v for k, v in hints.items() if k != "memory_bytes"}
        return {**recorded, "cluster": f"own dask-gateway cluster: {mapped}"}, job_table

    return shared if config.kind != "gateway" else own_gateway_cluster


def run_service(settings: ServiceSettings, *, auth: Callable[[str], User] | None,
                cluster: Mapping[str, Any], host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                force_public: bool = False) -> None:
    """Run the service until interrupted: open the cluster, start the queue, serve HTTP.

    Parameters
    ----------
    cluster
        The ``[cluster]`` table (from ``--config`` and the cluster flags), as ``run`` takes it.
    force_public
        Serve a non-loopback ``host`` without auth (anyone who can reach it may run jobs).
    """
    if not is_loopback(host) and auth is None and not force_public:
        raise HepdaskError(
            f"--host {host} would let anyone who can reach this machine run jobs and read "
            "their results, and the service has no auth: give --token-file or --oidc-issuer "
            "with --oidc-audience, or --force-public if the network in front already "
            "authenticates."
        )
    config = from_table(ClusterConfig, cluster, "cluster")
    store = Store(settings.database_url)
    settings.jobs.mkdir(parents=True, exist_ok=True)
    connection = open_cluster(config) if config.kind != "gateway" else None
    try:
        def cluster_args(job: JobRecord) -> list[str]:
            """A shared cluster's address as it is now (it may have restarted since the job
            was queued); a gateway job's own cluster is in its config."""
            return ["--scheduler", connection.client.scheduler.address] if connection else []

        runner = Runner(store, settings, cluster_args=cluster_args)
        app = make_app(settings, auth=auth, runner=runner, store=store,
                       place=placement(config, cluster, connection))
        runner.start()
        try:
            shown = f"[{host}]" if ":" in host else host
            log.info("hepdask service on http://%s:%d (API docs at /docs), state in %s, "
                     "%d job(s) at once", shown, port, settings.state, settings.max_jobs)
            uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        finally:
            runner.stop()
    finally:
        if connection is not None:
            connection.close()
