"""hepdask on clusters it did not start: a separate ``dask scheduler`` with ``dask worker``
processes, and a real dask-gateway server (local backend) on loopback, with the dashboard
page, the version check and the JupyterHub notebook."""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from servers import free_port
from test_pipeline import HIGGS, REPO, SMALL, hepdask

from hepdask import HepdaskError, Pipeline, __version__, load_config
from hepdask.cluster import _close_gateway, _leave, open_cluster
from hepdask.config import ClusterConfig, GatewayConfig

pytestmark = pytest.mark.slow

dask_gateway = pytest.importorskip("dask_gateway")
pytest.importorskip("dask_gateway_server")

KERAS = HIGGS.with_name("higgs-keras.toml")
KERAS_SMALL = [*SMALL, "train.keras.epochs=4", "train.stream.batch_size=500"]
PASSWORD = "hepdask-test"


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


class Processes:
    """Started processes, stopped (and their logs kept for failures) at the end."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.directory / f"{name}.log", "w")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=self.directory)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_dask(processes: Processes, workers: int, *worker_args: str) -> str:
    """``dask scheduler`` and ``workers`` ``dask worker`` processes on 127.0.0.1; the address."""
    file = processes.directory / "scheduler.json"
    processes.start("scheduler", "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                    "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(file))
    address = wait_until(lambda: file.exists() and json.loads(file.read_text())["address"], 60,
                         "the scheduler")
    for i in range(workers):
        processes.start(f"worker-{i}", "-m", "dask", "worker", address, "--nthreads", "1",
                        "--host", "127.0.0.1", "--memory-limit", "2GiB", "--name", f"w{i}",
                        "--local-directory", str(processes.directory), *worker_args)
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(workers, timeout=60)
    return address


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A scheduler and two single-threaded workers, each its own process."""
    processes = Processes(tmp_path_factory.mktemp("dask"))
    try:
        yield start_dask(processes, 2)
    finally:
        processes.stop()


# -- a separate scheduler --------------------------------------------------------------------


def test_xgboost_trains_through_a_separate_scheduler(tmp_path, scheduler):
    result = hepdask(tmp_path, "run", str(HIGGS), *sets(SMALL), "--scheduler", scheduler)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "higgs" / "metrics.json").read_text())
    assert metrics["engine"] == "xgboost" and 0.85 < metrics["auc"] < 1
    assert f"Connected to {scheduler} (2 workers)" in result.stderr
    # one bar per phase; non-interactive, each is written once, complete
    for phase, unit in (("specs", "tasks"), ("features", "tasks"), ("train", "rounds"),
                        ("evaluate", "tasks")):
        line = next(line for line in result.stderr.splitlines()
                    if line.startswith(f"hepdask: {phase} "))
        done, total = line.split("] ")[1].split()[0].split("/")
        assert done == total and int(total) > 0 and unit in line, line


def test_keras_trains_through_a_separate_scheduler_and_the_dashboard_shows_it(tmp_path,
                                                                                scheduler):
    from distributed import Client

    with Client(scheduler) as client:
        page = client.dashboard_link.replace("/status", "/hepdask")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hepdask", "run", str(KERAS), *sets(KERAS_SMALL), "--scheduler",
         scheduler, "--quiet"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def training() -> dict | None:
            try:
                state = get_json(page + "/progress.json")
            except urllib.error.HTTPError:  # hepdask has not added its page yet
                return None
            mine = state["name"] == "higgs-keras" and state["columns"]["step"]
            return state if mine and proc.poll() is None else None

        during = wait_until(training, 300, "an epoch on the dashboard while the run goes on")
    finally:
        err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, err[-3000:]
    assert "[####" not in err and "Training" not in err  # --quiet: no bars, no info lines
    assert during["status"].startswith("train: epoch")
    assert {"loss", "val_loss", "val_auc"} <= set(during["columns"])
    after = get_json(page + "/progress.json")
    history = json.loads((tmp_path / "runs" / "higgs-keras" / "history.json").read_text())
    assert after["run"] == during["run"] and after["status"] == "evaluate: done"
    assert after["columns"]["step"] == list(range(1, len(history["train"]["loss"]) + 1))
    assert after["columns"]["val_auc"] == pytest.approx(history["validation"]["auc"])
    html = urllib.request.urlopen(page, timeout=5).read().decode()
    assert "AjaxDataSource" in html and "hepdask/progress.json" in html and "higgs-keras" in html
    assert urllib.request.urlopen(page.replace("/hepdask", "/static/js/bokeh.min.js"),
                                  timeout=5).status == 200  # the page's BokehJS


