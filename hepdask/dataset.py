"""From config samples to lazy, partitioned event collections.

Every file is opened once here, on the client, to read its metadata (entry
count, branch types): this is where a missing file, tree or branch is caught,
before the cluster does any work. The entry ranges ("steps") are then fixed
here too and handed to :func:`uproot.dask`, so each partition is known to be
``(file, start, stop)``: the train/test split can then depend on the event's
file and entry, never on how the data happen to be partitioned.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import uproot

from .config import Config, SampleConfig
from .errors import HepdaskError

__all__ = ["Branch", "Dataset", "FileInfo", "Partition", "Sample", "expand_files", "open_dataset"]

log = logging.getLogger("hepdask")


@dataclass(frozen=True)
class Branch:
    """A numeric branch used as a feature."""

    name: str
    dtype: str  # numpy dtype of the values (of the elements, for a jagged branch)
    jagged: bool
    collection: str  # branches of one collection share a multiplicity (e.g. "NJet")


@dataclass(frozen=True)
class FileInfo:
    path: str
    entries: int
    size: int
    mtime: float


@dataclass(frozen=True)
class Partition:
    """One entry range of one file: the unit of work on the cluster."""

    sample: str
    file: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass
class Sample:
    config: SampleConfig
    tree: str
    files: list[FileInfo]
    partitions: list[Partition]
    columns: list[str]  # branches read from this sample (features + weight)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def n_events(self) -> int:
        return sum(f.entries for f in self.files)

    def events(self):
        """The sample as a lazy :mod:`dask_awkward` array, one partition per :class:`Partition`."""
        steps: dict[str, dict] = {}
        for part in self.partitions:
            steps.setdefault(part.file, {"object_path": self.tree, "steps": []})["steps"].append(
                [part.start, part.stop]
            )
        return uproot.dask(steps, filter_name=self.columns, open_files=False)

    def partitions_delayed(self) -> list:
        """One :class:`dask.delayed.Delayed` awkward array per :class:`Partition`, in order."""
        return self.events().to_delayed()


@dataclass
class Dataset:
    """All samples of a run and the feature branches they share."""

    samples: list[Sample]
    branches: list[Branch]
    sentinel: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def n_events(self) -> int:
        return sum(s.n_events for s in self.samples)

    def read(self, client) -> dict[str, list]:
        """Read every partition into the workers' memory, for several passes over one read.

        Returns the delayed partitions per sample name, backed by the workers' results; pass
        them as ``events=`` to :func:`~hepdask.specs.compute_specs` and
        :func:`~hepdask.features.build_features`, and drop them once the features are persisted.
        """
        return {s.name: client.persist(s.partitions_delayed()) for s in self.samples}

    def fingerprint(self) -> str:
        """A hash of everything the specs depend on: files (size, mtime), trees, branches, sentinel."""
        payload = {
            "samples": [
                {
                    "name": s.name,
                    "tree": s.tree,
                    "weight": s.config.weight,
                    "files": [[f.path, f.size, f.mtime, f.entries] for f in s.files],
                }
                for s in self.samples
            ],
            "branches": [b.name for b in self.branches],
            "sentinel": self.sentinel,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def open_dataset(config: Config) -> Dataset:
    """Resolve files and branches of every sample and check them against each other."""
    samples = []
    branches: list[Branch] | None = None
    notes: list[str] = []
    # A weight is never a feature: in HiggsML it alone nearly separates the classes.
    weights = tuple(s.weight for s in config.samples if s.weight)
    for sample_config in config.samples:
        tree = sample_config.tree or config.data.tree
        paths = expand_files(sample_config.files, where=f"samples.{sample_config.name}.files")
        files = []
        for path in paths:
            with _open_tree(path, tree, sample_config.name) as ttree:
                if branches is None:
                    branches, notes = _select_branches(ttree, config.features.branches,
                                                       config.features.exclude + weights, path)
                _check_branches(ttree, [b.name for b in branches], path, "features.branches")
                if sample_config.weight:
                    _check_branches(ttree, [sample_config.weight], path,
                                    f"samples.{sample_config.name}.weight")
                entries = ttree.num_entries
            stat = os.stat(path)
            files.append(FileInfo(path, entries, stat.st_size, stat.st_mtime))
        columns = [b.name for b in branches or []]
        if sample_config.weight and sample_config.weight not in columns:
            columns.append(sample_config.weight)
        partitions = [
            Partition(sample_config.name, f.path, start, min(start + config.data.step_size, f.entries))
            for f in files
            for start in range(0, f.entries, config.data.step_size)
        ]
        samples.append(Sample(sample_config, tree, files, partitions, columns))
    for note in notes:
        log.info(note)
    return Dataset(samples, branches or [], config.data.sentinel, notes)


def expand_files(patterns: Iterable[str], *, where: str) -> list[str]:
    """Paths from a mix of file names, globs and ``.txt`` lists of paths (``#`` comments allowed)."""
    paths: list[str] = []
    for pattern in patterns:
        if pattern.endswith(".txt"):
            listing = Path(pattern)
            if not listing.is_file():
                raise HepdaskError(f"Config key {where} names the file list {pattern}, which does not exist.")
            lines = (line.split("#", 1)[0].strip() for line in listing.read_text().splitlines())
            paths += expand_files([line for line in lines if line], where=f"{where} ({pattern})")
        elif glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise HepdaskError(
                    f"Config key {where}: the pattern {pattern!r} matches no file (relative "
                    f"paths are taken from the current directory, {os.getcwd()})."
                )
            paths += matches
        elif not os.path.isfile(pattern):
            raise HepdaskError(
                f"Config key {where} names {pattern}, which does not exist (relative paths are "
                f"taken from the current directory, {os.getcwd()}). Check the path, or prepare "
                "the data first."
            )
        else:
            paths.append(pattern)
    return paths


@contextlib.contextmanager
def _open_tree(path: str, tree: str, sample: str) -> Iterator[uproot.TTree]:
    try:
        file = uproot.open(path)
    except Exception as err:
        raise HepdaskError(
            f"Could not read {path} (sample {sample!r}) as a ROOT file: {err}. Check that the "
            "file is complete and really ROOT, or remove it from the sample."
        ) from None
    try:
        obj = file[tree]
    except Exception:
        trees = [k.split(";")[0] for k, c in file.classnames().items() if c in ("TTree", "TNtuple")]
        file.close()
        raise HepdaskError(
            f"The file {path} (sample {sample!r}) has no tree {tree!r}; its trees are "
            f"{trees or 'none'}. Set the tree name with the sample's 'tree' key or [data] tree."
        ) from None
    try:
        if not isinstance(obj, uproot.TTree):
            raise HepdaskError(
                f"{tree!r} in {path} is a {type(obj).__name__}, not a TTree: set the sample's "
                "'tree' key to the name of a TTree."
            )
        yield obj
    finally:
        file.close()


def _select_branches(ttree, patterns: Sequence[str], exclude: Sequence[str], path: str):
    """Branches matching ``patterns`` minus ``exclude``, in tree order; non-numeric ones are noted."""
    names = list(ttree.keys(recursive=False))
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise HepdaskError(_missing_branch(pattern, names, path, "features.branches"))
    explicit = {p for p in patterns if not glob.has_magic(p)}
    selected, notes = [], []
    for name in names:
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        branch = _describe(ttree[name])
        if branch is None:
            typename = ttree[name].typename
            if name in explicit:
                raise HepdaskError(
                    f"The branch {name!r} in {path} holds {typename}, which is not numeric and "
                    "cannot be a feature: remove it from features.branches."
                )
            notes.append(f"Skipping branch {name!r} ({typename}): not numeric.")
            continue
        selected.append(branch)
    if not selected:
        raise HepdaskError(
            f"features.branches {list(patterns)} minus features.exclude {list(exclude)} leaves "
            f"no numeric branch in {path}."
        )
    return selected, notes


def _describe(tbranch) -> Branch | None:
    interp = tbranch.interpretation
    if isinstance(interp, uproot.AsDtype) and interp.to_dtype.kind in "biuf" and not interp.to_dtype.shape:
        return Branch(tbranch.name, interp.to_dtype.name, False, tbranch.name)
    if isinstance(interp, uproot.AsJagged) and isinstance(interp.content, uproot.AsDtype):
        dtype = interp.content.to_dtype
        if dtype.kind in "biuf" and not dtype.shape:
            counter = tbranch.count_branch
            return Branch(tbranch.name, dtype.name, True, counter.name if counter is not None else tbranch.name)
    return None


def _check_branches(ttree, wanted: Sequence[str], path: str, key: str) -> None:
    names = set(ttree.keys(recursive=False))
    for name in wanted:
        if name not in names:
            raise HepdaskError(_missing_branch(name, sorted(names), path, key))


def _missing_branch(name: str, available: Sequence[str], path: str, key: str) -> str:
    close = difflib.get_close_matches(name, available, n=3)
    hint = f" Closest: {', '.join(close)}." if close else ""
    shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
    return (
        f"The branch {name!r} (config key {key}) is not in {path}.{hint} Available branches: "
        f"{shown}."
    )
