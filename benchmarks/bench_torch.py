"""Torch streaming trainer benchmark: throughput against the same network trained in memory,
and against the Keras engine.

    python benchmarks/bench_torch.py [--events 250000] [--workers 2]

Each measurement runs in its own process, on ``--events`` synthetic HiggsML events: 3 epochs
of a 1024-512-256 dense net (ReLU, dropout 0.3, Adam 1e-3, batches of 1000, weighted binary
cross-entropy), each epoch followed by a pass over the validation split.

1. hepdask's torch engine, batches streamed from the cluster (the ``train`` phase of
   ``Pipeline.train``: training, validation, checkpoints), vs the same network, optimizer,
   batch size, transform and epochs in one process over the same features preloaded as
   tensors (reshuffled each epoch, validation loss each epoch). Target: >= 0.9.
2. hepdask's torch engine vs hepdask's keras engine, both streaming the same batches.

Throughput is training events x epochs / seconds of the train phase; the interpreters and the
libraries are started before the clock starts.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench_core import child, higgs_data, overrides, parse

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
NET = {"hidden": "[1024, 512, 256]", "dropout": "0.3", "learning_rate": "1e-3",
       "epochs": str(EPOCHS), "patience": "10"}


def _pipeline(directory: str, workers: int, engine: str, tmp: str):
    from hepdask import Pipeline

    extra = [f"train.{engine}.{key}={value}" for key, value in NET.items()]
    return Pipeline.from_config(
        ROOT / "configs" / f"higgs-{engine}.toml", progress=False,
        overrides=[*overrides(Path(directory), workers, Path(tmp) / "run"), *extra,
                   "train.stream.batch_size=1000", "train.device='cpu'"])


def step_stream(directory: str, workers: int, engine: str) -> dict:
    """The engine's ``train`` phase on batches streamed from a started cluster."""
    from hepdask.cluster import connect

    if engine == "torch":
        from hepdask.train.torch import import_torch as start
    else:
        from hepdask.train.keras import import_keras as start
    start()
    with tempfile.TemporaryDirectory() as tmp:
        pipe = _pipeline(directory, workers, engine, tmp)
        with connect(pipe.config.cluster) as client:
            client.wait_for_workers(workers)
            pipe.specs(client=client)
            model = pipe.train(client=client)
    seconds = pipe.timings["train"]
    n = len(pipe.features().train)
    return {"seconds": seconds, "events_per_s": EPOCHS * n / seconds, "n_train": n,
            "val_auc": model.history["validation"]["auc"][-1]}


def step_in_memory(directory: str, workers: int) -> dict:
    """The torch engine's network, optimizer, loss, transform and batches, on tensors."""
    import numpy as np

    from hepdask.cluster import connect
    from hepdask.stream import BatchStream, make_transform
    from hepdask.train.torch import _build, import_torch, trainer_threads

    torch = import_torch()
    with tempfile.TemporaryDirectory() as tmp:
        pipe = _pipeline(directory, workers, "torch", tmp)
        cfg = pipe.config.train
        with connect(pipe.config.cluster) as client:
            features = pipe.features(client=client)
            threads = trainer_threads(client)  # the engine's, beside the same cluster
            transform = make_transform(features.layout, pipe.specs(), cfg.stream)
            arrays = {}
            for split in ("train", "validation"):
                stream = BatchStream(client, features, split, transform, batch_size=100_000,
                                     shuffle=False)
                parts = list(stream.epoch())
                arrays[split] = [torch.from_numpy(np.concatenate([p[i] for p in parts]))
                                 for i in range(3)]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    (X, y, w), (Xv, yv, wv) = arrays["train"], arrays["validation"]
    network, *_ = _build(torch, cfg.torch, X.shape[1], 2)
    optimizer = torch.optim.Adam(network.parameters(), lr=cfg.torch.learning_rate)
    loss = torch.nn.functional.binary_cross_entropy_with_logits
    batch = cfg.stream.batch_size
    start = time.perf_counter()
    for _ in range(EPOCHS):
        network.train()
        order = torch.randperm(len(y))
        for lo in range(0, len(y), batch):
            rows = order[lo: lo + batch]
            optimizer.zero_grad(set_to_none=True)
            value = (loss(network(X[rows])[:, 0], y[rows], reduction="none") * w[rows]).sum() \
                / w[rows].sum()
            value.backward()
            optimizer.step()
        network.eval()
        with torch.inference_mode():
            val = [(loss(network(Xv[lo: lo + batch])[:, 0], yv[lo: lo + batch],
                         reduction="none") * wv[lo: lo + batch]).sum()
                   for lo in range(0, len(yv), batch)]
            float(sum(val) / wv.sum())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "events_per_s": EPOCHS * len(y) / seconds, "n_train": len(y),
            "threads": threads}


STEPS = {f.__name__: f for f in (step_stream, step_in_memory)}


def main() -> None:
    args = parse(__doc__, STEPS, {"--events": 250_000})
    if args is None:
        return
    (data,) = higgs_data(args.data, args.events)
    w = str(args.workers)

    print(f"3 epochs, 1024-512-256 dense net, batch 1000, {args.events} events, {w} workers")
    memory = child("step_in_memory", str(data), w, script=__file__)
    stream = child("step_stream", str(data), w, "torch", script=__file__)
    keras = child("step_stream", str(data), w, "keras", script=__file__)
    print(f"  torch, in memory (preloaded tensors, {memory['threads']} threads as the engine): "
          f"{memory['seconds']:.1f} s, {memory['events_per_s']:,.0f} events/s")
    print(f"  torch engine, streamed:  {stream['seconds']:.1f} s (train phase, incl. validation "
          f"and checkpoints), {stream['events_per_s']:,.0f} events/s, val AUC "
          f"{stream['val_auc']:.4f}")
    print(f"  keras engine, streamed:  {keras['seconds']:.1f} s, "
          f"{keras['events_per_s']:,.0f} events/s, val AUC {keras['val_auc']:.4f}")
    print(f"[1] torch streaming / torch in memory: "
          f"{stream['events_per_s'] / memory['events_per_s']:.2f} (target >= 0.9)")
    print(f"[2] torch streaming / keras streaming: "
          f"{stream['events_per_s'] / keras['events_per_s']:.2f}")


if __name__ == "__main__":
    main()
