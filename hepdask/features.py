"""Fixed-width float32 feature matrices, one per partition, as dask arrays.

Flat branches become one column each. A jagged branch becomes ``pad`` columns
(the first ``pad`` elements, padded with NaN and clipped), and each jagged
collection (branches sharing a counter such as ``NJet``) gets one 0/1 mask
column per slot. Values are normalised with the specs; NaN, ±inf and the
sentinel become NaN, which tree learners treat as missing.

Every event is assigned to train, validation or test by a hash of (split
seed, sample, file, entry), so the split does not depend on the partitioning.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import awkward as ak
import dask
import dask.array as da
import numpy as np

from .config import FeaturesConfig, SplitConfig
from .dataset import Dataset, Partition
from .specs import Specs

__all__ = ["Column", "Features", "Layout", "SplitArrays", "build_features", "make_layout",
           "split_codes"]

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Column:
    """How one block of output columns is made from one branch (or one collection's masks)."""

    branch: str  # the branch; for a mask, the first branch of the collection
    kind: str  # "flat", "jagged" or "mask"
    width: int  # 1 for flat; pad length otherwise
    shift: float = 0.0  # x -> (x - shift) * scale
    scale: float = 1.0

    def names(self, collection: str = "") -> list[str]:
        if self.kind == "flat":
            return [self.branch]
        base = f"{collection}.mask" if self.kind == "mask" else self.branch
        return [f"{base}[{i}]" for i in range(self.width)]


@dataclass(frozen=True)
class Layout:
    """The feature transformation: enough to rebuild the same matrix from raw branches."""

    columns: tuple[Column, ...]
    names: tuple[str, ...]
    sentinel: float | None
    normalize: str

    @property
    def width(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "sentinel": self.sentinel, "normalize": self.normalize,
                "columns": [asdict(c) for c in self.columns]}


def make_layout(dataset: Dataset, specs: Specs, config: FeaturesConfig) -> Layout:
    """Decide the columns, pad lengths and normalisation constants from the specs."""
    pads: dict[str, int] = {}
    for branch in dataset.branches:
        if branch.jagged:
            wanted = specs[branch.name].max_multiplicity if config.pad == "max" else config.pad
            pads[branch.collection] = max(pads.get(branch.collection, 1), int(wanted))
    columns, names, masked = [], [], set()
    for branch in dataset.branches:
        spec = specs[branch.name]
        shift, scale = _normalisation(spec.min, spec.max, spec.mean, spec.std, config.normalize)
        if branch.jagged:
            column = Column(branch.name, "jagged", pads[branch.collection], shift, scale)
        else:
            column = Column(branch.name, "flat", 1, shift, scale)
        columns.append(column)
        names += column.names()
        if branch.jagged and branch.collection not in masked:
            masked.add(branch.collection)
            mask = Column(branch.name, "mask", pads[branch.collection])
            columns.append(mask)
            names += mask.names(branch.collection)
    return Layout(tuple(columns), tuple(names), dataset.sentinel, config.normalize)


def _normalisation(lo: float, hi: float, mean: float, std: float, how: str) -> tuple[float, float]:
    if how == "standard" and std > 0:
        return mean, 1.0 / std
    if how == "minmax" and math.isfinite(lo) and hi > lo:
        return lo, 1.0 / (hi - lo)
    return 0.0, 1.0


def partition_matrix(events: ak.Array, layout: Layout) -> np.ndarray:
    """The (n_events, width) float32 feature matrix of one partition, vectorised."""
    out = np.empty((len(events), layout.width), dtype=np.float32)
    at = 0
    for column in layout.columns:
        values = events[column.branch]
        if column.kind == "mask":
            counts = ak.to_numpy(ak.num(values, axis=1))
            block = np.arange(column.width) < counts[:, None]
        else:
            if column.kind == "jagged":
                values = ak.fill_none(ak.pad_none(values, column.width, axis=1, clip=True), np.nan)
            block = ak.to_numpy(values).astype(np.float32).reshape(len(events), column.width)
            bad = ~np.isfinite(block)
            if layout.sentinel is not None:
                bad |= block == np.float32(layout.sentinel)
            block = (block - np.float32(column.shift)) * np.float32(column.scale)
            block[bad] = np.nan
        out[:, at: at + column.width] = block
        at += column.width
    return out


def split_codes(partition: Partition, config: SplitConfig) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) for each entry of ``partition``.

    A SplitMix64 hash of the entry number, keyed by (seed, sample, file),
    mapped to [0, 1): the same event always lands in the same split.
    """
    digest = hashlib.blake2b(
        f"{config.seed}\0{partition.sample}\0{partition.file}".encode(), digest_size=8
    ).digest()
    key = np.uint64(int.from_bytes(digest, "little"))
    entries = np.arange(partition.start, partition.stop, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = key + (entries + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    uniform = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.searchsorted([config.train, config.train + config.validation], uniform, side="right")


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

    def persist(self, *, client=None) -> Features:
        """Compute the matrices into the workers' memory, all splits in one pass over the files."""
        arrays = [self[s].matrix for s in SPLITS]
        done = client.persist(arrays) if client is not None else dask.persist(*arrays)
        return Features(self.layout, *(SplitArrays(matrix, self[s].block_samples)
                                       for s, matrix in zip(SPLITS, done, strict=True)))


def build_features(dataset: Dataset, layout: Layout, split: SplitConfig, *,
                   events: dict[str, list] | None = None) -> Features:
    """Lazy feature arrays for every split; nothing is read until they are computed.

    ``events`` are partitions already read by :meth:`Dataset.read`; by default they are read
    when the arrays are computed.
    """
    width = layout.width
    blocks: dict[str, list[list[da.Array]]] = {s: [] for s in SPLITS}
    block_samples: dict[str, list[str]] = {s: [] for s in SPLITS}
    for sample in dataset.samples:
        parts = events[sample.name] if events is not None else sample.partitions_delayed()
        for partition, part in zip(sample.partitions, parts, strict=True):
            counts = np.bincount(split_codes(partition, split), minlength=3)
            task = dask.delayed(_partition_block, pure=True)(
                part, layout, partition, split, sample.config.label, sample.config.weight
            )
            full = da.from_delayed(task, shape=(partition.size, width + 2), dtype=np.float32)
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


def _partition_block(events: ak.Array, layout: Layout, partition: Partition, split: SplitConfig,
                     label: int, weight: str | None) -> np.ndarray:
    """Features, label and weight of one partition, rows grouped train | validation | test."""
    n = len(events)
    block = np.empty((n, layout.width + 2), dtype=np.float32)
    block[:, : layout.width] = partition_matrix(events, layout)
    block[:, layout.width] = label
    block[:, layout.width + 1] = ak.to_numpy(events[weight]) if weight else 1.0
    order = np.argsort(split_codes(partition, split), kind="stable")
    return block[order]
