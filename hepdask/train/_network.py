"""What the network engines (keras, torch) share: their batch streams and the per-epoch
bookkeeping.

Both train in this process on :class:`~hepdask.stream.BatchStream` batches and keep, in
``checkpoints/`` of the run being built, the last epoch's model, the best one and
``state.json`` (last finished epoch, history, early-stopping state), so that ``--resume``,
early stopping and ``history.json`` behave the same whichever library trains. Each engine
only says how its model is written (``save(path)``) and with which file suffix.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..config import StreamConfig
from ..errors import HepdaskError
from ..features import Features
from ..outputs import atomic_path, write_json
from ..specs import Specs
from ..stream import BatchStream, Transform, make_transform

__all__ = ["CHECKPOINTS", "EpochState", "end_epoch", "open_checkpoints", "open_streams",
           "split_history"]

log = logging.getLogger("hepdask")

CHECKPOINTS = "checkpoints"


def open_streams(client, features: Features, specs: Specs, stream: StreamConfig, engine: str
                 ) -> tuple[Transform, list[str], BatchStream, BatchStream]:
    """The transform of the features, its column names, and the training (shuffled) and
    validation batch streams from ``client``'s workers."""
    if client is None:
        raise HepdaskError(f"The {engine} engine needs a distributed Client to compute the "
                           "batches.")
    transform = make_transform(features.layout, specs, stream)
    train = BatchStream(client, features, "train", transform, batch_size=stream.batch_size,
                        prefetch=stream.prefetch, seed=stream.seed, shuffle=stream.shuffle)
    valid = BatchStream(client, features, "validation", transform, batch_size=stream.batch_size,
                        prefetch=stream.prefetch, shuffle=False)
    if not len(train):
        raise HepdaskError("The training split is empty: check split.train and the samples.")
    return transform, transform.names(features.layout), train, valid


@dataclass
class EpochState:
    """What a resumed run needs: the last finished epoch, history and early-stopping state."""

    epoch: int = -1
    last: str = ""  # the checkpoint of that epoch
    history: dict = field(default_factory=dict)  # flat names: loss, val_loss, auc, val_auc
    best: float = math.inf
    best_epoch: int | None = None
    wait: int = 0
    stopped: bool = False

    @classmethod
    def load(cls, directory: Path) -> EpochState | None:
        path = directory / "state.json"
        if not path.exists():
            return None
        state = cls(**json.loads(path.read_text()))
        return state if (directory / state.last).exists() else None


def open_checkpoints(run_dir: str | Path, *, resume: bool, epochs: int,
                     ) -> tuple[Path, EpochState | None]:
    """The checkpoint directory of the run built in ``run_dir`` and, with ``resume``, the state
    to continue from (None: train from the first epoch, the old checkpoints removed)."""
    checkpoints = Path(run_dir) / CHECKPOINTS
    state = EpochState.load(checkpoints) if resume else None
    if resume and state is None:
        log.info("No checkpoint in %s: starting from the first epoch", checkpoints)
    if state is not None:
        log.info("Resuming after epoch %d of %d from %s", state.epoch + 1, epochs, checkpoints)
        return checkpoints, state
    if not resume and (checkpoints / "state.json").exists():
        log.info("Starting from the first epoch: removed the checkpoints in %s (--resume "
                 "continues from them)", checkpoints)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return checkpoints, None


def end_epoch(directory: Path, state: EpochState, epoch: int, logs: Mapping[str, float], *,
              patience: int | None, suffix: str, save: Callable[[Path], None],
              on_epoch: Callable | None = None, epochs: int = 0) -> bool:
    """Record epoch ``epoch`` (0-based): history, early stopping on ``val_loss`` (``loss``
    without validation), its checkpoint (``epoch-NNNN<suffix>``, and ``best<suffix>`` when it
    improved) and ``state.json``, written last, so that the epoch counts as done only once its
    files are complete. Returns whether it improved; ``state.stopped`` says to stop."""
    logs = dict(logs)
    for key, value in logs.items():
        state.history.setdefault(key, []).append(float(value))
    monitored = logs.get("val_loss", logs.get("loss"))
    improved = monitored is not None and monitored < state.best
    if improved:
        state.best, state.best_epoch, state.wait = float(monitored), epoch, 0
    else:
        state.wait += 1
    if patience is not None and state.wait >= patience:
        state.stopped = True
    directory.mkdir(parents=True, exist_ok=True)
    previous, state.epoch, state.last = state.last, epoch, f"epoch-{epoch + 1:04d}{suffix}"
    with atomic_path(directory / state.last) as tmp:
        save(tmp)
    if improved:
        with atomic_path(directory / f"best{suffix}") as tmp:
            save(tmp)
    write_json(directory / "state.json", state.__dict__)
    if previous and previous != state.last:
        (directory / previous).unlink(missing_ok=True)
    if on_epoch is not None:
        on_epoch(epoch + 1, epochs, logs)
    log.info("Epoch %d: %s%s", epoch + 1, ", ".join(f"{k} {v:.4f}" for k, v in logs.items()),
             " (best)" if improved else "")
    return improved


def split_history(flat: Mapping[str, list]) -> dict:
    """Flat names (loss, val_auc) as {"train": {...}, "validation": {...}}."""
    out: dict[str, dict] = {}
    for key, values in flat.items():
        split, metric = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
        out.setdefault(split, {})[metric] = list(values)
    return out
