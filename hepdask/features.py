"""Fixed-width float32 feature matrices, one per partition, as dask arrays.

Flat branches become one column each. The jagged branches of a collection
(``Jet_pt``, ``Jet_eta``, ...) become ``pad`` columns each: the first ``pad``
objects (after the object selection and ordering), padded with NaN. The pad
length is set per collection: a number, ``"max"`` or a percentile of the
multiplicity such as ``"q99"`` (from the specs). Each collection also gets a
column with its number of objects (``Jet.n``) and one 0/1 mask column per slot
(``Jet.mask[i]``). Values are normalised with the specs, per element for
jagged branches; NaN, ±inf and the sentinel become NaN, which tree learners
treat as missing.

Every event is assigned to train, validation or test by a hash of (split
seed, sample, file, entry), so the split does not depend on the partitioning.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import awkward as ak
import dask
import dask.array as da
import numpy as np
from dask.core import flatten

from .config import FeaturesConfig, SplitConfig, pad_quantile
from .dataset import Dataset, Partition, split_codes
from .errors import HepdaskError
from .preprocess import Events
from .progress import persist
from .specs import BranchSpec, Specs

__all__ = ["Column", "Features", "Layout", "SplitArrays", "build_features", "denormalize",
           "make_layout", "normalize", "partition_matrix", "placed", "rank_order", "resolve_pad"]

SPLITS = ("train", "validation", "test")

log = logging.getLogger("hepdask")


@dataclass(frozen=True)
class Column:
    """How one block of output columns is made from one branch (or one collection)."""

    branch: str  # the branch; for "count" and "mask", the collection's first feature branch
    kind: str  # "flat", "jagged", "count" (objects per event) or "mask" (0/1 per slot)
    width: int  # 1 for flat and count; the pad length otherwise
    shift: float = 0.0  # x -> (x - shift) * scale
    scale: float = 1.0
    collection: str = ""  # jagged, count and mask: the collection

    def names(self) -> list[str]:
        if self.kind == "flat":
            return [self.branch]
        if self.kind == "count":
            return [f"{self.collection}.n"]
        base = f"{self.collection}.mask" if self.kind == "mask" else self.branch
        return [f"{base}[{i}]" for i in range(self.width)]


@dataclass(frozen=True)
class Layout:
    """The feature transformation: enough to rebuild the same matrix from the feature branches."""

    columns: tuple[Column, ...]
    names: tuple[str, ...]
    sentinel: float | None
    normalize: str
    notes: tuple[str, ...] = ()  # why branches that were asked for are not features

    @property
    def width(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "sentinel": self.sentinel, "normalize": self.normalize,
                "columns": [asdict(c) for c in self.columns], "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict) -> Layout:
        return cls(tuple(Column(**c) for c in data["columns"]), tuple(data["names"]),
                   data["sentinel"], data["normalize"], tuple(data.get("notes", ())))


def resolve_pad(pad: int | str, spec: BranchSpec) -> int:
    """Slots kept for a collection: ``pad`` itself, the largest multiplicity, or a percentile."""
    if isinstance(pad, int):
        return pad
    q = pad_quantile(pad)
    wanted = spec.multiplicity_quantile(q) if q is not None else spec.max_multiplicity
    return max(1, wanted)


def make_layout(dataset: Dataset, specs: Specs, config: FeaturesConfig) -> Layout:
    """Decide the columns, pad lengths and normalisation constants from the specs.

    A branch without one finite value in the selected events (always NaN, ±inf or the
    sentinel, e.g. a log of 0) is left out with a note: it cannot tell events apart, and its
    min and max would be ±inf.
    """
    columns: list[Column] = []
    seen: set[str] = set()
    dead = [b.name for b in dataset.branches if not specs[b.name].valid]
    notes = [f"Not using {name!r} as a feature: it has no finite value in the selected events "
             f"({_missing(specs[name])})." for name in dead]
    for note in notes:
        log.warning(note)
    if len(dead) == len(dataset.branches):
        raise HepdaskError(
            f"No feature is left: {' '.join(notes)} Check those branches and their [derived] "
            "expressions (a log or division of bad values?), data.sentinel and the selections, "
            "or choose other features.branches."
        )
    for branch in dataset.branches:
        if branch.name in dead:
            continue
        spec = specs[branch.name]
        shift, scale = _normalisation(spec.min, spec.max, spec.mean, spec.std, config.normalize)
        if not branch.jagged:
            columns.append(Column(branch.name, "flat", 1, shift, scale))
            continue
        collection = config.collections.get(branch.collection)
        pad = resolve_pad(collection.pad if collection and collection.pad is not None
                          else config.pad, spec)
        if branch.collection not in seen:
            seen.add(branch.collection)
            if collection is None or collection.multiplicity:
                mean, std = spec.multiplicity_moments()
                lo, hi = 0.0, float(spec.max_multiplicity)
                n_shift, n_scale = _normalisation(lo, hi, mean, std, config.normalize)
                columns.append(Column(branch.name, "count", 1, n_shift, n_scale, branch.collection))
            if collection is None or collection.mask:
                columns.append(Column(branch.name, "mask", pad, collection=branch.collection))
        columns.append(Column(branch.name, "jagged", pad, shift, scale, branch.collection))
    names = tuple(name for column in columns for name in column.names())
    return Layout(tuple(columns), names, dataset.sentinel, config.normalize,
                  (*dataset.notes, *notes))


def _missing(spec: BranchSpec) -> str:
    """What the values of a branch without a valid one are, e.g. "2000 values: 2000 NaN"."""
    kinds = {"NaN": spec.nan, "±inf": spec.inf, "equal to data.sentinel": spec.sentinel}
    found = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
    return f"{spec.count} values: {found}" if found else "no values at all"


def _normalisation(lo: float, hi: float, mean: float, std: float, how: str) -> tuple[float, float]:
    if how == "standard" and std > 0:
        return mean, 1.0 / std
    if how == "minmax" and math.isfinite(lo) and hi > lo:
        return lo, 1.0 / (hi - lo)
    return 0.0, 1.0


def partition_matrix(values: dict, layout: Layout, out: np.ndarray | None = None, *,
                     raw: bool = False) -> np.ndarray:
    """The (n_events, width) float32 feature matrix of one partition, vectorised.

    ``values`` maps each feature branch to its (flat or jagged) awkward array. The slots of a
    collection are gathered with one index computed per collection, not one ``pad_none`` per
    branch; each block is then normalised in place (:func:`normalize`), unless ``raw``: the
    padded values as they are, which an exported ONNX model takes (see :mod:`hepdask.export`).
    ``out`` may be given (e.g. a column-major array, where every block is contiguous).
    """
    n = len(next(iter(values.values()))) if values else 0
    if out is None:
        out = np.empty((n, layout.width), dtype=np.float32, order="F")
    slots: dict[tuple[str, int], _Slots] = {}
    for column, block in zip(layout.columns, _blocks(out, layout), strict=True):
        values_of = values[column.branch]
        if column.kind == "flat":
            block[:, 0] = _numpy(values_of)
            continue
        key = (column.collection, column.width)
        if key not in slots:
            slots[key] = _Slots(ak.to_numpy(ak.num(values_of, axis=1)), column.width)
        where = slots[key]
        if column.kind == "mask":
            block[...] = where.valid
        elif column.kind == "count":
            block[:, 0] = where.counts
        else:
            where.gather(ak.to_numpy(ak.flatten(values_of, axis=1)), block)
    return out if raw else normalize(out, layout)


def normalize(matrix: np.ndarray, layout: Layout) -> np.ndarray:
    """Normalise a raw feature matrix in place (and return it): ``(x - shift) * scale`` per
    column in float32; the sentinel (except in count columns) and ±inf become NaN.

    Mask columns are left as they are: they hold 0 and 1 and are never normalised.
    """
    for column, block in zip(layout.columns, _blocks(matrix, layout), strict=True):
        if column.kind == "mask":
            continue
        sentinel = None
        if layout.sentinel is not None and column.kind != "count":
            sentinel = block == np.float32(layout.sentinel)
        if column.shift or column.scale != 1.0:
            block -= np.float32(column.shift)
            block *= np.float32(column.scale)
        if sentinel is not None:
            block[sentinel] = np.nan
        block[np.isinf(block)] = np.nan
    return matrix


def denormalize(matrix: np.ndarray, layout: Layout) -> np.ndarray:
    """The inverse of :func:`normalize`, in place (and returned): values back in the branches'
    own units (GeV, radians, counts), for plots a physicist reads. Missing values stay NaN."""
    for column, block in zip(layout.columns, _blocks(matrix, layout), strict=True):
        if column.kind != "mask" and (column.shift or column.scale != 1.0):
            block /= np.float32(column.scale)
            block += np.float32(column.shift)
    return matrix


def _blocks(matrix: np.ndarray, layout: Layout) -> list[np.ndarray]:
    """The views of ``matrix`` that hold each of the layout's columns."""
    edges = np.cumsum([0, *(column.width for column in layout.columns)])
    return [matrix[:, a:b] for a, b in itertools.pairwise(edges)]