def test_workers_with_other_software_are_refused_clearly(tmp_path):
    preload = tmp_path / "older_hepdask.py"
    preload.write_text("import hepdask\nhepdask.__version__ = '0.0.1'\n")
    processes = Processes(tmp_path)
    try:
        address = start_dask(processes, 1, "--preload", str(preload))
        result = hepdask(tmp_path, "run", str(HIGGS), *sets(SMALL), "--scheduler", address)
    finally:
        processes.stop()
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("hepdask: error: The cluster does not run the same software")
    assert f"hepdask {__version__} here but 0.0.1 on worker tcp://127.0.0.1:" in message
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "higgs" / "specs.json").exists()


# -- dask-gateway -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway_server(tmp_path_factory):
    """A dask-gateway server with the local backend, every port on 127.0.0.1; its clusters'
    schedulers and workers are ``dask`` processes of this Python."""
    directory = tmp_path_factory.mktemp("gateway")
    api, http, tcp = free_port(), free_port(), free_port()
    (directory / "config.py").write_text(textwrap.dedent(f"""
        from dask_gateway_server.options import Float, Integer, Options

        c.DaskGateway.address = "127.0.0.1:{api}"
        c.Proxy.address = "127.0.0.1:{http}"
        c.Proxy.tcp_address = "127.0.0.1:{tcp}"
        c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
        c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
        c.SimpleAuthenticator.password = "{PASSWORD}"
        c.LocalBackend.clusters_directory = "{directory / 'clusters'}"
        c.ClusterConfig.scheduler_cmd = ["{sys.executable}", "-m", "dask", "scheduler"]
        c.ClusterConfig.worker_cmd = ["{sys.executable}", "-m", "dask", "worker"]
        c.ClusterConfig.worker_threads = 1

        def options_handler(options):
            return {{"worker_cores": options.worker_cores,
                     "worker_memory": f"{{options.worker_memory}} G"}}

        c.Backend.cluster_options = Options(
            Integer("worker_cores", 1, min=1, max=2),
            Float("worker_memory", 1.0, min=0.5, max=4.0),
            handler=options_handler,
        )
    """))
    processes = Processes(directory)
    server = processes.start("gateway", "-m", "dask_gateway_server", "-f",
                             str(directory / "config.py"))
    url = f"http://127.0.0.1:{http}"

    def healthy() -> bool:
        assert server.poll() is None, (directory / "gateway.log").read_text()[-3000:]
        try:
            return get_json(url + "/api/health")["status"] == "pass"
        except OSError:
            return False

    try:
        wait_until(healthy, 60, "the gateway server")
        yield {"address": url, "proxy_address": f"gateway://127.0.0.1:{tcp}", "log": directory}
    finally:
        processes.stop()


@pytest.fixture
def gateway_env(gateway_server, monkeypatch):
    monkeypatch.setenv("DASK_GATEWAY_PASSWORD", PASSWORD)
    return gateway_server


def gateway_sets(server: dict, **extra) -> list[str]:
    keys = {"proxy_address": server["proxy_address"], "auth": "basic", **extra}
    return ['cluster.kind="gateway"', f'cluster.gateway.address="{server["address"]}"',
            *(f"cluster.gateway.{k}={json.dumps(v)}" for k, v in keys.items())]


