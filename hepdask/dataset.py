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
import sys
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask
import fsspec
import numpy as np
import uproot
from uproot.deserialization import DeserializationError

from .config import Config, DataConfig, SampleConfig, SplitConfig
from .errors import HepdaskError
from .preprocess import Branch, Preprocess, build_preprocess, describe_tree, missing_branch

__all__ = ["Branch", "Dataset", "FileInfo", "Partition", "ReadError", "Sample", "expand_files",
           "is_url", "open_dataset", "open_tree", "read_again", "read_lazily", "read_list", "split_codes",
           "unreadable"]

log = logging.getLogger("hepdask")

#: What a damaged, truncated or unreachable file raises while its baskets are read.
READ_ERRORS = (OSError, ValueError, zlib.error, DeserializationError)


@dataclass(frozen=True)
class FileInfo:
    path: str
    entries: int  # entries used (all of them unless data.max_events limits them)
    size: int
    mtime: float
    tag: str = ""  # a remote file's ETag or checksum, when its server gives one


@dataclass(frozen=True)
class ReadError:
    """A file, or an entry range of one, that could not be read (``data.on_read_error``)."""

    sample: str
    file: str
    error: str
    start: int | None = None  # the entry range; None when the file could not be opened
    stop: int | None = None
    partition: int | None = None  # its index in the sample's partitions

    @property
    def events(self) -> int | None:
        """Entries lost (None when the file could not be opened, so its size is unknown)."""
        return None if self.start is None else self.stop - self.start

    def describe(self) -> str:
        where = self.file if self.start is None else f"{self.file} entries {self.start}-{self.stop}"
        lost = "events unknown" if self.events is None else f"{self.events} events"
        return f"{where} (sample {self.sample!r}, {lost}): {self.error}"

    def to_dict(self) -> dict:
        return {"sample": self.sample, "file": self.file, "start": self.start, "stop": self.stop,
                "events": self.events, "error": self.error}