def _numpy(values) -> np.ndarray:
    """One value per event as NumPy, missing values (an option type) as NaN."""
    if not isinstance(values, ak.Array):
        return np.asarray(values)
    if values.layout.is_option:  # fill_none is costly for the many arrays that have no option
        values = ak.fill_none(values, np.nan)
    return ak.to_numpy(values)


class _Slots:
    """Where the first ``pad`` objects of each event sit in the collection's flat content."""

    def __init__(self, counts: np.ndarray, pad: int):
        self.counts = counts
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.valid = np.arange(pad) < counts[:, None]
        self.missing = ~self.valid
        self.index = np.where(self.valid, starts[:, None] + np.arange(pad), 0)

    def gather(self, content: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out`` with the slots' values, NaN where an event has fewer objects."""
        if len(content):
            out[...] = content[self.index]
            out[self.missing] = np.nan
        else:
            out[...] = np.nan


@dataclass
class SplitArrays:
    """Features, labels and weights of one split, chunked like the partitions.

    They are views of one float32 matrix ``[X | y | w]``, which is what gets persisted: one
    array per partition and split on the workers rather than three.
    """

    matrix: da.Array
    block_samples: tuple[str, ...] = ()  # the sample of each (non-empty) block of ``matrix``

    @property
    def X(self) -> da.Array:
        return self.matrix[:, :-2]

    @property
    def y(self) -> da.Array:
        return self.matrix[:, -2]

    @property
    def w(self) -> da.Array:
        return self.matrix[:, -1]

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def sample(self, limit: int) -> da.Array:
        """At most about ``limit`` rows ``[X | y | w]``, the same fraction of each block (the
        blocks of a sample are contiguous: the first rows alone could be of one class). Lazy:
        computing it computes the blocks, but moves only the rows kept."""
        fraction = min(1.0, limit / len(self)) if len(self) else 1.0
        if fraction >= 1.0:
            return self.matrix
        sizes = self.matrix.chunks[0]
        return da.concatenate([self.matrix.blocks[i][: math.ceil(size * fraction)]
                               for i, size in enumerate(sizes) if size], axis=0)


@dataclass
class Features:
    """The feature layout and the lazy arrays of the three splits."""

    layout: Layout
    train: SplitArrays
    validation: SplitArrays
    test: SplitArrays

    @property
    def names(self) -> tuple[str, ...]:
        return self.layout.names

    def __getitem__(self, split: str) -> SplitArrays:
        return getattr(self, split)

    def persist(self, *, client=None, workers: Sequence[str] | None = None) -> Features:
        """Compute the matrices into the workers' memory, all splits in one pass over the files;
        returns when they are there. On a cluster, each block goes to the worker
        :func:`placed` gives it (one of ``workers``, when given), so that a run on as many
        workers repeats exactly."""
        arrays = [self[s].matrix for s in SPLITS]
        if client is None:
            done = dask.persist(*arrays)
        else:
            with placed(client, [self[s] for s in SPLITS], workers=workers):
                done = persist(client, arrays)
        return Features(self.layout, *(SplitArrays(matrix, self[s].block_samples)
                                       for s, matrix in zip(SPLITS, done, strict=True)))


def rank_order(info: dict) -> list[str]:
    """The worker addresses of a scheduler's ``identity()["workers"]`` in XGBoost's rank order
    (by worker name)."""
    return sorted(info, key=lambda a: f"[xgboost.dask-{info[a].get('name')}]:{a}")


def placed(client, splits: Sequence[SplitArrays], *, workers: Sequence[str] | None = None
           ) -> contextlib.AbstractContextManager:
    """Within this block, the blocks of ``splits`` (and of their X, y and w) computed on the
    cluster go to fixed workers: each split's rows in order over the workers (those of
    ``workers`` that are present, when given) in XGBoost's rank order, block ``i`` to the
    worker whose share holds its middle row.

    The data each worker holds, and so the quantile sketches and histograms XGBoost sums,
    then depend on the number of workers only, not on which worker was free first. The
    restrictions are loose: a block whose worker has left goes to any other.
    """
    info = client.sync(client.scheduler.identity)["workers"]
    workers = [a for a in rank_order(info) if workers is None or a in workers] or rank_order(info)
    if not workers:  # e.g. an adaptive cluster before its first worker: nowhere to place
        return contextlib.nullcontext()
    table: dict = {}
    for split in splits:
        sizes = split.matrix.chunks[0]
        total = sum(sizes)
        middles = np.cumsum(sizes) - np.asarray(sizes) / 2
        owners = [[workers[min(len(workers) - 1, int(len(workers) * m / total))]]
                  for m in middles] if total else []
        for array in (split.matrix, split.X, split.y, split.w):
            table.update(zip(flatten(array.__dask_keys__()), owners, strict=True))
    # dict.get pickles without hepdask, for schedulers that do not have it installed
    return dask.annotate(workers=table.get, allow_other_workers=True)


def build_features(dataset: Dataset, layout: Layout, specs: Specs, *,
                   events: dict[str, list] | None = None) -> Features:
    """Lazy feature arrays for every split; nothing is read until they are computed.

    The specs give the number of selected events of each partition in each split, so every
    block's shape is known up front. ``events`` are partitions already read by
    :meth:`Dataset.read`; by default they are read when the arrays are computed.
    """
    width = layout.width
    blocks: dict[str, list[list[da.Array]]] = {s: [] for s in SPLITS}
    block_samples: dict[str, list[str]] = {s: [] for s in SPLITS}
    for sample in dataset.samples:
        parts = events[sample.name] if events is not None else sample.partitions_delayed()
        for partition, part, counts in zip(sample.partitions, parts, specs.partitions[sample.name],
                                           strict=True):
            task = dask.delayed(_partition_block, pure=True)(part, layout, partition, dataset.split)
            full = da.from_delayed(task, shape=(sum(counts), width + 2), dtype=np.float32)
            edges = np.concatenate([[0], np.cumsum(counts)])
            for i, name in enumerate(SPLITS):
                if counts[i]:  # dask drops empty chunks when concatenating
                    blocks[name].append(full[edges[i]: edges[i + 1]])
                    block_samples[name].append(sample.name)
    out = {}
    for name in SPLITS:
        matrix = (da.concatenate(blocks[name], axis=0) if blocks[name]
                  else da.zeros((0, width + 2), dtype=np.float32, chunks=(0, width + 2)))
        out[name] = SplitArrays(matrix, tuple(block_samples[name]))
    return Features(layout, out["train"], out["validation"], out["test"])


def _partition_block(events: Events, layout: Layout, partition: Partition,
                     split: SplitConfig) -> np.ndarray:
    """Features, label and weight of one partition, rows grouped train | validation | test."""
    if events.error:  # read when the specs were computed (else it would not be read again)
        raise HepdaskError(
            f"{partition.file} entries {partition.start}-{partition.stop} (sample "
            f"{partition.sample!r}) could be read for the specs but not now: {events.error}. "
            "Run again when the file is reachable, or remove it from the sample."
        )
    block = np.empty((len(events), layout.width + 2), dtype=np.float32, order="F")
    partition_matrix(events.values, layout, out=block[:, : layout.width])
    block[:, layout.width] = events.label
    block[:, layout.width + 1] = events.weight
    order = np.argsort(split_codes(partition, split, entries=events.entry), kind="stable")
    return np.ascontiguousarray(block[order])
