"""Getting a Dask client: a local cluster, a running scheduler, or a dask-gateway cluster.

Whatever the kind, the workers must run the software this process runs (a task pickled
here is unpickled there), so :func:`open_cluster` checks the versions of hepdask and its
stack on the scheduler and every worker before any work is sent. It also registers the
hepdask page on the cluster's dashboard (see :mod:`hepdask.progress`).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from .config import ClusterConfig, GatewayConfig
from .errors import HepdaskError, first_line
from .progress import dashboard_page, install_dashboard

__all__ = ["Connection", "check_versions", "connect", "open_cluster"]

log = logging.getLogger("hepdask")

#: Packages whose versions must be the same here and on the workers: they define what a
#: task does. The scheduler runs the dashboard plugin and XGBoost's tracker.
WORKER_PACKAGES = ("hepdask", "dask", "distributed", "dask_awkward", "awkward", "uproot",
                   "numpy", "xgboost")
SCHEDULER_PACKAGES = ("hepdask", "dask", "distributed", "xgboost")


@dataclass
class Connection:
    """A client and what :func:`open_cluster` started for it; :meth:`close` stops only that.

    Attributes
    ----------
    client
        The :class:`distributed.Client` to hand to :class:`~hepdask.Pipeline`.
    kind
        ``"local"``, ``"address"`` or ``"gateway"``.
    cluster
        The local or gateway cluster object (``None`` for a scheduler address).
    """

    client: Client
    kind: str
    cluster: object | None = None
    started: bool = False  # this call started `cluster`, so closing shuts it down
    _closers: list = field(default_factory=list)

    @property
    def dashboard_link(self) -> str:
        return self.client.dashboard_link

    @property
    def progress_link(self) -> str:
        """The hepdask page of the dashboard: training curves while a run goes on."""
        return dashboard_page(self.client)

    def close(self) -> None:
        """Close the client; shut down the cluster if this connection started it."""
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()
        self._closers.clear()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_cluster(config: ClusterConfig, *, check: bool | None = None) -> Connection:
    """Connect as ``config.kind`` says, check the workers' software and install the hepdask
    dashboard page. In a notebook, keep the returned connection across cells and call its
    :meth:`~Connection.close` at the end (or use :func:`connect` in a ``with`` block)."""
    opener = {"local": _local, "address": _address, "gateway": _gateway}[config.kind]
    connection = opener(config)
    try:
        if config.check_versions if check is None else check:
            check_versions(connection.client)
        install_dashboard(connection.client)
        connection.client.register_plugin(QuietExplainedErrors())
    except BaseException:
        connection.close()
        raise
    log.info("Dashboard: %s (training progress: %s)", connection.dashboard_link,
             connection.progress_link)
    return connection


@contextlib.contextmanager
def connect(config: ClusterConfig) -> Iterator[Client]:
    """Yield a client, closing (and shutting down) only what this call started, also when the
    block is left by an error or Ctrl-C."""
    with open_cluster(config) as connection:
        yield connection.client


def _local(config: ClusterConfig) -> Connection:
    """Worker processes on 127.0.0.1, so that neither the scheduler nor the dashboard is
    exposed beyond this machine; one single-threaded worker per core by default."""
    n_workers = config.n_workers or max(1, (os.cpu_count() or 1) // config.threads_per_worker)
    cluster = LocalCluster(
        n_workers=n_workers, threads_per_worker=config.threads_per_worker,
        memory_limit=config.memory_limit, processes=True, host="127.0.0.1",
        dashboard_address=config.dashboard_address,
    )
    client = Client(cluster)
    connection = Connection(client, "local", cluster, started=True,
                            _closers=[cluster.close, client.close])
    client.run(_import_stack)  # pay the workers' imports at start-up, not in the first task
    log.info("Local cluster: %d workers x %d thread(s)", n_workers, config.threads_per_worker)
    return connection


def _address(config: ClusterConfig) -> Connection:
    try:
        client = Client(config.address, timeout="20s")
    except (OSError, TimeoutError) as err:
        raise HepdaskError(
            f"Could not reach the Dask scheduler at {config.address} ({err}). Check that it is "
            "running and reachable from here, or remove cluster.address (and --scheduler) to "
            "start a local cluster."
        ) from None
    n = len(client.scheduler_info()["workers"])
    log.info("Connected to %s (%d workers)", config.address, n)
    if not n:
        log.warning("The scheduler at %s has no workers yet: tasks wait until one joins.",
                    config.address)
    return Connection(client, "address", _closers=[client.close])


def _gateway(config: ClusterConfig) -> Connection:
    """A new dask-gateway cluster (scaled or adaptive), or a running one joined by name."""
    import dask_gateway  # installed: ClusterConfig checks it

    settings = config.gateway
    gateway = dask_gateway.Gateway(
        address=settings.address, proxy_address=settings.proxy_address,
        public_address=settings.public_address, auth=_gateway_auth(settings),
    )
    connection = Connection(None, "gateway",  # type: ignore[arg-type]
                            _closers=[lambda: _close_gateway(gateway)])
    where = settings.address or "the gateway of the Dask config (gateway.address)"
    try:
        if settings.cluster_name:
            cluster = _join_gateway_cluster(gateway, settings.cluster_name)
            connection._closers.append(lambda: _leave(cluster, shutdown=False))
        else:
            cluster = gateway.new_cluster(_gateway_options(gateway, settings))
            connection.started = True
            # registered before the client's close, so it runs after it
            connection._closers.append(lambda: _leave(cluster, settings.shutdown))
            if settings.adapt_minimum is not None:
                cluster.adapt(minimum=settings.adapt_minimum, maximum=settings.adapt_maximum)
            else:
                cluster.scale(settings.workers)
            log.info("Started dask-gateway cluster %s at %s", cluster.name, where)
        connection.cluster = cluster
        connection.client = cluster.get_client()
        connection._closers.append(connection.client.close)
        wanted = 1 if settings.cluster_name else max(1, settings.adapt_minimum or settings.workers)
        try:
            connection.client.wait_for_workers(wanted, timeout=settings.timeout)
        except TimeoutError:
            raise HepdaskError(
                f"The dask-gateway cluster {cluster.name} at {where} has "
                f"{len(connection.client.scheduler_info()['workers'])} of {wanted} workers "
                f"after cluster.gateway.timeout = {settings.timeout:g} s. The gateway may be out "
                "of resources or the worker image may fail to start: check the gateway's "
                "limits and its cluster logs, or raise the timeout."
            ) from None
    except HepdaskError:
        connection.close()
        raise
    except BaseException as err:
        connection.close()
        if isinstance(err, Exception):
            raise HepdaskError(_gateway_error(err, where)) from None
        raise
    return connection


def _close_gateway(gateway) -> None:
    """Close once. dask-gateway's ``Gateway.__del__`` closes again, which fails (an ignored
    exception printed at exit) once the event loop has stopped; without its loop runner it
    does not try."""
    gateway.close()
    gateway.__dict__.pop("_loop_runner", None)


def _leave(cluster, shutdown: bool) -> None:
    """Shut down or just close a gateway cluster (which closes its own ``Gateway``)."""
    if shutdown:
        cluster.shutdown()
        log.info("Shut down dask-gateway cluster %s", cluster.name)
    else:
        cluster.close(shutdown=False)
        log.info("dask-gateway cluster %s keeps running; join it again with "
                 "cluster.gateway.cluster_name = %r", cluster.name, cluster.name)
    cluster.gateway.__dict__.pop("_loop_runner", None)  # see _close_gateway


def _gateway_auth(settings: GatewayConfig):
    """The authenticator ``settings.auth`` names; ``None`` lets dask-gateway use its config."""
    from dask_gateway import auth

    if settings.auth == "basic":
        password = os.environ.get(settings.password_env)
        if password is None:
            raise HepdaskError(
                f"cluster.gateway.auth = \"basic\" reads the password from the environment "
                f"variable {settings.password_env} (cluster.gateway.password_env), which is not "
                "set: export it, or use the auth your gateway expects (jupyterhub, kerberos)."
            )
        return auth.BasicAuth(settings.username or getpass.getuser(), password)
    if settings.auth == "jupyterhub":
        token = os.environ.get("JUPYTERHUB_API_TOKEN")
        if not token:
            raise HepdaskError(
                'cluster.gateway.auth = "jupyterhub" uses the JUPYTERHUB_API_TOKEN that '
                "JupyterHub sets in every user server; it is not set here. Run from a "
                "JupyterHub session (or export a token of yours made on the hub's token page)."
            )
        return auth.JupyterHubAuth(api_token=token)
    if settings.auth == "kerberos":
        try:
            return auth.KerberosAuth()
        except ImportError:
            raise HepdaskError(
                'cluster.gateway.auth = "kerberos" needs pykerberos: pip install '
                "'dask-gateway[kerberos]', and a ticket (kinit)."
            ) from None
    return None


def _gateway_options(gateway, settings: GatewayConfig):
    """The gateway's cluster options with the ones the config sets; unknown ones refused."""
    wanted = {"worker_cores": settings.worker_cores, "worker_memory": settings.worker_memory,
              "image": settings.image, **settings.options}
    wanted = {k: v for k, v in wanted.items() if v is not None}
    options = gateway.cluster_options()
    offered = list(options)
    for key, value in wanted.items():
        if key not in offered:
            raise HepdaskError(
                f"The gateway does not offer the cluster option {key!r} (set by "
                f"cluster.gateway.{key if key in ('worker_cores', 'worker_memory', 'image') else 'options'}); "
                f"it offers: {', '.join(offered) or 'none'}. Remove it from the config or use "
                "one of those."
            )
        try:
            options[key] = value
        except (TypeError, ValueError) as err:
            raise HepdaskError(f"The gateway refused the cluster option {key} = {value!r}: "
                               f"{err}") from None
    return options


