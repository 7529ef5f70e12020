"""Keras streaming trainer benchmark: throughput against in-memory ``model.fit``, and memory.

    python benchmarks/bench_keras.py [--events 250000] [--big-events 2500000] [--workers 2]

Every figure is a ratio to a baseline measured in the same run; each measurement runs in its
own process so that its peak RSS is its own.

1. Throughput: 3 epochs of a 1024-512-256 dense net (dropout 0.3, Adam 1e-3, batch 1000) on
   ``--events`` synthetic HiggsML events, streamed from the cluster by hepdask, vs the same
   model, batches and epochs fed by ``model.fit`` from the same features preloaded as NumPy.
2. Memory: one epoch of the default network on ``--events`` and on ``--big-events``: peak RSS
   of the client process, which should not grow with the data.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench_core import child, higgs_data, overrides, parse, peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "higgs-keras.toml"
BIG_NET = ["train.keras.hidden=[1024, 512, 256]", "train.keras.dropout=0.3",
           "train.keras.learning_rate=1e-3", "train.stream.batch_size=1000",
           "train.keras.epochs=3", "train.keras.patience=10"]


def _pipeline(directory: str, workers: int, extra: list[str], tmp: str):
    from hepdask import Pipeline

    run_dir = Path(tmp) / "run"
    return Pipeline.from_config(CONFIG, overrides=[*overrides(Path(directory), workers, run_dir),
                                                   *extra])


def step_stream(directory: str, workers: int, epochs: int, big_net: int) -> dict:
    from hepdask.cluster import connect
    from hepdask.train.keras import import_keras

    import_keras()  # TensorFlow's import (seconds) is start-up, as for the in-memory baseline
    extra = BIG_NET if big_net else []
    extra = [*extra, f"train.keras.epochs={epochs}"]
    with tempfile.TemporaryDirectory() as tmp:
        pipe = _pipeline(directory, workers, extra, tmp)
        with connect(pipe.config.cluster) as client:
            client.wait_for_workers(workers)
            pipe.specs(client=client)
            start = time.perf_counter()
            model = pipe.train(client=client)
            seconds = time.perf_counter() - start
            metrics = pipe.evaluate(client=client)
    n = len(pipe.features().train)
    return {"seconds": seconds, "events_per_s": epochs * n / seconds, "n_train": n,
            "auc": metrics["auc"], "val_loss": model.history["validation"]["loss"][-1]}


def step_memory(directory: str, workers: int) -> dict:
    result = step_stream(directory, workers, 1, 0)
    return {**result, "peak_rss_mb": peak_rss_mb()}


def step_in_memory(directory: str, workers: int) -> dict:
    """The same features, transform, model and batches, preloaded as NumPy in this process."""
    import numpy as np

    from hepdask.cluster import connect
    from hepdask.stream import BatchStream, make_transform
    from hepdask.train.keras import _build_model, import_keras

    keras = import_keras()
    with tempfile.TemporaryDirectory() as tmp:
        pipe = _pipeline(directory, workers, BIG_NET, tmp)
        cfg = pipe.config.train
        with connect(pipe.config.cluster) as client:
            features = pipe.features(client=client)
            transform = make_transform(features.layout, pipe.specs(), cfg.stream)
            arrays = {}
            for split in ("train", "validation"):
                stream = BatchStream(client, features, split, transform, batch_size=100_000,
                                     shuffle=False)
                parts = list(stream.epoch())
                arrays[split] = tuple(np.concatenate([p[i] for p in parts]) for i in range(3))
    X, y, w = arrays["train"]
    model = _build_model(keras, cfg.keras, X.shape[1], 2)
    start = time.perf_counter()
    model.fit(X, y, sample_weight=w, batch_size=cfg.stream.batch_size, epochs=cfg.keras.epochs,
              validation_data=arrays["validation"], shuffle=True, verbose=0)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "events_per_s": cfg.keras.epochs * len(y) / seconds,
            "n_train": len(y)}


STEPS = {f.__name__: f for f in (step_stream, step_memory, step_in_memory)}


def main() -> None:
    args = parse(__doc__, STEPS, {"--events": 250_000, "--big-events": 2_500_000})
    if args is None:
        return

    small, big = higgs_data(args.data, args.events, args.big_events)
    w = str(args.workers)

    print(f"[1] 3 epochs, 1024-512-256 dense net, batch 1000, {args.events} events, {w} workers")
    ref = child("step_in_memory", str(small), w, script=__file__)
    run = child("step_stream", str(small), w, "3", "1", script=__file__)
    print(f"  in-memory NumPy model.fit: {ref['seconds']:.1f} s, {ref['events_per_s']:,.0f} events/s")
    print(f"  hepdask streaming trainer: {run['seconds']:.1f} s (train, incl. validation and "
          f"checkpoints), {run['events_per_s']:,.0f} events/s, test AUC {run['auc']:.4f}")
    print(f"  throughput ratio streaming / in-memory: "
          f"{run['events_per_s'] / ref['events_per_s']:.2f} (target >= 0.85)")

    print(f"\n[2] client peak RSS, 1 epoch of the default network, {w} workers")
    one = child("step_memory", str(small), w, script=__file__)
    ten = child("step_memory", str(big), w, script=__file__)
    print(f"  {one['n_train']:,} training events: {one['peak_rss_mb']:.0f} MB; "
          f"{ten['n_train']:,}: {ten['peak_rss_mb']:.0f} MB; "
          f"ratio {ten['peak_rss_mb'] / one['peak_rss_mb']:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
