"""``hepdask service`` overhead: a job through the service against the same ``hepdask run``,
and the API's latency while jobs run.

    python benchmarks/bench_service.py [--events 250000] [--rounds 200] [--clients 20] [--workers 2]

1. Submit → finished: ``configs/higgs.toml`` on ``--events`` synthetic HiggsML events (made
   once, offline, and reused; its ``[prepare]`` is left out since the files exist) with
   ``--rounds`` boosting rounds, run by ``python -m hepdask run`` directly (which starts its own
   local cluster of ``--workers``), then submitted with the service's :class:`Client` to
   ``python -m hepdask service`` (whose local cluster of the same shape is already up) and
   waited for; the ratio service / direct is printed, and the ratio to the same ``hepdask run``
   given ``--scheduler`` of a local cluster already up (as the service's jobs are): the
   service's own overhead (queue, subprocess, HTTP, bundle check). Every time is from the
   command's (the request's) start to the run directory being complete; each contender runs
   once to warm up (page cache, imports, the workers' imports) before it is timed.
2. API latency: ``--clients`` threads, each with its own client, alternately ask for a job's
   status (``GET /jobs/{id}``) and the list of jobs (``GET /jobs``) as fast as they are answered,
   first with the service idle (``--idle-seconds``), then while 2 jobs run at once
   (``--max-jobs 2``); p50 and p99 per request kind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

from bench_core import higgs_data, parse
from bench_serve import percentile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import servers  # noqa: E402  (the tests' free_port)


def write_config(path: Path, directory: Path, rounds: int, workers: int) -> str:
    """``configs/higgs.toml`` on the files of ``directory``, as TOML text written to ``path``."""
    from hepdask.config import apply_overrides
    from hepdask.mlaas4hep import to_toml

    raw = tomllib.loads((ROOT / "configs" / "higgs.toml").read_text())
    del raw["prepare"]
    raw = apply_overrides(raw, [
        f"samples.0.files=['{directory}/signal_*.root']",
        f"samples.1.files=['{directory}/background_*.root']",
        f"train.xgboost.num_boost_round={rounds}", "data.step_size=125000",
        f"cluster.n_workers={workers}", "cluster.threads_per_worker=1",
        "cluster.dashboard_address='127.0.0.1:0'"])
    text = to_toml(raw, comments=["bench_service.py: configs/higgs.toml on prepared files"])
    path.write_text(text)
    return text


def direct(config: Path, run_dir: Path, *flags: str) -> float:
    """Seconds of ``python -m hepdask run CONFIG --output RUN_DIR *flags``, from its start."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "hepdask", "run", str(config), "--output",
                           str(run_dir), "-q", *flags], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"hepdask run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def start_service(state: Path, config: Path, data: Path, max_jobs: int) -> tuple:
    port = servers.free_port()
    state.mkdir()
    log = state / "service.log"  # the service's and its workers' output
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "hepdask", "service", "--port", str(port), "--state",
             str(state), "--config", str(config), "--data-root", str(data), "--max-jobs",
             str(max_jobs), "-q"], stdout=out, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the service did not start (exit code {process.poll()}):"
                                   f"\n{log.read_text()[-3000:]}") from None
            time.sleep(0.3)


def poll(url: str, job_id: str, clients: int, done: threading.Event) -> dict[str, list[float]]:
    """Latencies (s) by request kind of ``clients`` threads polling until ``done`` is set."""
    from hepdask.service.client import Client

    latencies: dict[str, list[float]] = {"status": [], "list": []}

    def run() -> None:
        client = Client(url)
        while not done.is_set():
            for kind, call in (("status", lambda: client.job(job_id)), ("list", client.jobs)):
                start = time.perf_counter()
                call()
                latencies[kind].append(time.perf_counter() - start)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    done.wait()
    for thread in threads:
        thread.join()
    return latencies


def report(what: str, latencies: dict[str, list[float]], seconds: float) -> None:
    for kind, values in latencies.items():
        print(f"  {what:<22}{kind:<8}{len(values) / seconds:9.0f}"
              f"{percentile(values, 50) * 1e3:9.1f}{percentile(values, 99) * 1e3:9.1f}")


def main() -> None:
    args = parse(__doc__, {}, {"--events": 250_000, "--rounds": 200, "--clients": 20,
                               "--idle-seconds": 5})
    if args is None:
        return
    from distributed import LocalCluster

    from hepdask.bundle import Bundle
    from hepdask.service.client import Client

    (directory,) = higgs_data(args.data, args.events)
    with tempfile.TemporaryDirectory(prefix="hepdask-bench-service-") as tmp:
        tmp = Path(tmp)
        config = tmp / "higgs.toml"
        text = write_config(config, directory, args.rounds, args.workers)

        direct(config, tmp / "warm")  # the page cache and the imports, for both contenders
        seconds_direct = direct(config, tmp / "direct")
        Bundle.load(tmp / "direct")
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0") as cluster:
            up = ["--scheduler", cluster.scheduler_address]
            direct(config, tmp / "warm-up", *up)  # the workers' imports, as the service's
            seconds_up = direct(config, tmp / "up", *up)

        process, url = start_service(tmp / "state", config, args.data, max_jobs=2)
        try:
            service = Client(url)
            service.wait(service.submit(text, name="warm")["job_id"], poll=0.1)
            start = time.perf_counter()
            job = service.wait(service.submit(text, name="higgs")["job_id"], poll=0.1)
            seconds_service = time.perf_counter() - start
            if job["state"] != "succeeded":
                raise RuntimeError(f"the service's job ended {job['state']}: {job['error']}")

            print(f"\n[1] submit -> finished, HiggsML {args.events} events, {args.rounds} rounds, "
                  f"{args.workers} workers, {os.cpu_count()} cores")
            print(f"  python -m hepdask run, starting its cluster:       {seconds_direct:7.2f} s")
            print(f"  python -m hepdask run --scheduler (cluster up):    {seconds_up:7.2f} s")
            print(f"  through the service (its cluster up):              {seconds_service:7.2f} s")
            print(f"  ratio service / direct: {seconds_service / seconds_direct:.2f}x; service / "
                  f"run on a cluster already up (the service's own overhead): "
                  f"{seconds_service / seconds_up:.2f}x")

            print(f"\n[2] API latency, {args.clients} concurrent polling clients")
            print(f"  {'while':<22}{'request':<8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
            done = threading.Event()
            threading.Timer(args.idle_seconds, done.set).start()
            report("idle", poll(url, job["job_id"], args.clients, done), args.idle_seconds)

            running = [service.submit(text, name=f"load{k}")["job_id"] for k in range(2)]
            while any(service.job(j)["state"] == "queued" for j in running):
                time.sleep(0.2)
            done = threading.Event()

            def watch() -> None:
                for job_id in running:
                    service.wait(job_id)
                done.set()

            threading.Thread(target=watch).start()
            start = time.perf_counter()
            latencies = poll(url, running[0], args.clients, done)
            report("2 jobs running", latencies, time.perf_counter() - start)
        finally:
            process.terminate()
            process.wait(60)


if __name__ == "__main__":
    main()
