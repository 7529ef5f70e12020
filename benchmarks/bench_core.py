"""Core pipeline benchmark: data preparation and XGBoost training, against one-process baselines.

    python benchmarks/bench_core.py [--prep-events 2500000] [--train-events 250000] [--workers 2]

Each measurement runs in its own process (so peak RSS is that step's own),
and every figure is printed as a ratio to a baseline measured in the same run:
machines are shared and noisy, absolute times drift.

1. Data prep on ``--prep-events`` synthetic HiggsML events: hepdask (cluster
   already started; read + specs + features persisted on the workers) vs one
   process reading the same branches with ``uproot ... arrays(library="np")``.
2. End to end on ``--train-events``: ``Pipeline.run`` (specs, features,
   XGBoost, evaluation) vs one process reading NumPy arrays and calling
   ``xgboost.train`` with the same parameters and the same train/validation/test
   events; the test AUCs must agree.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "higgs.toml"


EVENTS_PER_FILE = 250_000


def make_data(directory: Path, events: int) -> None:
    """Synthetic HiggsML files; the pipeline's own [prepare] step then reuses them as they are."""
    from hepdask import higgsml

    higgsml.prepare(directory, download=False, synthetic_events=events, seed=1,
                    events_per_file=EVENTS_PER_FILE)


def ensure_data(make, directory: Path, events: int, what: str = "synthetic") -> None:
    """Make (or reuse) a benchmark's files with ``make(directory, events)``; say where and how
    long it took."""
    start = time.perf_counter()
    make(directory, events)
    print(f"data: {events} {what} events in {directory} ({time.perf_counter() - start:.1f} s)")


def higgs_data(root: Path, *events: int) -> list[Path]:
    """The directories ``root/higgs-N`` of synthetic HiggsML files for these event counts, made
    once and then reused (``overrides`` reads N off the name)."""
    directories = [root / f"higgs-{n}" for n in events]
    for directory, n in zip(directories, events, strict=True):
        ensure_data(make_data, directory, n)
    return directories


def overrides(directory: Path, workers: int, run_dir: Path) -> list[str]:
    events = int(directory.name.rsplit("-", 1)[1])
    return [f"prepare.directory='{directory}'", "prepare.download=false", "prepare.seed=1",
            f"prepare.synthetic_events={events}", f"prepare.events_per_file={EVENTS_PER_FILE}",
            f"samples.0.files=['{directory}/signal_*.root']",
            f"samples.1.files=['{directory}/background_*.root']",
            f"cluster.n_workers={workers}", "cluster.threads_per_worker=1",
            "cluster.dashboard_address='127.0.0.1:0'",
            f"output='{run_dir.parent}'", f"name='{run_dir.name}'",
            "data.step_size=125000"]