def running_clusters(server: dict) -> list[str]:
    """This user's clusters on the gateway."""
    gateway = dask_gateway.Gateway(server["address"], proxy_address=server["proxy_address"],
                                   auth=dask_gateway.BasicAuth(getpass.getuser(), PASSWORD))
    try:
        return [c.name for c in gateway.list_clusters()]
    finally:
        _close_gateway(gateway)


def no_clusters_left(server: dict) -> bool:
    """The gateway lists a cluster until its shutdown is done: give it a little time."""
    return wait_until(lambda: running_clusters(server) == [], 30, "the clusters to stop")


def test_higgs_trains_on_a_gateway_cluster_and_shuts_it_down(tmp_path, gateway_env):
    adaptive = gateway_sets(gateway_env, worker_memory=1.5, adapt_minimum=1, adapt_maximum=2)
    result = hepdask(tmp_path, "run", str(HIGGS), *sets(SMALL), *sets(adaptive), "--report")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "higgs"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.85 < metrics["auc"] < 1
    assert "Started dask-gateway cluster" in result.stderr
    assert "Shut down dask-gateway cluster" in result.stderr
    assert f"Dashboard: {gateway_env['address']}/clusters/" in result.stderr
    report = (run / "dask-report.html").read_text()
    assert "Dask Performance Report" in report and "Task Stream" in report
    assert no_clusters_left(gateway_env)


def test_keras_streams_through_the_gateway_proxy_only(tmp_path, gateway_env, monkeypatch):
    """The central trainer gets every batch through the gateway's proxy: the client never
    opens a connection to a worker (which, off a hub, it could not reach)."""
    monkeypatch.chdir(tmp_path)
    config = load_config(KERAS, [*KERAS_SMALL, *gateway_sets(gateway_env)])
    with open_cluster(config.cluster) as connection:
        client = connection.client
        assert connection.kind == "gateway" and connection.started
        assert connection.cluster.name in running_clusters(gateway_env)
        metrics = Pipeline(config, client=client, output=tmp_path / "run", progress=False).run()
        peers = set(client.rpc.available) | set(client.rpc.occupied)
        progress = get_json(connection.progress_link + "/progress.json")  # through the proxy
    assert metrics["engine"] == "keras" and metrics["auc"] > 0.75
    assert peers and all(p.startswith("gateway://127.0.0.1:") for p in peers), peers
    assert progress["name"] == "higgs-keras" and len(progress["columns"]["step"]) >= 2
    assert no_clusters_left(gateway_env)


def test_a_running_gateway_cluster_is_joined_by_name_and_left_running(tmp_path, gateway_env):
    gateway = dask_gateway.Gateway(gateway_env["address"], auth=dask_gateway.BasicAuth(
        getpass.getuser(), PASSWORD), proxy_address=gateway_env["proxy_address"])
    cluster = gateway.new_cluster(shutdown_on_close=False)
    try:
        cluster.scale(2)
        result = hepdask(tmp_path, "run", str(HIGGS), *sets(SMALL),
                         *sets(gateway_sets(gateway_env, cluster_name=cluster.name)))
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Started dask-gateway cluster" not in result.stderr
        assert running_clusters(gateway_env) == [cluster.name]  # not hepdask's to shut down
    finally:
        _leave(cluster, shutdown=True)
        _close_gateway(gateway)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_shuts_its_gateway_cluster_down(tmp_path, gateway_env, signum):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    long = [*SMALL, "train.xgboost.num_boost_round=100000", "train.xgboost.early_stopping_rounds=0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hepdask", "run", str(HIGGS), *sets(long),
         *sets(gateway_sets(gateway_env))],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "Training XGBoost" in line:
            break
    assert running_clusters(gateway_env), "".join(seen)
    proc.send_signal(signum)
    try:
        rest = proc.communicate(timeout=120)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # hepdask prints every thread's stack
        time.sleep(2)
        proc.kill()
        pytest.fail("the interrupted run did not stop:\n" + proc.communicate()[1][-8000:])
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert no_clusters_left(gateway_env)
    assert not (tmp_path / "runs" / "higgs" / "model.ubj").exists()


