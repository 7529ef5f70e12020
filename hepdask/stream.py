"""Mini-batches streamed from the cluster to one trainer in this process.

The feature blocks of a split (one per partition) are computed on the workers,
a bounded number ahead of need, and dropped once consumed, so the trainer never
holds more than a few partitions. Each mini-batch mixes every sample in its
global proportion even when each file holds a single class: batch ``i`` takes,
from each sample, the rows between two cumulative quotas of that sample's
(per-epoch shuffled) stream. Batch contents depend only on (seed, epoch, i),
so any batch can be rebuilt in any order and a resumed run sees the same ones.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import dask
import numpy as np

from .config import StreamConfig
from .features import Features, Layout, SplitArrays
from .progress import iterate
from .specs import Specs
from .weights import class_factors

__all__ = ["BatchStream", "StreamedModel", "Transform", "in_order", "make_transform",
           "predict_split"]


@dataclass(frozen=True)
class Transform:
    """What the workers do to a feature block before it is sent to the trainer.

    Neural networks and linear models cannot take NaN: missing values become 0 (the mean,
    after standard normalisation), optionally flagged by one indicator column per feature
    that has missing values. Weights are scaled per class so that they average about 1 and,
    with ``balance_classes``, so that each class carries the same total weight.
    """

    indicators: tuple[int, ...]  # columns that get a 0/1 "was missing" column
    class_scale: tuple[tuple[int, float], ...]  # label -> weight factor
    use_weights: bool

    def names(self, layout: Layout) -> tuple[str, ...]:
        return layout.names + tuple(f"{layout.names[i]}.missing" for i in self.indicators)

    def inputs(self, X: np.ndarray) -> np.ndarray:
        """The network's inputs for the feature matrix ``X``: indicators added, no NaN."""
        if self.indicators:
            X = np.hstack([X, np.isnan(X[:, list(self.indicators)]).astype(np.float32)])
        return np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)

    def __call__(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X, y = self.inputs(block[:, :-2]), block[:, -2]
        w = block[:, -1] if self.use_weights else np.ones(len(block), np.float32)
        scale = np.ones(len(block), np.float32)
        for label, factor in self.class_scale:
            scale[y == label] = factor
        return X, y.astype(np.float32), (w * scale).astype(np.float32)


def make_transform(layout: Layout, specs: Specs, config: StreamConfig) -> Transform:
    """The transform for these features, with the class totals taken from the specs."""
    indicators = ()
    if config.missing_indicators:
        indicators = tuple(i for i, (name, column) in enumerate(_flat_columns(layout))
                           if column is not None and specs[name].missing > 0)
    events = {c: spec.events for c, spec in specs.classes.items()}
    weights = {c: spec.weight_sum if config.use_weights else spec.events
               for c, spec in specs.classes.items()}
    scale = class_factors(weights, events, balance=config.balance_classes,
                          key="train.stream.balance_classes")
    return Transform(indicators, tuple(sorted(scale.items())), config.use_weights)


def _flat_columns(layout: Layout):
    """(name, column) per output column; column is None for jagged slots and masks."""
    for column in layout.columns:
        if column.kind == "flat":
            yield column.branch, column
        else:
            yield from ((None, None) for _ in range(column.width))


class BatchStream:
    """Mini-batches of one split, computed on the cluster a few partitions ahead.

    Parameters
    ----------
    client
        The :class:`distributed.Client` whose workers compute the blocks.
    features, split
        The features and the split (``"train"``, ``"validation"``, ``"test"``) to stream.
    transform
        Applied to each block on the workers.
    batch_size, prefetch, seed
        Rows per batch (about), blocks in flight or held ahead of need, shuffling seed.
    shuffle
        Reshuffle block order and rows every epoch; without it, epochs are identical and
        rows follow the partitions' order within each sample.
    """

    def __init__(self, client, features: Features, split: str, transform: Transform, *,
                 batch_size: int, prefetch: int = 4, seed: int = 0, shuffle: bool = True):
        self.client = client
        self.transform = transform
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.seed = seed
        self.shuffle = shuffle
        arrays: SplitArrays = features[split]
        self._matrix = arrays.matrix
        sizes = arrays.matrix.chunks[0]
        by_sample: dict[str, list[int]] = {}
        nonempty = [index for index, size in enumerate(sizes) if size]
        for index, sample in zip(nonempty, arrays.block_samples, strict=True):
            by_sample.setdefault(sample, []).append(index)
        self._sizes = sizes
        self._samples = list(by_sample)
        self._blocks = [np.array(by_sample[s]) for s in self._samples]
        self._totals = np.array([sum(sizes[b] for b in blocks) for blocks in self._blocks])
        self.n_events = int(self._totals.sum())
        self._epoch: int | None = None
        self._held: dict[int, object] = {}  # block -> future, then its arrays

    def __len__(self) -> int:
        return math.ceil(self.n_events / self.batch_size) if self.n_events else 0

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batch ``index`` of ``epoch``: (X, y, w) with rows of every sample."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        self._start_epoch(epoch)
        lo, hi = self._quota(index), self._quota(index + 1)
        parts = []
        for s in range(len(self._samples)):
            parts += self._rows(s, lo[s], hi[s])
        self._prefetch(index + 1)
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]

    def epoch(self, epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every batch of ``epoch``, in order."""
        for index in range(len(self)):
            yield self.batch(epoch, index)

    def warm(self, epoch: int) -> None:
        """Start computing the first blocks of ``epoch``, e.g. while the trainer still uses
        another stream's batches, so that the epoch does not begin by waiting for them."""
        self._start_epoch(epoch)
        self._prefetch(0)

    def release(self) -> None:
        """Drop every block held or in flight."""
        self._held.clear()

    # -- the schedule ----------------------------------------------------------------------

    def _start_epoch(self, epoch: int) -> None:
        if epoch == self._epoch:
            return
        self.release()
        self._epoch = epoch
        self._offsets = np.random.default_rng([self.seed, epoch, 0]).random(len(self._samples)) \
            if self.shuffle else np.zeros(len(self._samples))
        self._order = []  # per sample: its blocks in this epoch's order, and where each starts
        for s, blocks in enumerate(self._blocks):
            order = blocks.copy()
            if self.shuffle:
                np.random.default_rng([self.seed, epoch, 1, s]).shuffle(order)
            starts = np.concatenate([[0], np.cumsum([self._sizes[b] for b in order])])
            self._order.append((order, starts))
        # Blocks in the order the batches first need them, for prefetching; a block is done
        # once its sample's quota passes its end.
        need = sorted((starts[j] / self._totals[s], s, j)
                      for s, (order, starts) in enumerate(self._order) for j in range(len(order)))
        self._need_block = np.array([self._order[s][0][j] for _, s, j in need], dtype=np.int64)
        self._need_sample = np.array([s for _, s, _ in need], dtype=np.int64)
        self._need_end = np.array([self._order[s][1][j + 1] for _, s, j in need], dtype=np.int64)

    def _quota(self, index: int) -> np.ndarray:
        """Rows of each sample taken by batches 0 .. index-1 (cumulative, ends at the totals)."""
        m = min(index * self.batch_size, self.n_events)
        return np.floor(m * self._totals / self.n_events + self._offsets).astype(np.int64) \
            if m < self.n_events else self._totals.copy()

    def _rows(self, s: int, lo: int, hi: int) -> list[tuple[np.ndarray, ...]]:
        order, starts = self._order[s]
        out = []
        j = int(np.searchsorted(starts, lo, side="right") - 1)
        while lo < hi:
            X, y, w = self._arrays(int(order[j]))
            a, b = lo - starts[j], min(hi, starts[j + 1]) - starts[j]
            out.append((X[a:b], y[a:b], w[a:b]))
            lo = starts[j] + b
            j += 1
        return out

    # -- the blocks --------------------------------------------------------------------------

    def _submit(self, block: int) -> None:
        if block not in self._held:
            task = dask.delayed(_prepare_block, pure=True)(
                self._matrix.blocks[block], self.transform, self._row_seed(block)
            )
            self._held[block] = self.client.compute(task)

    def _row_seed(self, block: int) -> tuple[int, ...] | None:
        return (self.seed, self._epoch, 2, block) if self.shuffle else None

    def _arrays(self, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._submit(block)
        held = self._held[block]
        if not isinstance(held, tuple):
            held = self._held[block] = held.result()
        return held

    def _prefetch(self, next_index: int) -> None:
        """Keep the blocks of the coming batches in flight; drop those no batch needs again."""
        done = self._quota(next_index)
        pending = self._need_block[done[self._need_sample] < self._need_end]
        keep = [int(b) for b in pending[: self.prefetch + len(self._samples)]]
        for block in [b for b in self._held if b not in keep]:
            del self._held[block]
        for block in keep:
            self._submit(block)


def _prepare_block(block: np.ndarray, transform: Transform,
                   row_seed: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """On a worker: transform a feature block and, when shuffling, permute its rows."""
    X, y, w = transform(block)
    if row_seed is not None:
        order = np.random.default_rng(list(row_seed)).permutation(len(y))
        X, y, w = X[order], y[order], w[order]
    return X, y, w


def in_order(client, tasks: Sequence, *, window: int) -> Iterator:
    """The results of delayed ``tasks``, in order, at most ``window`` computed or in flight
    ahead of the one being used: the cluster stays busy and this process holds a few."""
    pending: collections.deque = collections.deque()
    ahead = iter(tasks)
    for task in itertools.islice(ahead, max(1, window)):
        pending.append(client.compute(task))
    while pending:
        future = pending.popleft()
        task = next(ahead, None)
        if task is not None:
            pending.append(client.compute(task))
        result = future.result()
        future.release()
        yield result


def predict_split(client, features: Features, split: str, transform: Transform, predict,
                  *, batch_size: int, prefetch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores of every event of ``split`` from ``predict(X) -> scores``, with raw labels and
    weights, in the split's row order (block by block, ``batch_size`` rows per call)."""
    raw = Transform(transform.indicators, (), use_weights=True)
    matrix = features[split].matrix
    blocks = [i for i, size in enumerate(matrix.chunks[0]) if size]
    tasks = [dask.delayed(_prepare_block, pure=True)(matrix.blocks[i], raw, None) for i in blocks]
    scores, labels, weights = [], [], []
    for X, y, w in iterate(in_order(client, tasks, window=prefetch), len(tasks), unit="blocks"):
        for start in range(0, len(y), batch_size):
            part = X[start: start + batch_size]
            scores.append(np.asarray(predict(part), dtype=np.float64).reshape(len(part), -1))
        labels.append(y)
        weights.append(w)
    if not scores:
        return np.empty(0), np.empty(0, np.float32), np.empty(0, np.float32)
    scores = np.concatenate(scores)
    return (scores[:, 0] if scores.shape[1] == 1 else scores), np.concatenate(labels), \
        np.concatenate(weights)


class StreamedModel:
    """``scores`` for models trained on the stream; they define ``predict(X)``, ``transform``
    and ``stream`` (the :class:`~hepdask.config.StreamConfig`)."""

    @classmethod
    def _loaded(cls, model, feature_names: tuple[str, ...], info: dict):
        """The model saved in a bundle, with the transform its ``info`` records."""
        transform = Transform(tuple(info["indicators"]), (), use_weights=True)
        return cls(model, feature_names, transform, StreamConfig(),
                   best_iteration=info["best_iteration"])

    def score_matrix(self, X: np.ndarray) -> np.ndarray:
        """Scores of the rows of a feature matrix (as :func:`partition_matrix` makes it)."""
        return self.predict(self.transform.inputs(X))

    @property
    def weight_factors(self) -> dict[int, float]:
        """The factor per class that the training weights were multiplied by."""
        return dict(self.transform.class_scale)

    def bundle_info(self) -> dict:
        """What loading the model back needs besides the model file (see :mod:`hepdask.bundle`)."""
        return {"indicators": list(self.transform.indicators),
                "best_iteration": self.best_iteration}

    def scores(self, client, features: Features, split: str = "test"):
        """(scores, labels, weights) of ``split``, streamed through ``predict``.

        Scores are the signal probability for two classes, one column per class otherwise.
        """
        return predict_split(client, features, split, self.transform, self.predict,
                             batch_size=max(self.stream.batch_size, 10_000),
                             prefetch=self.stream.prefetch)