def _join_gateway_cluster(gateway, name: str):
    try:
        return gateway.connect(name)
    except (ValueError, LookupError):
        running = [c.name for c in gateway.list_clusters()]
        raise HepdaskError(
            f"The gateway has no running cluster named {name!r} (cluster.gateway.cluster_name); "
            f"yours are: {', '.join(running) or 'none'}. Remove the key to start a new one."
        ) from None


def _gateway_error(err: Exception, where: str) -> str:
    text = first_line(err)
    if "401" in text or "403" in text or "Unauthorized" in text or "Forbidden" in text:
        advice = ("The gateway refused the credentials: check cluster.gateway.auth, the user "
                  "name and the password or token.")
    else:
        advice = ("Check cluster.gateway.address (the gateway's URL) and proxy_address, and "
                  "that the gateway is running and reachable from here.")
    return f"Could not get a cluster from dask-gateway at {where}: {text}. {advice}"


def check_versions(client: Client, *, packages: tuple[str, ...] = WORKER_PACKAGES) -> None:
    """Fail, naming package, versions and machines, if the scheduler or a worker runs other
    versions of ``packages`` than this process (``None`` = not installed)."""
    versions = client.get_versions(packages=sorted({*packages, *SCHEDULER_PACKAGES}))
    mine = versions["client"]["packages"]
    nodes = [("the scheduler", versions["scheduler"]["packages"], SCHEDULER_PACKAGES)]
    nodes += [(f"worker {addr}", info["packages"], packages)
              for addr, info in sorted(versions["workers"].items())]
    problems: dict[tuple[str, str | None], list[str]] = {}
    for where, theirs, names in nodes:
        for name in names:
            if theirs.get(name) != mine.get(name):
                problems.setdefault((name, theirs.get(name)), []).append(where)
    if not problems:
        return
    lines = []
    for (name, theirs), where in problems.items():
        shown = ", ".join(where[:2]) + (f" and {len(where) - 2} more" if len(where) > 2 else "")
        lines.append(f"{name} {mine.get(name) or 'not installed'} here but "
                     f"{theirs or 'not installed'} on {shown}")
    raise HepdaskError(
        "The cluster does not run the same software as this process: " + "; ".join(lines)
        + ". Tasks would run other code there (or fail to unpickle). Install the same versions "
        "on the cluster (build its image from this environment, or pick the matching image "
        "with cluster.gateway.image), or run from an environment that matches it. "
        "cluster.check_versions = false skips this check."
    )


class QuietExplainedErrors(WorkerPlugin):
    """Workers log every failed task with its traceback. A :class:`HepdaskError` raised in a
    task (an unreadable file, say) reaches the client, which explains it in one paragraph; the
    worker's copy, with a traceback, would only bury that message in the terminal."""

    name = "hepdask-quiet-explained-errors"
    idempotent = True

    def setup(self, worker) -> None:
        logging.getLogger("distributed.worker").addFilter(_unexplained)


def _unexplained(record: logging.LogRecord) -> bool:
    explained = (str(record.msg).startswith("Compute Failed") and len(record.args or ()) > 3
                 and str(record.args[3]).startswith("HepdaskError("))
    return not explained


def _import_stack() -> None:
    """Import what every hepdask task needs (about a second per fresh worker process)."""
    import awkward  # noqa: F401
    import uproot  # noqa: F401

    from . import features, specs  # noqa: F401