def peak_rss_mb() -> float:
    """This process's own high-water mark (ru_maxrss would include the parent's, inherited at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the measured steps, each run in a child process ------------------------------------------

def step_read_numpy(directory: str) -> dict:
    import uproot

    from hepdask import higgsml

    start = time.perf_counter()
    n = 0
    for path in sorted(Path(directory).glob("*.root")):
        arrays = uproot.open(path)["events"].arrays([*higgsml.FEATURES, "Weight"], library="np")
        n += len(arrays["Weight"])
    return {"seconds": time.perf_counter() - start, "events": n}


def step_prep_hepdask(directory: str, workers: int) -> dict:
    from hepdask import Pipeline

    with tempfile.TemporaryDirectory() as tmp:
        pipe = Pipeline.from_config(CONFIG, overrides=overrides(Path(directory), workers,
                                                                Path(tmp) / "prep"))
        result, _ = timed_prep(pipe, workers)
    return result


def timed_prep(pipe, workers: int):
    """Read + specs + features persisted on a started cluster: (result, features)."""
    from distributed import wait

    from hepdask.cluster import connect
    from hepdask.features import SPLITS

    pipe.dataset()
    with connect(pipe.config.cluster) as client:
        client.wait_for_workers(workers)
        start = time.perf_counter()
        features = pipe.features(client=client, keep_reads=True).persist(client=client)
        wait([features[s].matrix for s in SPLITS])
        seconds = time.perf_counter() - start
        events = sum(len(features[s]) for s in SPLITS)
    return {"seconds": seconds, "events": events, "timings": pipe.timings}, features


def step_train_hepdask(directory: str, workers: int, training: str = "per-host") -> dict:
    from hepdask import Pipeline
    from hepdask.cluster import connect

    with tempfile.TemporaryDirectory() as tmp:
        pipe = Pipeline.from_config(CONFIG, overrides=[
            *overrides(Path(directory), workers, Path(tmp) / "train"),
            f"train.xgboost.workers='{training}'"])
        with connect(pipe.config.cluster) as client:
            client.wait_for_workers(workers)
            start = time.perf_counter()
            metrics = pipe.run(client=client)
            seconds = time.perf_counter() - start
    return {"seconds": seconds, "auc": metrics["auc"], "best_iteration": metrics["best_iteration"],
            "timings": metrics["timings_s"]}


def step_train_numpy(directory: str, workers: int) -> dict:
    """The same events, split and parameters, in one process with in-memory NumPy."""
    import numpy as np
    import uproot
    import xgboost
    from sklearn.metrics import roc_auc_score

    from hepdask import higgsml, load_config
    from hepdask.dataset import Partition, split_codes
    from hepdask.weights import class_factors

    config = load_config(CONFIG, overrides(Path(directory), workers, Path(directory) / "unused"))
    xcfg = config.train.xgboost
    start = time.perf_counter()
    parts = {s: ([], [], []) for s in range(3)}
    for sample in config.samples:
        for path in sorted(Path(directory).glob(f"{sample.name}_*.root")):
            tree = uproot.open(path)["events"]
            arrays = tree.arrays([*higgsml.FEATURES, "Weight"], library="np")
            X = np.column_stack([arrays[f].astype(np.float32) for f in higgsml.FEATURES])
            X[X == -999.0] = np.nan
            codes = split_codes(Partition(sample.name, str(path), 0, tree.num_entries), config.split)
            for s in range(3):
                parts[s][0].append(X[codes == s])
                parts[s][1].append(np.full((codes == s).sum(), sample.label, np.float32))
                parts[s][2].append(arrays["Weight"][codes == s])
    X, y, w = ({s: np.concatenate(parts[s][i]) for s in range(3)} for i in range(3))
    params = dict(xcfg.params, nthread=workers)
    factors = class_factors({c: w[0][y[0] == c].sum() for c in (0, 1)},  # as hepdask weighs
                            {c: int((y[0] == c).sum()) for c in (0, 1)}, balance=True, key="")
    w = {s: w[s] * np.where(y[s] == 1, factors[1], factors[0]) for s in w}
    dtrain = xgboost.QuantileDMatrix(X[0], y[0], weight=w[0])
    dvalid = xgboost.QuantileDMatrix(X[1], y[1], weight=w[1], ref=dtrain)
    booster = xgboost.train(params, dtrain, xcfg.num_boost_round,
                            evals=[(dtrain, "train"), (dvalid, "validation")],
                            early_stopping_rounds=xcfg.early_stopping_rounds, verbose_eval=False)
    scores = booster.predict(xgboost.DMatrix(X[2]), iteration_range=(0, booster.best_iteration + 1))
    auc = roc_auc_score(y[2], scores)
    return {"seconds": time.perf_counter() - start, "auc": float(auc),
            "best_iteration": booster.best_iteration}


STEPS = {f.__name__: f for f in (step_read_numpy, step_prep_hepdask, step_train_hepdask,
                                 step_train_numpy)}


def child(step: str, *args: str, script: str = __file__) -> dict:
    """Run one step of ``script`` in a fresh interpreter; returns its result with its peak RSS."""
    out = subprocess.run([sys.executable, script, "--step", step, *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse(doc: str, steps: dict, options: dict[str, int]) -> argparse.Namespace | None:
    """The command line of a benchmark; in a child (``--step``), run that step and return None."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for option, default in options.items():
        parser.add_argument(option, type=int, default=default)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "hepdask-bench")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if not args.step:
        return args
    result = steps[args.step](*(int(a) if a.isdigit() else a for a in rest))
    print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
    return None


def main() -> None:
    args = parse(__doc__, STEPS, {"--prep-events": 2_500_000, "--train-events": 250_000})
    if args is None:
        return

    big, small = higgs_data(args.data, args.prep_events, args.train_events)
    w = str(args.workers)

    print(f"\n[1] data prep, {args.prep_events} events, {args.workers} workers")
    child("step_read_numpy", str(big))  # warm the page cache for both contenders
    base = child("step_read_numpy", str(big))
    prep = child("step_prep_hepdask", str(big), w)
    print(f"  one process, uproot arrays(library='np'): {base['seconds']:.2f} s, "
          f"{base['events'] / base['seconds']:,.0f} events/s, peak RSS {base['peak_rss_mb']:.0f} MB")
    print(f"  hepdask read + specs + features:          {prep['seconds']:.2f} s, "
          f"{prep['events'] / prep['seconds']:,.0f} events/s, client peak RSS "
          f"{prep['peak_rss_mb']:.0f} MB  ({', '.join(f'{k} {v:.2f}' for k, v in prep['timings'].items())})")
    print(f"  ratio hepdask / one process: {prep['seconds'] / base['seconds']:.2f}x (target <= 1.0)")

    print(f"\n[2] end to end XGBoost (200 trees, depth 6), {args.train_events} events")
    ref = child("step_train_numpy", str(small), w)
    run = child("step_train_hepdask", str(small), w)
    print(f"  one process, in-memory xgboost.train: {ref['seconds']:.2f} s, test AUC "
          f"{ref['auc']:.4f}, best iteration {ref['best_iteration']}")
    print(f"  hepdask Pipeline.run:                 {run['seconds']:.2f} s, test AUC "
          f"{run['auc']:.4f}, best iteration {run['best_iteration']}, client peak RSS "
          f"{run['peak_rss_mb']:.0f} MB  ({', '.join(f'{k} {v:.2f}' for k, v in run['timings'].items())})")
    print(f"  ratio hepdask / one process: {run['seconds'] / ref['seconds']:.2f}x (target <= 1.5); "
          f"AUC difference {abs(run['auc'] - ref['auc']):.4f} (target <= 0.005)")
    # train.xgboost.workers = "all": every worker trains, allreducing each tree level's
    # histograms between the worker processes (the default trains on one per host instead).
    every = child("step_train_hepdask", str(small), w, "all")
    print(f"  hepdask, every worker trains:         {every['seconds']:.2f} s, test AUC "
          f"{every['auc']:.4f}; ratio {every['seconds'] / ref['seconds']:.2f}x  "
          f"({', '.join(f'{k} {v:.2f}' for k, v in every['timings'].items())})")


if __name__ == "__main__":
    main()
