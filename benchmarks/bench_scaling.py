"""Scaling of one XGBoost run with the cluster: 1 worker, 2 workers, 2 workers and a scheduler of their own.

    python benchmarks/bench_scaling.py [--events 2500000] [--workers 2] [--repeat 1]

The same ``Pipeline.run`` (specs, features persisted on the workers, XGBoost,
evaluation) on ``--events`` synthetic HiggsML events, each run in its own
process on a cluster already started (start-up and the imports of the workers
and the scheduler are not timed), in three setups:

1. a LocalCluster of 1 worker x 1 thread;
2. a LocalCluster of ``--workers`` workers x 1 thread;
3. a scheduler process (``distributed.cli.dask_scheduler``) and ``--workers``
   worker processes (``distributed.cli.dask_worker --nthreads 1``), all on
   127.0.0.1, the client connecting by address.

Printed: wall time of ``Pipeline.run``, its prep (specs + features) and train
parts (``pipe.timings``), the test AUC of each, and ratios measured in the same
run: speed-up of ``--workers`` workers over 1, and separate scheduler over
LocalCluster. With ``--repeat`` the setups take turns and each keeps its
fastest run. The last line is the same in JSON.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench_core import CONFIG, child, higgs_data, overrides, parse


def step_run(directory: str, workers: int, address: str | None = None) -> dict:
    """``Pipeline.run`` on a LocalCluster of ``workers``, or on the scheduler at ``address``."""
    from distributed import Client, LocalCluster

    from hepdask import Pipeline
    from hepdask.cluster import _import_stack

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        pipe = Pipeline.from_config(CONFIG, overrides=overrides(Path(directory), workers,
                                                                Path(tmp) / "scaling"))
        if address is None:
            address = stack.enter_context(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                memory_limit=pipe.config.cluster.memory_limit, dashboard_address="127.0.0.1:0"))
        client = stack.enter_context(Client(address, timeout="20s"))
        client.wait_for_workers(workers, timeout=120)
        client.run(_import_stack)  # the workers' imports, before the clock starts
        # A separate scheduler imports the stack on unpickling its first graph (about 1 s);
        # a LocalCluster's shares this process's. Paid before the clock too, but recorded.
        start = time.perf_counter()
        client.run_on_scheduler(_import_stack)
        warmup = time.perf_counter() - start
        threads = client.nthreads()
        start = time.perf_counter()
        metrics = pipe.run(client=client)
        seconds = time.perf_counter() - start
    timings = metrics["timings_s"]
    return {"seconds": seconds, "prep_s": timings["specs"] + timings["features"],
            "train_s": timings["train"], "auc": metrics["auc"],
            "best_iteration": metrics["best_iteration"], "workers": len(threads),
            "threads": sum(threads.values()), "scheduler_imports_s": warmup, "timings": timings}


STEPS = {f.__name__: f for f in (step_run,)}


@contextlib.contextmanager
def separate_cluster(workers: int, memory_limit: str, directory: Path) -> Iterator[str]:
    """A scheduler and ``workers`` single-threaded worker processes; yields the address."""
    procs: list[subprocess.Popen] = []

    def spawn(name: str, *args: str) -> subprocess.Popen:
        with open(directory / f"{name}.log", "w") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", *args], stdout=log,
                                          stderr=subprocess.STDOUT))
        return procs[-1]

    scheduler_file = directory / "scheduler.json"
    try:
        scheduler = spawn("scheduler", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                          "--port", "0", "--dashboard-address", "127.0.0.1:0",
                          "--scheduler-file", str(scheduler_file))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start: see {directory}/scheduler.log")
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(workers):
            spawn(f"worker-{i}", "distributed.cli.dask_worker", address, "--host", "127.0.0.1",
                  "--nthreads", "1", "--memory-limit", memory_limit, "--no-dashboard",
                  "--local-directory", str(directory / f"worker-{i}"))
        yield address
    finally:
        for proc in reversed(procs):  # workers first, then the scheduler
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    args = parse(__doc__, STEPS, {"--events": 2_500_000, "--repeat": 1})
    if args is None:
        return
    from hepdask import load_config

    (directory,) = higgs_data(args.data, args.events)
    w, d = args.workers, str(directory)
    # the same memory limit per worker as the local clusters get from the config
    memory = load_config(CONFIG, overrides(directory, w, directory / "unused")).cluster.memory_limit
    names = {"local_1": "LocalCluster, 1 worker x 1 thread",
             f"local_{w}": f"LocalCluster, {w} workers x 1 thread",
             f"separate_{w}": f"separate scheduler, {w} workers x 1 thread"}
    child("step_read_numpy", d)  # warm the page cache (bench_core's one-process read)
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        runs = {"local_1": child("step_run", d, "1", script=__file__),
                f"local_{w}": child("step_run", d, str(w), script=__file__)}
        with tempfile.TemporaryDirectory() as tmp, \
                separate_cluster(w, memory, Path(tmp)) as address:
            runs[f"separate_{w}"] = child("step_run", d, str(w), address, script=__file__)
        for name, run in runs.items():
            if name not in best or run["seconds"] < best[name]["seconds"]:
                best[name] = run

    print(f"\nPipeline.run (specs, features, XGBoost, evaluation), {args.events} events, "
          f"best of {args.repeat}")
    print(f"  {'setup':<42} {'run s':>7} {'prep s':>7} {'train s':>8} {'test AUC':>9} "
          f"{'best it':>7} {'client RSS MB':>13}")
    for name, r in best.items():
        print(f"  {names[name]:<42} {r['seconds']:7.2f} {r['prep_s']:7.2f} {r['train_s']:8.2f} "
              f"{r['auc']:9.4f} {r['best_iteration']:7d} {r['peak_rss_mb']:13.0f}")
    one, many, separate = best["local_1"], best[f"local_{w}"], best[f"separate_{w}"]
    keys = {"run": "seconds", "prep": "prep_s", "train": "train_s"}
    speedup = {k: one[v] / many[v] for k, v in keys.items()}
    overhead = {k: separate[v] / many[v] for k, v in keys.items()}
    print(f"  speed-up {w} workers over 1 (time 1 / time {w}): "
          + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()))
    print(f"  separate scheduler / LocalCluster, {w} workers (time ratio): "
          + ", ".join(f"{k} {v:.2f}x" for k, v in overhead.items()))
    print(f"  not timed: the scheduler's imports, paid on its first graph: separate "
          f"{separate['scheduler_imports_s']:.2f} s, LocalCluster {many['scheduler_imports_s']:.2f} s")
    print(json.dumps({
        "benchmark": "scaling", "events": args.events, "workers": w, "repeat": args.repeat,
        "setups": {name: {k: round(r[k], 4) if isinstance(r[k], float) else r[k]
                          for k in ("seconds", "prep_s", "train_s", "auc", "best_iteration",
                                    "workers", "threads", "scheduler_imports_s",
                                    "peak_rss_mb")}
                   for name, r in best.items()},
        "speedup_vs_1_worker": {k: round(v, 3) for k, v in speedup.items()},
        "separate_vs_local": {k: round(v, 3) for k, v in overhead.items()},
    }))


if __name__ == "__main__":
    main()