def test_gateway_mistakes_get_clear_errors(gateway_env, monkeypatch):
    def error(**gateway) -> str:
        settings = {"address": gateway_env["address"],
                    "proxy_address": gateway_env["proxy_address"], "auth": "basic", **gateway}
        with pytest.raises(HepdaskError) as info:
            open_cluster(ClusterConfig(kind="gateway", gateway=GatewayConfig(**settings)))
        return str(info.value)

    assert "does not offer the cluster option 'image'" in error(image="hepdask:latest")
    assert "it offers: worker_cores, worker_memory" in error(image="hepdask:latest")
    assert "refused the cluster option worker_cores = 64" in error(worker_cores=64)
    assert "no running cluster named 'nope'" in error(cluster_name="nope")
    monkeypatch.setenv("DASK_GATEWAY_PASSWORD", "wrong")
    assert "refused the credentials" in error()
    monkeypatch.delenv("DASK_GATEWAY_PASSWORD")
    assert "DASK_GATEWAY_PASSWORD" in error()
    assert no_clusters_left(gateway_env)


def test_notebook_runs_against_the_gateway(tmp_path, gateway_env):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(REPO / "examples" / "jupyterhub_gateway.ipynb", as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source += textwrap.dedent(f"""
        CONFIG = {str(HIGGS)!r}
        OVERRIDES = {SMALL!r}
        GATEWAY.update(address={gateway_env['address']!r},
                       proxy_address={gateway_env['proxy_address']!r}, auth="basic")
    """)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "ROC AUC" in text and "dashboard: " + gateway_env["address"] in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4
    assert any("text/html" in o.get("data", {}) for o in outputs)  # the feature preview
    metrics = json.loads((tmp_path / "runs" / "higgs-gateway" / "metrics.json").read_text())
    assert metrics["auc"] > 0.85
    assert no_clusters_left(gateway_env)


# -- configuration ----------------------------------------------------------------------------


def test_gateway_auth_comes_from_the_environment(monkeypatch):
    from hepdask.cluster import _gateway_auth

    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    with pytest.raises(HepdaskError, match="JUPYTERHUB_API_TOKEN"):
        _gateway_auth(GatewayConfig(auth="jupyterhub"))
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "abc")
    assert _gateway_auth(GatewayConfig(auth="jupyterhub")).api_token == "abc"
    monkeypatch.setenv("MY_PASSWORD", "pw")
    auth = _gateway_auth(GatewayConfig(auth="basic", username="ann", password_env="MY_PASSWORD"))
    assert (auth.username, auth.password) == ("ann", "pw")
    assert _gateway_auth(GatewayConfig()) is None  # dask-gateway's own config decides


def test_an_unreachable_gateway_is_named(monkeypatch):
    port = free_port()  # nothing listens there
    config = ClusterConfig(kind="gateway", gateway=GatewayConfig(
        address=f"http://127.0.0.1:{port}", auth="jupyterhub"))
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "unused")
    with pytest.raises(HepdaskError) as info:
        open_cluster(config)
    message = str(info.value)
    assert f"dask-gateway at http://127.0.0.1:{port}" in message and "reachable" in message


def test_cluster_kind_is_checked():
    assert ClusterConfig().kind == "local"
    assert ClusterConfig(address="tcp://h:8786").kind == "address"
    with pytest.raises(HepdaskError, match=r'needs cluster\.address'):
        ClusterConfig(kind="address")
    with pytest.raises(HepdaskError, match="Did you mean 'gateway'"):
        ClusterConfig(kind="gatway")
    with pytest.raises(HepdaskError, match="adapt_maximum"):
        GatewayConfig(adapt_minimum=1)
