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
import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import uproot

from .config import Config, SampleConfig, SplitConfig
from .errors import HepdaskError
from .preprocess import Branch, Preprocess, build_preprocess, describe_tree, missing_branch

__all__ = ["Branch", "Dataset", "FileInfo", "Partition", "Sample", "expand_files", "open_dataset",
           "split_codes"]

log = logging.getLogger("hepdask")


@dataclass(frozen=True)
class FileInfo:
    path: str
    entries: int  # entries used (all of them unless data.max_events limits them)
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


def split_codes(partition: Partition, config: SplitConfig, *,
                entries: np.ndarray | None = None) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) for each entry of ``partition`` (or ``entries``).

    A SplitMix64 hash of the entry number, keyed by (seed, sample, file),
    mapped to [0, 1): the same event always lands in the same split, whatever
    the partitioning and whatever the event selection keeps around it.
    """
    digest = hashlib.blake2b(
        f"{config.seed}\0{partition.sample}\0{partition.file}".encode(), digest_size=8
    ).digest()
    key = np.uint64(int.from_bytes(digest, "little"))
    if entries is None:
        entries = np.arange(partition.start, partition.stop)
    entries = np.asarray(entries).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = key + (entries + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    uniform = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.searchsorted([config.train, config.train + config.validation], uniform, side="right")


@dataclass
class Sample:
    config: SampleConfig
    tree: str
    files: list[FileInfo]
    partitions: list[Partition]
    columns: list[str]  # the tree branches read: only those the run needs
    preprocess: Preprocess

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def n_events(self) -> int:
        return sum(f.entries for f in self.files)

    def events(self):
        """The raw branches as a lazy :mod:`dask_awkward` array, one partition per :class:`Partition`."""
        steps: dict[str, dict] = {}
        for part in self.partitions:
            steps.setdefault(part.file, {"object_path": self.tree, "steps": []})["steps"].append(
                [part.start, part.stop]
            )
        return uproot.dask(steps, filter_name=self.columns, open_files=False)

    def partitions_delayed(self) -> list:
        """One delayed :class:`~hepdask.preprocess.Events` per :class:`Partition`, in order."""
        prep = dask.delayed(self.preprocess, pure=True)
        return [dask.delayed(_apply, pure=True)(prep, raw, self.name, part.start)
                for raw, part in zip(self.events().to_delayed(), self.partitions, strict=True)]


def _apply(prep: Preprocess, raw, sample: str, start: int):
    return prep.apply(raw, sample, start)


@dataclass
class Dataset:
    """All samples of a run and the feature branches they share."""

    samples: list[Sample]
    preprocess: Preprocess
    sentinel: float | None
    split: SplitConfig

    @property
    def notes(self) -> list[str]:
        """What was noticed while choosing the features (skipped branches, replaced counters)."""
        return list(self.preprocess.notes)

    @property
    def branches(self) -> list[Branch]:
        """The feature branches (tree and derived), in feature order."""
        return self.preprocess.feature_branches

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
        """A hash of everything the specs depend on: files (size, mtime, entries used), trees,
        the per-event recipe (features, derived branches, selections, labels, weights), the
        sentinel and the split."""
        payload = {
            "samples": [
                {
                    "name": s.name,
                    "tree": s.tree,
                    "files": [[f.path, f.size, f.mtime, f.entries] for f in s.files],
                    "steps": [[p.start, p.stop] for p in s.partitions],
                }
                for s in self.samples
            ],
            "preprocess": self.preprocess.describe(),
            "sentinel": self.sentinel,
            "split": [self.split.train, self.split.validation, self.split.test, self.split.seed],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def open_dataset(config: Config) -> Dataset:
    """Resolve the files of every sample, check their branches and fix the per-event recipe.

    The recipe (features, derived branches, selections) is built from the first file's
    branches; every other file must have the branches its sample needs.
    """
    prep: Preprocess | None = None
    found: list[tuple[SampleConfig, str, list[tuple[str, int]], list[str]]] = []
    for sample_config in config.samples:
        tree = sample_config.tree or config.data.tree
        paths = expand_files(sample_config.files, where=f"samples.{sample_config.name}.files",
                             redirector=config.data.redirector)
        files, columns = [], None
        for path in paths:
            with _open_tree(path, tree, sample_config.name) as ttree:
                if prep is None:
                    prep = build_preprocess(config, *describe_tree(ttree), source=path)
                columns = columns or prep.columns(sample_config.name)
                _check_branches(ttree, columns, path, f"samples.{sample_config.name}")
                files.append((path, ttree.num_entries))
        found.append((sample_config, tree, files, columns))
    assert prep is not None  # every sample has at least one file
    limits = _entry_limits([n for _, _, files, _ in found for _, n in files], config.data.max_events)
    samples = []
    for sample_config, tree, files, columns in found:
        infos = [_file_info(path, next(limits)) for path, _ in files]
        partitions = [
            Partition(sample_config.name, f.path, start, min(start + config.data.step_size, f.entries))
            for f in infos
            for start in range(0, f.entries, config.data.step_size)
        ]
        samples.append(Sample(sample_config, tree, infos, partitions, columns, prep))
    for note in prep.notes:
        log.info(note)
    return Dataset(samples, prep, config.data.sentinel, config.split)


def _entry_limits(entries: list[int], max_events: int | None) -> Iterator[int]:
    """Entries used per file: all, or ``max_events`` shared in proportion (at least 1 per file)."""
    total = sum(entries)
    for n in entries:
        if max_events is None or max_events >= total:
            yield n
        else:
            yield min(n, max(1, round(n * max_events / total)))


def _file_info(path: str, entries: int) -> FileInfo:
    if _is_url(path):
        return FileInfo(path, entries, -1, 0.0)
    stat = os.stat(path)
    return FileInfo(path, entries, stat.st_size, stat.st_mtime)


def _is_url(path: str) -> bool:
    return "://" in path


def expand_files(patterns: Iterable[str], *, where: str, redirector: str | None = None) -> list[str]:
    """Paths from a mix of file names, globs and ``.txt`` lists of paths (``#`` comments allowed).

    With a ``redirector``, logical file names (``/store/...``) that are not local files become
    ``<redirector>//store/...`` URLs; URLs are passed on as they are. Local paths are made
    absolute: workers started elsewhere (by a gateway, a batch system) have other working
    directories, and read the files by the same path on a shared file system.
    """
    paths: list[str] = []
    for pattern in patterns:
        if redirector and pattern.startswith("/store/") and not os.path.exists(pattern):
            pattern = f"{redirector.rstrip('/')}/{pattern}"
        if _is_url(pattern):
            paths.append(pattern)
        elif pattern.endswith(".txt"):
            listing = Path(pattern)
            if not listing.is_file():
                raise HepdaskError(f"Config key {where} names the file list {pattern}, which does not exist.")
            lines = (line.split("#", 1)[0].strip() for line in listing.read_text().splitlines())
            paths += expand_files([line for line in lines if line], where=f"{where} ({pattern})",
                                  redirector=redirector)
        elif glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise HepdaskError(
                    f"Config key {where}: the pattern {pattern!r} matches no file (relative "
                    f"paths are taken from the current directory, {os.getcwd()})."
                )
            paths += map(os.path.abspath, matches)
        elif not os.path.isfile(pattern):
            raise HepdaskError(
                f"Config key {where} names {pattern}, which does not exist (relative paths are "
                f"taken from the current directory, {os.getcwd()}). Check the path, or prepare "
                "the data first."
            )
        else:
            paths.append(os.path.abspath(pattern))
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


def _check_branches(ttree, wanted: Sequence[str], path: str, key: str) -> None:
    names = set(ttree.keys(recursive=False))
    for name in wanted:
        if name not in names:
            raise HepdaskError(missing_branch(name, sorted(names), path, key))
