"""``hepdask predict`` throughput against one process scoring preloaded NumPy.

    python benchmarks/bench_predict.py [--events 2500000] [--workers 2] [--train-events 250000]

A model is trained once (XGBoost, the shipped Higgs config: 200 rounds, depth 6) on
``--train-events`` synthetic HiggsML events and reused. Then, on ``--events`` other
events in files of 250k, each in its own process:

1. hepdask: :func:`hepdask.predict.predict` on a LocalCluster of ``--workers``
   single-threaded workers, already started: read the ROOT files, compute the features,
   score, and write one friend tree per file (the whole job, files to files).
2. baseline: one process with the same feature matrix already in memory (read and
   transformed beforehand, not timed) calling ``booster.predict`` on it, with XGBoost's
   own threads (all cores) and with one thread.

The baseline's scores must equal the friend trees' bit for bit.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench_core import CONFIG, child, higgs_data, overrides, parse


def trained(directory: Path, workers: int) -> Path:
    """The run directory of a model trained on ``directory``'s events (made once)."""
    run_dir = directory.parent / f"model-{directory.name}"
    if not (run_dir / "bundle.json").exists():
        from hepdask import Pipeline
        from hepdask.cluster import connect

        pipe = Pipeline.from_config(CONFIG, overrides=overrides(directory, workers, run_dir),
                                    progress=False)
        with connect(pipe.config.cluster) as client:
            pipe.run(client=client)
    return run_dir


def files_of(directory: str) -> list[str]:
    return sorted(str(p) for p in Path(directory).glob("*.root"))


def step_predict(run_dir: str, directory: str, output: str, workers: int) -> dict:
    from distributed import Client, LocalCluster

    from hepdask.bundle import Bundle
    from hepdask.cluster import _import_stack
    from hepdask.predict import predict

    bundle = Bundle.load(run_dir)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        client.run(_import_stack)
        start = time.perf_counter()
        done = predict(bundle, files_of(directory), output, client=client)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "events": sum(d.entries for d in done)}


def step_numpy(run_dir: str, directory: str, output: str, threads: int) -> dict:
    import numpy as np
    import uproot
    import xgboost

    from hepdask.bundle import Bundle
    from hepdask.features import partition_matrix

    bundle = Bundle.load(run_dir)
    matrices, friends = [], []
    for path in files_of(directory):  # preloaded: read and transformed, not timed
        with uproot.open(path) as f:
            events = f[bundle.tree].arrays(bundle.inputs)
        values, _ = bundle.preprocess.feature_values(events)
        matrices.append(partition_matrix(values, bundle.layout))
        with uproot.open(Path(output) / Path(path).name) as f:
            friends.append(f[bundle.name]["score"].array(library="np"))
    X = np.concatenate(matrices)
    booster = bundle.model.booster
    threads = threads or os.cpu_count()  # the saved model keeps its training worker's 1 thread
    booster.set_param({"nthread": threads})
    iterations = bundle.model._iteration_range()
    dmatrix_seconds = time.perf_counter()
    data = xgboost.DMatrix(X, missing=np.nan, nthread=threads)
    dmatrix_seconds = time.perf_counter() - dmatrix_seconds
    start = time.perf_counter()
    scores = booster.predict(data, iteration_range=iterations, validate_features=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds + dmatrix_seconds, "predict_seconds": seconds, "events": len(X),
            "same_scores": bool(np.array_equal(scores, np.concatenate(friends)))}


STEPS = {"step_predict": step_predict, "step_numpy": step_numpy}


def main() -> None:
    args = parse(__doc__, STEPS, {"--events": 2_500_000, "--train-events": 250_000})
    if args is None:
        return
    small, big = higgs_data(args.data, args.train_events, args.events)
    start = time.perf_counter()
    run_dir = trained(small, args.workers)
    print(f"model: {run_dir} ({time.perf_counter() - start:.1f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        w = str(args.workers)
        ours = child("step_predict", str(run_dir), str(big), tmp, w, script=__file__)
        all_cores = child("step_numpy", str(run_dir), str(big), tmp, "0", script=__file__)
        one = child("step_numpy", str(run_dir), str(big), tmp, "1", script=__file__)
    rate = {name: r["events"] / r["seconds"] for name, r in
            (("hepdask", ours), ("all", all_cores), ("one", one))}
    print(f"\npredict on {ours['events']} events ({args.workers} workers x 1 thread), "
          "files to friend trees:")
    print(f"  hepdask predict:                  {ours['seconds']:7.2f} s  "
          f"{rate['hepdask']:12,.0f} events/s  peak RSS {ours['peak_rss_mb']:.0f} MB (client)")
    for name, label, r in (("all", "all cores", all_cores), ("one", "1 thread ", one)):
        print(f"  booster.predict, NumPy, {label}: {r['seconds']:7.2f} s  {rate[name]:12,.0f} "
              f"events/s  (DMatrix + predict; predict alone {r['predict_seconds']:.2f} s)")
    print(f"  hepdask / in-memory NumPy: {rate['hepdask'] / rate['all']:.2f}x the throughput "
          f"(all cores), {rate['hepdask'] / rate['one']:.2f}x (1 thread)")
    print(f"  scores identical to the friend trees: {all_cores['same_scores'] and one['same_scores']}")


if __name__ == "__main__":
    main()
