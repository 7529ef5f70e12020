"""Scores of a trained model for every event of new ROOT files, computed on the cluster.

For each input file, one output file: a ROOT file holding a friend tree (one entry per entry
of the input tree, in the same order) or a parquet file with the same rows. The columns are
``score`` (the signal probability; ``score_<class>`` per class for more than two classes),
``selected`` when the model was trained on an event selection (whether the event passes it;
every event gets a score), and any passthrough branches copied from the input.

The workers read and score the partitions (entry ranges); this process writes them in order,
a few partitions ahead of the writing at most, so nothing is ever held whole. Each output
appears complete or not at all. :func:`score_files` returns the same columns as arrays instead,
for files whose scores fit in memory (the HiggsML leaderboard sets).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import awkward as ak
import dask
import numpy as np
import uproot

from .bundle import Bundle
from .config import PREDICT_FORMATS, DataConfig
from .dataset import Partition, expand_files, is_url, open_tree, read_again, read_lazily, unreadable
from .errors import HepdaskError
from .outputs import atomic_path
from .progress import iterate
from .stream import in_order

__all__ = ["FORMATS", "Predicted", "predict", "score_files"]

log = logging.getLogger("hepdask")

FORMATS = PREDICT_FORMATS


@dataclass(frozen=True)
class Predicted:
    """One input file and the output written for it."""

    input: str
    output: Path
    entries: int


def predict(bundle: Bundle, files: Sequence[str], output: str | Path, *, client,
            tree: str | None = None, friend_tree: str | None = None, format: str = "root",
            branch: str = "score", passthrough: Sequence[str] = (), step_size: int | None = None,
            data: DataConfig | None = None, window: int | None = None) -> list[Predicted]:
    """Score every event of ``files`` with ``bundle`` and write one output per file in ``output``.

    Parameters
    ----------
    bundle
        The trained model (:meth:`Bundle.load`).
    files
        ROOT files, globs, ``.txt`` lists, ``root://`` or ``http(s)://`` URLs.
    output
        The directory of the outputs, named like the inputs (with their relative paths when
        two inputs share a name).
    client
        The :class:`distributed.Client` whose workers read and score.
    tree
        The input tree; the training's by default.
    friend_tree
        The name of the output tree (``root``); the model's name by default.
    format
        ``"root"`` (a friend tree) or ``"parquet"``.
    branch
        The name of the score column.
    passthrough
        Input branches copied to the output.
    step_size
        Entries per partition; the training's by default.
    data
        Timeout, retries and redirector for remote files.
    window
        Partitions computed ahead of the writing; two per worker thread by default.
    """
    if format not in FORMATS:
        raise HepdaskError(f"The output format {format!r} is not known: choose one of "
                           f"{', '.join(FORMATS)}.")
    data = data or DataConfig()
    tree = tree or bundle.tree
    names = _output_columns(bundle, branch, passthrough)
    inputs = _plan(bundle, files, Path(output), tree=tree, passthrough=passthrough, data=data,
                   suffix=".root" if format == "root" else ".parquet")
    results = _scored(bundle, [(item.input, item.entries) for item in inputs], client=client,
                      tree=tree, branch=branch, passthrough=passthrough, data=data,
                      step_size=step_size, window=window)
    for item in inputs:
        output = _root_output if format == "root" else _parquet_output
        with output(item.output, friend_tree or bundle.name) as write:
            if item.entries == 0:  # no partition: the (empty) columns, with their types
                write(_empty(bundle, item.input, tree, data, branch, passthrough))
            written = 0
            while written < item.entries:
                chunk = next(results)
                write(chunk)
                written += len(chunk[names[0]])
        log.debug("Wrote %s (%d entries)", item.output, item.entries)
    for _ in results:  # none is left; this ends the count on the progress bar
        raise AssertionError("a partition was not written")
    return inputs


def score_files(bundle: Bundle, files: Sequence[str], *, client, tree: str | None = None,
                passthrough: Sequence[str] = (), step_size: int | None = None,
                data: DataConfig | None = None, window: int | None = None
                ) -> dict[str, np.ndarray]:
    """The columns :func:`predict` writes (``score``, ``selected``, the ``passthrough``
    branches) for every event of ``files``, in order, as arrays in this process.

    The workers score exactly as for :func:`predict` (the same partitions and tasks); only the
    writing differs. For files whose scores fit in memory: a leaderboard set, a test sample.
    """
    data = data or DataConfig()
    tree = tree or bundle.tree
    _output_columns(bundle, "score", passthrough)
    inputs = _open_inputs(bundle, files, tree=tree, passthrough=passthrough, data=data)
    chunks = list(_scored(bundle, inputs, client=client, tree=tree, branch="score",
                          passthrough=passthrough, data=data, step_size=step_size,
                          window=window))
    if not chunks:  # no events at all: the (empty) columns, with their types
        chunks = [_empty(bundle, inputs[0][0], tree, data, "score", passthrough)]
    return {name: np.concatenate([c[name] for c in chunks])
            if all(isinstance(c[name], np.ndarray) for c in chunks)
            else ak.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def _scored(bundle: Bundle, inputs: Sequence[tuple[str, int]], *, client, tree: str, branch: str,
            passthrough: Sequence[str], data: DataConfig, step_size: int | None,
            window: int | None) -> Iterator[dict]:
    """The output columns of every partition of ``inputs`` ((path, entries) pairs), in order,
    computed on the workers ``window`` partitions ahead (two per worker thread by default)."""
    step_size = step_size or bundle.step_size
    columns = _columns_read(bundle, passthrough)
    partitions = [Partition("input", path, start, min(start + step_size, entries))
                  for path, entries in inputs for start in range(0, entries, step_size)]
    tasks = []
    if partitions:
        shared = client.scatter(bundle, broadcast=True, hash=False)
        raws = read_lazily(partitions, tree, columns, data).to_delayed()
        tasks = [dask.delayed(_score_partition, pure=True)(shared, raw, part, tree, columns, data,
                                                            branch, tuple(passthrough))
                 for raw, part in zip(raws, partitions, strict=True)]
    if window is None:
        window = 2 * max(1, sum(client.nthreads().values()))
    return iterate(in_order(client, tasks, window=window), len(tasks), unit="partitions")


def _columns_read(bundle: Bundle, passthrough: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*bundle.inputs, *passthrough]))


def _output_columns(bundle: Bundle, branch: str, passthrough: Sequence[str]) -> list[str]:
    scores = [branch] if bundle.n_classes == 2 else [f"{branch}_{c}" for c in bundle.classes]
    names = [*scores, *bundle.outputs]
    clash = sorted(set(names) & set(passthrough))
    if clash:
        raise HepdaskError(
            f"The passthrough branches {clash} have the names of output columns ({names}): "
            "name the score column otherwise (--branch) or leave them out."
        )
    return names


def _plan(bundle: Bundle, files: Sequence[str], output: Path, *, tree: str,
          passthrough: Sequence[str], data: DataConfig, suffix: str) -> list[Predicted]:
    """Every input checked (see :func:`_open_inputs`) and its output path, before any work is
    done."""
    inputs = _open_inputs(bundle, files, tree=tree, passthrough=passthrough, data=data)
    paths = [path for path, _ in inputs]
    planned = []
    for (path, entries), out in zip(inputs, _output_paths(paths, output, suffix), strict=True):
        if not is_url(path) and out.resolve() == Path(path).resolve():
            raise HepdaskError(
                f"The output for {path} would be the file itself: give another --output "
                "directory than the inputs'."
            )
        planned.append(Predicted(path, out, entries))
    return planned


def _open_inputs(bundle: Bundle, files: Sequence[str], *, tree: str, passthrough: Sequence[str],
                 data: DataConfig) -> list[tuple[str, int]]:
    """(path, entries) of every input, each checked readable, with the tree, the model's
    input branches and the passthrough branches."""
    paths = list(dict.fromkeys(expand_files(files, where="the input files",
                                            redirector=data.redirector)))
    if not paths:
        raise HepdaskError("No input file given: name the ROOT files to score.")
    inputs = []
    for path in paths:
        with open_tree(path, tree, timeout=data.timeout, context="an input file",
                       remedy="leave it out of the inputs",
                       tree_key="--tree (predict's option)") as ttree:
            bundle.check_tree(ttree, path)
            have = set(ttree.keys(recursive=False))
            for name in passthrough:
                if name not in have:
                    raise HepdaskError(
                        f"The passthrough branch {name!r} is not in {path}. Name branches of "
                        "the input tree, or leave --passthrough out."
                    )
            inputs.append((path, ttree.num_entries))
    return inputs


def _output_paths(paths: Sequence[str], output: Path, suffix: str) -> list[Path]:
    """The inputs' names in ``output``, or their paths below their common directory when two
    have the same name."""
    parts = [PurePosixPath(urlparse(p).path if is_url(p) else Path(p).as_posix()) for p in paths]
    if len({p.name for p in parts}) == len(parts):
        relative = [PurePosixPath(p.name) for p in parts]
    else:
        common = os.path.commonpath([str(p.parent) for p in parts])
        relative = [p.relative_to(common) for p in parts]
    return [output / r.with_suffix(suffix) for r in relative]


def _score_partition(bundle: Bundle, raw, partition: Partition, tree: str, columns: list[str],
                     data: DataConfig, branch: str, passthrough: tuple[str, ...]) -> dict:
    """On a worker: the output columns of one partition."""
    raw, error = read_again(raw, partition, tree, columns, data)
    if error is not None:
        raise unreadable(partition, error, data,
                         "or leave it out of the inputs: a friend tree needs every entry.")
    return _columns(bundle, raw, branch, passthrough)


def _columns(bundle: Bundle, events: ak.Array, branch: str,
             passthrough: Sequence[str]) -> dict:
    scored = bundle.score(events)
    scores = scored.pop("score")
    out = {branch: scores} if scores.ndim == 1 else \
        {f"{branch}_{c}": scores[:, i] for i, c in enumerate(bundle.classes)}
    out.update(scored)
    for name in passthrough:
        value = events[name]
        out[name] = ak.to_numpy(value) if value.ndim == 1 else value
    return out


def _empty(bundle: Bundle, path: str, tree: str, data: DataConfig, branch: str,
           passthrough: Sequence[str]) -> dict:
    with uproot.open(path, timeout=data.timeout) as file:
        events = file[tree].arrays(filter_name=_columns_read(bundle, passthrough), entry_stop=0)
    return _columns(bundle, events, branch, passthrough)


@contextlib.contextmanager
def _root_output(path: Path, tree: str) -> Iterator[Callable[[dict], None]]:
    """``write(columns)`` appending to a friend tree; the file appears when complete."""
    with atomic_path(path) as tmp, uproot.recreate(tmp) as file:
        ttree = None

        def write(columns: dict) -> None:
            nonlocal ttree
            if ttree is None:
                ttree = file.mktree(tree, {k: _root_type(v) for k, v in columns.items()})
            if len(next(iter(columns.values()))):
                ttree.extend(columns)

        yield write


@contextlib.contextmanager
def _parquet_output(path: Path, tree: str) -> Iterator[Callable[[dict], None]]:
    """``write(columns)`` adding a row group to a parquet file; it appears when complete."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        writer = None

        def write(columns: dict) -> None:
            nonlocal writer
            table = ak.to_arrow_table(ak.zip({k: ak.Array(v) if isinstance(v, np.ndarray) else v
                                              for k, v in columns.items()}, depth_limit=1),
                                      extensionarray=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)

        try:
            yield write
        finally:
            if writer is not None:
                writer.close()


def _root_type(value):
    return value.dtype if isinstance(value, np.ndarray) else value.type.content