class UnreadableFile(HepdaskError):
    """A file that is not ROOT, cannot be reached, or lacks the tree."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


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

    A SplitMix64 hash of the entry number, keyed by (seed, sample, file name),
    mapped to [0, 1): the same event always lands in the same split, whatever
    the partitioning, whatever the event selection keeps around it, and wherever
    the file is read from (a local copy, XRootD or HTTP).
    """
    name = partition.file.rstrip("/").rsplit("/", 1)[-1]
    digest = hashlib.blake2b(
        f"{config.seed}\0{partition.sample}\0{name}".encode(), digest_size=8
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
    data: DataConfig = field(default_factory=DataConfig)  # timeout, retries, on_read_error

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def n_events(self) -> int:
        return sum(f.entries for f in self.files)

    def events(self):
        """The raw branches as a lazy :mod:`dask_awkward` array, one partition per :class:`Partition`
        (see :func:`read_lazily`)."""
        return read_lazily(self.partitions, self.tree, self.columns, self.data)

    def partitions_delayed(self) -> list:
        """One delayed :class:`~hepdask.preprocess.Events` per :class:`Partition`, in order."""
        prep = dask.delayed(self.preprocess, pure=True)
        return [dask.delayed(_apply, pure=True)(prep, raw, part, self.tree, self.columns,
                                                 self.data)
                for raw, part in zip(self.events().to_delayed(), self.partitions, strict=True)]


def read_lazily(partitions: Sequence[Partition], tree: str, columns: Sequence[str],
                data: DataConfig):
    """The ``columns`` of ``partitions`` as a lazy :mod:`dask_awkward` array, one partition each.

    A partition whose read raises one of :data:`READ_ERRORS` comes out empty (uproot's
    ``allow_read_errors_with_report``); :func:`read_again` tells it from a real one by its
    length. uproot's report collection is not used: it is a single partition that depends on
    every read, so computing it would hold all the data at once.
    """
    steps: dict[str, dict] = {}
    for part in partitions:
        steps.setdefault(part.file, {"object_path": tree, "steps": []})["steps"].append(
            [part.start, part.stop]
        )
    events, _ = uproot.dask(steps, filter_name=list(columns), open_files=False,
                            allow_read_errors_with_report=READ_ERRORS, timeout=data.timeout)
    return events


def read_again(raw, partition: Partition, tree: str, columns: Sequence[str], data: DataConfig):
    """On a worker: ``raw`` as read by :func:`read_lazily`, or, when that read failed (an empty
    partition), read again ``data.retries`` times (at least once, which also tells why it
    failed). Returns (events, None) or (the empty partition, the error on one line)."""
    if len(raw) == partition.size:
        return raw, None
    error = None
    for attempt in range(max(1, data.retries)):
        time.sleep(min(2.0**attempt, 10.0))
        try:
            with uproot.open(partition.file, timeout=data.timeout) as file:
                return file[tree].arrays(filter_name=list(columns), entry_start=partition.start,
                                         entry_stop=partition.stop), None
        except READ_ERRORS as err:
            error = f"{type(err).__name__}: {_one_line(err)}"
    return raw, error


def unreadable(partition: Partition, error: str, data: DataConfig, what_to_do: str) -> HepdaskError:
    """The error for a partition that :func:`read_again` could not read."""
    lost = ReadError(partition.sample, partition.file, error, partition.start, partition.stop)
    return HepdaskError(
        f"Could not read {lost.describe()}, after {max(1, data.retries) + 1} tries. Check the "
        f"file (is it complete? is its server up?), {what_to_do}"
    )


def _apply(prep: Preprocess, raw, partition: Partition, tree: str, columns: list[str],
           data: DataConfig):
    """On a worker: preprocess one partition. A partition that cannot be read fails the run
    or, with ``data.on_read_error = "skip"``, stays empty and says why."""
    raw, error = read_again(raw, partition, tree, columns, data)
    if error is not None and data.on_read_error == "fail":
        raise unreadable(partition, error, data,
                         'remove it from the sample, or set data.on_read_error = "skip" to train '
                         "without the entries that cannot be read.")
    events = prep.apply(raw, partition.sample, partition.start)
    if error is not None:
        events.error, events.read = error, 0
    return events


@dataclass
class Dataset:
    """All samples of a run and the feature branches they share."""

    samples: list[Sample]
    preprocess: Preprocess
    sentinel: float | None
    split: SplitConfig
    skipped: list[ReadError] = field(default_factory=list)  # files that could not be opened

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
                    "files": [[f.path, f.size, f.mtime, f.tag, f.entries] for f in s.files],
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
    data = config.data
    skipped: list[ReadError] = []
    found: list[tuple[SampleConfig, str, list[tuple[str, int]], list[str]]] = []
    for sample_config in config.samples:
        tree = sample_config.tree or data.tree
        paths = expand_files(sample_config.files, where=f"samples.{sample_config.name}.files",
                             redirector=data.redirector)
        files, columns, empty = [], None, []
        for path in paths:
            try:
                with open_tree(path, tree, timeout=data.timeout,
                               context=f"sample {sample_config.name!r}") as ttree:
                    if prep is None:
                        prep = build_preprocess(config, *describe_tree(ttree), source=path)
                    columns = columns or prep.columns(sample_config.name)
                    _check_branches(ttree, columns, path, f"samples.{sample_config.name}")
                    if ttree.num_entries:
                        files.append((path, ttree.num_entries))
                    else:  # nothing to read: uproot.dask cannot make a partition of it
                        empty.append(path)
                        log.info("Skipping %s (sample %r): its tree %r has no entries.", path,
                                 sample_config.name, tree)
            except UnreadableFile as err:
                if data.on_read_error == "fail":
                    raise
                skipped.append(ReadError(sample_config.name, path, err.reason))
                log.warning("Skipping %s", skipped[-1].describe())
        if not files:
            raise HepdaskError(_no_events(sample_config.name, tree, empty, len(paths) - len(empty)))
        found.append((sample_config, tree, files, columns))
    assert prep is not None  # every sample has at least one file
    limits = _entry_limits([n for _, _, files, _ in found for _, n in files], data.max_events)
    samples = []
    for sample_config, tree, files, columns in found:
        infos = [_file_info(path, next(limits), data.timeout) for path, _ in files]
        partitions = [
            Partition(sample_config.name, f.path, start, min(start + data.step_size, f.entries))
            for f in infos
            for start in range(0, f.entries, data.step_size)
        ]
        samples.append(Sample(sample_config, tree, infos, partitions, columns, prep, data))
    for note in prep.notes:
        log.info(note)
    return Dataset(samples, prep, data.sentinel, config.split, skipped)


def _no_events(sample: str, tree: str, empty: Sequence[str], unreadable: int) -> str:
    """Why a sample has no events: every file is empty (named) or could not be read."""
    if not empty:
        return (f"No file of sample {sample!r} can be read ({unreadable} skipped, "
                'data.on_read_error = "skip"): see the messages above.')
    shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
    which = f"its file {shown} has" if len(empty) == 1 else f"its {len(empty)} files {shown} have"
    others = f" (its other {unreadable} could not be read, see above)" if unreadable else ""
    return (f"Sample {sample!r} has no events: {which} a tree {tree!r} with no entries{others}. "
            "A sample without events cannot train: add files with events to its 'files', or "
            "remove the sample.")


def _entry_limits(entries: list[int], max_events: int | None) -> Iterator[int]:
    """Entries used per file: all, or ``max_events`` shared in proportion (at least 1 per file)."""
    total = sum(entries)
    for n in entries:
        if max_events is None or max_events >= total:
            yield n
        else:
            yield min(n, max(1, round(n * max_events / total)))


def _file_info(path: str, entries: int, timeout: int) -> FileInfo:
    """Size, modification time and (remote) ETag or checksum: what tells a changed file."""
    if not is_url(path):
        stat = os.stat(path)
        return FileInfo(path, entries, stat.st_size, stat.st_mtime)
    fs, remote = fsspec.core.url_to_fs(path, timeout=timeout)
    try:
        info = fs.info(remote)
    except (OSError, ValueError):
        info = {}  # a server that cannot say: the specs are keyed by the URL and entries only
    tag = next((str(info[k]) for k in ("checksum", "ETag", "etag", "Last-Modified") if info.get(k)),
               "")
    return FileInfo(path, entries, int(info.get("size") or -1), float(info.get("mtime") or 0.0),
                    tag)


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL (``root://``, ``https://``, ...) rather than a local path."""
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
        if is_url(pattern):
            paths += _remote_glob(pattern, where) if glob.has_magic(pattern) else [pattern]
        elif pattern.endswith(".txt"):
            paths += expand_files(read_list(pattern, where), where=f"{where} ({pattern})",
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


def read_list(path: str, where: str) -> list[str]:
    """The entries of a ``.txt`` list of files, one per line (``#`` comments and blank lines
    dropped), as written: relative entries are relative to the current directory."""
    listing = Path(path)
    if not listing.is_file():
        raise HepdaskError(f"Config key {where} names the file list {path}, which does not exist.")
    lines = (line.split("#", 1)[0].strip() for line in listing.read_text().splitlines())
    return [line for line in lines if line]


def _one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (uproot's span several), cut to ``limit``."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _remote_glob(pattern: str, where: str) -> list[str]:
    """The URLs matching a pattern on a server that lists directories (XRootD does)."""
    fs, path = _remote_fs(pattern, where)
    try:
        matches = sorted(fs.glob(path))
    except (OSError, ValueError, NotImplementedError) as err:
        matches, reason = [], f" ({err})"
    else:
        reason = ""
    if not matches:
        raise HepdaskError(
            f"Config key {where}: the pattern {pattern!r} matches no file{reason}. Check the "
            "path; an HTTP server that does not list its directories needs the files named one "
            "by one."
        )
    return [fs.unstrip_protocol(m) for m in matches]


def _remote_fs(url: str, where: str):
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError:
        raise HepdaskError(_missing_protocol(url, where)) from None


def _missing_protocol(url: str, where: str) -> str:
    if url.startswith("root://"):
        return (f"{where} names {url}: reading XRootD (root://) needs fsspec-xrootd and the "
                "xrootd bindings: pip install 'hepdask[xrootd]'.")
    if url.startswith(("http://", "https://")):
        return (f"{where} names {url}: reading HTTP needs aiohttp: pip install 'hepdask[http]'.")
    return (f"{where} names {url}, whose protocol fsspec cannot read here; install the fsspec "
            "package for it.")


@contextlib.contextmanager
def open_tree(path: str, tree: str, *, timeout: int = 60, context: str = "",
              remedy: str = 'remove it from the sample, or set data.on_read_error = "skip"',
              tree_key: str = "the sample's 'tree' key or [data] tree") -> Iterator[uproot.TTree]:
    """Open ``tree`` (a TTree or an RNTuple) of the file ``path`` (local or remote) with
    one-paragraph errors.

    ``context`` says where the file comes from (e.g. "sample 'signal'"), ``remedy`` what to do
    with a file that cannot be read, and ``tree_key`` where the tree name is set.
    """
    where = f"{path} ({context})" if context else path
    if (path.startswith("root://") and "tensorflow" in sys.modules
            and "XRootD.client" not in sys.modules):
        raise HepdaskError(
            f"Reading {where} would load the XRootD bindings after TensorFlow, which crashes "
            "this process. Import hepdask before TensorFlow (or keras), e.g. as the first "
            "import of the notebook or script."
        )
    try:
        file = uproot.open(path, timeout=timeout)
    except ImportError:
        raise HepdaskError(_missing_protocol(path, context[:1].upper() + context[1:] or "The input")) from None
    except Exception as err:
        cause = _one_line(err) or type(err).__name__
        raise UnreadableFile(
            f"Could not read {where} as a ROOT file: {cause}. Check that the file is complete, "
            f"really ROOT and reachable, or {remedy}.", reason=f"not readable as ROOT: {cause}"
        ) from None
    try:
        obj = file[tree]
    except Exception:
        trees = [k.split(";")[0] for k, c in file.classnames().items()
                 if c in ("TTree", "TNtuple", "ROOT::RNTuple")]
        file.close()
        raise UnreadableFile(
            f"The file {where} has no tree {tree!r}; its trees are {trees or 'none'}. Set the "
            f"tree name with {tree_key}.",
            reason=f"no tree {tree!r} (its trees: {trees or 'none'})",
        ) from None
    try:
        if not isinstance(obj, uproot.TTree | uproot.behaviors.RNTuple.RNTuple):
            raise HepdaskError(
                f"{tree!r} in {path} is a {type(obj).__name__}, not a TTree or RNTuple: set "
                f"{tree_key} to the name of a TTree or RNTuple."
            )
        yield obj
    finally:
        file.close()


def _check_branches(ttree, wanted: Sequence[str], path: str, key: str) -> None:
    names = set(ttree.keys(recursive=True, full_paths=True))
    for name in wanted:
        if name not in names:
            raise HepdaskError(missing_branch(name, sorted(names), path, key))
