"""Getting a Dask client: a local cluster sized to the machine, or an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from distributed import Client, LocalCluster

from .config import ClusterConfig
from .errors import HepdaskError

__all__ = ["connect"]

log = logging.getLogger("hepdask")


@contextlib.contextmanager
def connect(config: ClusterConfig, *, address: str | None = None) -> Iterator[Client]:
    """Yield a client, closing only what this call started.

    ``address`` (the CLI's ``--scheduler``) wins over ``config.address``; with
    neither, a :class:`distributed.LocalCluster` of worker processes is started
    on 127.0.0.1 with one single-threaded worker per core, so that neither the
    scheduler nor the dashboard is exposed beyond this machine.
    """
    address = address or config.address
    if address:
        try:
            client = Client(address, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise HepdaskError(
                f"Could not reach the Dask scheduler at {address} ({err}). Check that it is "
                "running and reachable from here, or remove cluster.address (and --scheduler) "
                "to start a local cluster."
            ) from None
        log.info("Connected to %s; dashboard: %s", address, client.dashboard_link)
        try:
            yield client
        finally:
            client.close()
        return
    n_workers = config.n_workers or max(1, (os.cpu_count() or 1) // config.threads_per_worker)
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=config.threads_per_worker,
        memory_limit=config.memory_limit,
        processes=True,
        host="127.0.0.1",
        dashboard_address=config.dashboard_address,
    )
    client = Client(cluster)
    client.run(_import_stack)  # pay the workers' imports at start-up, not in the first task
    log.info(
        "Local cluster: %d workers x %d thread(s); dashboard: %s",
        n_workers, config.threads_per_worker, client.dashboard_link,
    )
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _import_stack() -> None:
    """Import what every hepdask task needs (about a second per fresh worker process)."""
    import awkward  # noqa: F401
    import uproot  # noqa: F401

    from . import features, specs  # noqa: F401
