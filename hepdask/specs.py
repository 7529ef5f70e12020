"""Per-branch statistics ("specs") of all samples, computed in one distributed pass.

Every partition is summarised by one task that computes, for every branch at
once and in float64, the counts of values and of missing ones (NaN, ±inf,
sentinel), min, max, mean and M2 (sum of squared deviations), and for jagged
branches the multiplicity histogram. Partial summaries are merged pairwise
in a tree with Chan et al.'s parallel formula, so the mean and std are as
exact as a one-process NumPy computation, whatever the partitioning.

The statistics are of the events and objects that pass the selections. The
same pass counts, per sample, the events read and kept (a cut flow), per class
the events and weights, and per partition the kept events of each split, which
fixes the shape of every feature block before any feature is computed.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import awkward as ak
import dask
import numpy as np

from .config import SplitConfig
from .dataset import Dataset, Partition, ReadError, split_codes
from .errors import HepdaskError
from .outputs import write_json
from .preprocess import Branch, Events, Preprocess
from .progress import compute

__all__ = ["BranchSpec", "ClassSpec", "SampleSpec", "Specs", "cached_specs", "compute_specs",
           "load_or_compute_specs"]

SPECS_VERSION = 4


@dataclass
class BranchSpec:
    """Statistics of one branch; for a jagged branch, of its elements."""

    name: str
    jagged: bool
    count: int = 0  # values (elements) seen, missing ones included
    nan: int = 0
    inf: int = 0
    sentinel: int = 0
    min: float = math.inf  # over the valid values
    max: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    sum: float = 0.0
    sumsq: float = 0.0
    multiplicity: list[int] = field(default_factory=list)  # jagged: events with 0, 1, 2, ... elements

    @property
    def missing(self) -> int:
        return self.nan + self.inf + self.sentinel

    @property
    def valid(self) -> int:
        return self.count - self.missing

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.valid) if self.valid else 0.0

    @property
    def max_multiplicity(self) -> int:
        return len(self.multiplicity) - 1 if self.multiplicity else 0

    def multiplicity_quantile(self, q: float) -> int:
        """The smallest multiplicity that ``q`` of the events do not exceed (inverted CDF)."""
        counts = np.asarray(self.multiplicity, dtype=np.float64)
        if not counts.sum():
            return 0
        cdf = np.cumsum(counts) / counts.sum()
        return int(np.searchsorted(cdf, q - 1e-12))

    def multiplicity_moments(self) -> tuple[float, float]:
        """Mean and standard deviation of the number of objects per event."""
        counts = np.asarray(self.multiplicity, dtype=np.float64)
        if not counts.sum():
            return 0.0, 0.0
        n = np.arange(len(counts))
        mean = float((n * counts).sum() / counts.sum())
        return mean, float(np.sqrt((np.square(n - mean) * counts).sum() / counts.sum()))

    def merge(self, other: BranchSpec) -> BranchSpec:
        """Combine the statistics of two disjoint sets of events."""
        na, nb = self.valid, other.valid
        n = na + nb
        delta = other.mean - self.mean
        mult = np.zeros(max(len(self.multiplicity), len(other.multiplicity)), dtype=np.int64)
        mult[: len(self.multiplicity)] += np.asarray(self.multiplicity, dtype=np.int64)
        mult[: len(other.multiplicity)] += np.asarray(other.multiplicity, dtype=np.int64)
        return BranchSpec(
            name=self.name,
            jagged=self.jagged,
            count=self.count + other.count,
            nan=self.nan + other.nan,
            inf=self.inf + other.inf,
            sentinel=self.sentinel + other.sentinel,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
            mean=self.mean + delta * nb / n if n else 0.0,
            m2=self.m2 + other.m2 + delta * delta * na * nb / n if n else 0.0,
            sum=self.sum + other.sum,
            sumsq=self.sumsq + other.sumsq,
            multiplicity=mult.tolist(),
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "missing": self.missing, "valid": self.valid, "std": self.std,
                "max_multiplicity": self.max_multiplicity}

    @classmethod
    def from_dict(cls, data: dict) -> BranchSpec:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass
class SampleSpec:
    """The cut flow of one sample: events read, events kept and their total weight, and the
    kept events whose weight is not finite or negative (which no engine can train with)."""

    events: int = 0  # kept by the event selection
    weight_sum: float = 0.0  # of the kept events
    read: int = 0
    weight_nonfinite: int = 0
    weight_negative: int = 0

    def merge(self, other: SampleSpec) -> SampleSpec:
        return SampleSpec(self.events + other.events, self.weight_sum + other.weight_sum,
                          self.read + other.read, self.weight_nonfinite + other.weight_nonfinite,
                          self.weight_negative + other.weight_negative)


@dataclass
class ClassSpec:
    events: int = 0
    weight_sum: float = 0.0

    def merge(self, other: ClassSpec) -> ClassSpec:
        return ClassSpec(self.events + other.events, self.weight_sum + other.weight_sum)


@dataclass
class Specs:
    """Statistics of every feature branch over all samples, with the cut flow of each sample,
    the events and weights of each class, and the kept events per partition and split."""

    fingerprint: str
    branches: dict[str, BranchSpec]
    samples: dict[str, SampleSpec]
    classes: dict[int, ClassSpec] = field(default_factory=dict)
    partitions: dict[str, list[list[int]]] = field(default_factory=dict)  # sample -> [tr, va, te]
    read_errors: list[ReadError] = field(default_factory=list)  # skipped (on_read_error = "skip")
    created: str = ""

    @property
    def n_classes(self) -> int:
        return max(self.classes) + 1 if self.classes else 0

    def __getitem__(self, name: str) -> BranchSpec:
        return self.branches[name]

    def save(self, path: str | Path) -> Path:
        return write_json(path, {
            "version": SPECS_VERSION,
            "fingerprint": self.fingerprint,
            "created": self.created,
            "samples": {k: asdict(v) for k, v in self.samples.items()},
            "classes": {str(k): asdict(v) for k, v in sorted(self.classes.items())},
            "branches": {k: v.to_dict() for k, v in self.branches.items()},
            "partitions": self.partitions,
            "read_errors": [asdict(e) for e in self.read_errors],
        })

    @classmethod
    def load(cls, path: str | Path) -> Specs:
        try:
            data = json.loads(Path(path).read_text())
            if data.get("version") != SPECS_VERSION:
                raise ValueError(f"version {data.get('version')}, expected {SPECS_VERSION}")
            return cls(
                fingerprint=data["fingerprint"],
                branches={k: BranchSpec.from_dict(v) for k, v in data["branches"].items()},
                samples={k: SampleSpec(**v) for k, v in data["samples"].items()},
                classes={int(k): ClassSpec(**v) for k, v in data["classes"].items()},
                partitions=data["partitions"],
                read_errors=[ReadError(**e) for e in data["read_errors"]],
                created=data.get("created", ""),
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise HepdaskError(
                f"Could not read the specs file {path} ({err}). Delete it to have the specs "
                "computed again."
            ) from None

    def table(self) -> str:
        """A fixed-width text table, one row per branch."""
        header = (f"{'branch':<28} {'kind':<6} {'valid':>10} {'missing':>9} {'min':>11} "
                  f"{'max':>11} {'mean':>11} {'std':>11} {'max n':>5}")
        rows = [header, "-" * len(header)]
        for b in self.branches.values():
            rows.append(
                f"{b.name[:28]:<28} {'jagged' if b.jagged else 'flat':<6} {b.valid:>10} "
                f"{b.missing:>9} {b.min:>11.4g} {b.max:>11.4g} {b.mean:>11.4g} {b.std:>11.4g} "
                f"{b.max_multiplicity if b.jagged else '':>5}"
            )
        flow = [f"  {k}: {v.read} read, {v.events} selected ({v.events / v.read:.1%}), "
                f"weights {v.weight_sum:.6g}" if v.read else f"  {k}: no events"
                for k, v in self.samples.items()]
        classes = ", ".join(f"{k}: {v.events} events, weights {v.weight_sum:.6g}"
                            for k, v in sorted(self.classes.items()))
        return "\n".join([*rows, "", "Samples:", *flow, f"Classes: {classes}"])


def compute_specs(dataset: Dataset, *, client=None, events: dict[str, list] | None = None) -> Specs:
    """Compute the specs of every branch of every sample in one ``dask.compute``.

    ``events`` are partitions already read by :meth:`Dataset.read`; by default they are read here.
    """
    partials = []
    for sample in dataset.samples:
        parts = events[sample.name] if events is not None else sample.partitions_delayed()
        for index, (partition, part) in enumerate(zip(sample.partitions, parts, strict=True)):
            partials.append(dask.delayed(_partition_specs)(
                part, dataset.branches, dataset.sentinel, partition, index, dataset.split
            ))
    (branches, samples, classes, partitions, errors), = compute(client, _tree_merge(partials))
    for sample in dataset.samples:
        samples.setdefault(sample.name, SampleSpec())
    _check_weights(samples, dataset.preprocess)
    read_errors = list(dataset.skipped) + [
        ReadError(s.name, part.file, errors[(s.name, i)], part.start, part.stop, i)
        for s in dataset.samples for i, part in enumerate(s.partitions) if (s.name, i) in errors
    ]
    return Specs(
        read_errors=read_errors,
        fingerprint=dataset.fingerprint(),
        branches=branches,
        samples=samples,
        classes=classes,
        partitions={s.name: [partitions[(s.name, i)] for i in range(len(s.partitions))]
                    for s in dataset.samples},
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


def cached_specs(dataset: Dataset, path: str | Path) -> Specs | None:
    """The specs saved at ``path`` if they were computed from exactly these data, else None."""
    path = Path(path)
    if path.exists():
        cached = Specs.load(path)
        if cached.fingerprint == dataset.fingerprint():
            return cached
    return None


def load_or_compute_specs(dataset: Dataset, path: str | Path, *, client=None) -> tuple[Specs, bool]:
    """Reuse ``path`` if its fingerprint matches the data, else compute and save; returns (specs, reused)."""
    cached = cached_specs(dataset, path)
    if cached is not None:
        return cached, True
    specs = compute_specs(dataset, client=client)
    specs.save(path)
    return specs, False


def _partition_specs(events: Events, branches: Iterable[Branch], sentinel: float | None,
                     partition: Partition, index: int, split: SplitConfig):
    """Summarise one partition: the map step of the specs reduction."""
    out = {}
    for branch in branches:
        column = events.values[branch.name]
        multiplicity = []
        if branch.jagged:
            multiplicity = np.bincount(ak.to_numpy(ak.num(column, axis=1))).tolist()
            column = ak.flatten(column, axis=1)
        out[branch.name] = _summarise(branch, ak.to_numpy(column), sentinel, multiplicity)
    weight = events.weight
    sample = {partition.sample: SampleSpec(len(events), float(weight.sum()), events.read,
                                           int((~np.isfinite(weight)).sum()),
                                           int((weight < 0).sum()))}
    classes = {
        int(label): ClassSpec(int(n), float(w))
        for label, n, w in zip(*_class_sums(events.label, events.weight), strict=True)
    }
    codes = split_codes(partition, split, entries=events.entry)
    counts = {(partition.sample, index): np.bincount(codes, minlength=3).tolist()}
    errors = {(partition.sample, index): events.error} if events.error else {}
    return out, sample, classes, counts, errors


def _check_weights(samples: dict[str, SampleSpec], prep: Preprocess) -> None:
    """Stop at the first sample whose weight expression gives NaN, ±inf or negative weights.

    XGBoost refuses such weights (after a worker's traceback, blaming its parameters) and the
    evaluation's weighted ROC AUC (scikit-learn's) is not defined with negative ones, so they
    stop every engine here, with the expression and the count.
    """
    for name, spec in samples.items():
        bad = {"NaN or ±inf": spec.weight_nonfinite, "negative": spec.weight_negative}
        what, count = next(((k, v) for k, v in bad.items() if v), (None, 0))
        if not count:
            continue
        head = (f"Config key samples.{name}.weight: the expression {prep.weights[name].text!r} "
                f"gives {what} weights for {count} of the {spec.events} selected events of "
                f"sample {name!r}.")
        if what == "negative":
            raise HepdaskError(
                f"{head} hepdask cannot use negative weights (as NLO generators give) yet: "
                "XGBoost refuses them in training, and the evaluation's weighted ROC AUC (of "
                "every engine, with use_weights = false too) is not defined with them. Select "
                "those events away (selection.events, e.g. \"genWeight > 0\"), or train with "
                "abs(...) of the weight (an approximation: it changes the weighted distributions)."
            )
        raise HepdaskError(
            f"{head} Every event needs a finite weight: fix the expression (guard a log, sqrt "
            "or division against its bad inputs), or select those events away with "
            "selection.events."
        )


def _class_sums(labels: np.ndarray, weights: np.ndarray):
    present, inverse = np.unique(labels, return_inverse=True)
    return (present, np.bincount(inverse, minlength=len(present)),
            np.bincount(inverse, weights=weights, minlength=len(present)))


def _summarise(branch: Branch, values: np.ndarray, sentinel: float | None,
               multiplicity: list[int]) -> BranchSpec:
    values = values.astype(np.float64)
    nan = np.isnan(values)
    inf = np.isinf(values)
    sent = values == sentinel if sentinel is not None else np.zeros_like(nan)
    valid = values[~(nan | inf | sent)]
    spec = BranchSpec(branch.name, branch.jagged, count=len(values), nan=int(nan.sum()),
                      inf=int(inf.sum()), sentinel=int(sent.sum()), multiplicity=multiplicity)
    if len(valid):
        mean = valid.mean()
        spec.min, spec.max = float(valid.min()), float(valid.max())
        spec.mean = float(mean)
        spec.m2 = float(np.square(valid - mean).sum())
        spec.sum, spec.sumsq = float(valid.sum()), float(np.square(valid).sum())
    return spec


def _merge_pair(a, b):
    branches_a, samples_a, classes_a, partitions_a, errors_a = a
    branches_b, samples_b, classes_b, partitions_b, errors_b = b
    branches = {k: branches_a[k].merge(branches_b[k]) for k in branches_a}
    return branches, _merge_dict(samples_a, samples_b), _merge_dict(classes_a, classes_b), \
        {**partitions_a, **partitions_b}, {**errors_a, **errors_b}


def _merge_dict(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, spec in b.items():
        out[key] = out[key].merge(spec) if key in out else spec
    return out


def _tree_merge(partials: list, fan_in: int = 8):
    """Reduce delayed partial specs in a tree, so no single task merges thousands of partitions."""
    while len(partials) > 1:
        partials = [
            dask.delayed(_merge_many)(*partials[i: i + fan_in])
            for i in range(0, len(partials), fan_in)
        ]
    return partials[0]


def _merge_many(*partials):
    result = partials[0]
    for other in partials[1:]:
        result = _merge_pair(result, other)
    return result
