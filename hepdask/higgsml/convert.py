"""The HiggsML CSV read into NumPy columns, and columns written as ROOT TTree files per class."""

from __future__ import annotations

import gzip
import os
import pathlib
import re
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import uproot

from ..errors import HepdaskError
from .schema import COLUMNS, CSV_NAME, CSV_URL, KAGGLE_SETS

__all__ = ["read_csv", "write_root"]

CLASSES = ("signal", "background")  # the file series of the two classes, in this order
# Entries per TTree.extend call, i.e. per basket: about 100 kB of float32, as in ROOT files written
# by analysis frameworks. Much larger baskets make every partition boundary that splits one
# decompress it twice (measured: +40% read time with 100k-entry baskets and 125k-entry steps).
_ROOT_CHUNK = 25_000

# --- CSV ------------------------------------------------------------------------------------


def _is_gzip(path: pathlib.Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _codes(what: str, series: Any, codes: dict[str, int], dtype: type) -> np.ndarray:
    """Map a categorical CSV column onto integer codes, rejecting unknown or missing values."""
    categories = [str(category) for category in series.cat.categories]
    index = series.cat.codes.to_numpy()
    bad = sorted(set(categories) - set(codes))
    if bad or (index < 0).any():
        raise HepdaskError(
            f"{what} has {series.name} value(s) {', '.join(map(repr, bad)) or 'missing'}; only "
            f"{', '.join(codes)} are valid. Use the unmodified official file."
        )
    return np.array([codes[category] for category in categories], dtype=dtype)[index]


def _no_csv(what: str) -> HepdaskError:
    return HepdaskError(
        f"{what} does not exist. Download {CSV_NAME} from CERN Open Data record 328 "
        f"({CSV_URL}) and give its path, or check the spelling."
    )


def read_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read the official HiggsML CSV (plain or gzip-compressed) into the :func:`synthesize` schema.

    ``Label`` becomes 1 (``s``) / 0 (``b``) and ``KaggleSet`` the ASCII code of its letter, so
    that real and synthetic samples are interchangeable downstream; ``-999.0`` values are kept.
    """
    import pandas as pd  # only needed here, and slow to import

    path = pathlib.Path(path)
    what = f"The HiggsML CSV {path}"
    if not path.is_file():
        raise _no_csv(what)
    try:
        gz = _is_gzip(path)
        with (gzip.open if gz else open)(path, "rt", encoding="ascii", newline="") as handle:
            header = handle.readline().strip().split(",")
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise HepdaskError(
            f"{what} cannot be read ({exc}). It must be the official CSV, plain or gzip-compressed; "
            "download it again if it is truncated or corrupt."
        ) from exc
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise HepdaskError(
            f"{what} lacks the column(s) {', '.join(missing)}, so it is not the official "
            "atlas-higgs-challenge-2014-v2 file (the older Kaggle training.csv has no KaggleSet or "
            "KaggleWeight). Use the file from CERN Open Data record 328."
        )
    dtypes: dict[str, Any] = dict.fromkeys(COLUMNS, np.float32)
    dtypes.update(EventId=np.int64, PRI_jet_num=np.int32, Label="category", KaggleSet="category")
    try:
        frame = pd.read_csv(
            path, usecols=list(COLUMNS), dtype=dtypes, compression="gzip" if gz else None
        )
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise HepdaskError(
            f"{what} cannot be parsed ({exc}). Every value must be a number, except Label (s/b) and "
            "KaggleSet (t/b/v/u); download the file again if it is truncated or was edited."
        ) from exc
    columns = {name: frame[name].to_numpy() for name in COLUMNS}
    columns["Label"] = _codes(what, frame["Label"], {"s": 1, "b": 0}, np.int8)
    codes = {key: ord(key) for key in KAGGLE_SETS}
    columns["KaggleSet"] = _codes(what, frame["KaggleSet"], codes, np.uint8)
    return columns


# --- ROOT -----------------------------------------------------------------------------------


def _write_tree(path: pathlib.Path, tree: str, branches: Mapping[str, np.ndarray]) -> None:
    """Write one TTree file under a temporary name and rename it into place once complete."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with uproot.recreate(temporary) as file:
            ttree = file.mktree(tree, {name: values.dtype for name, values in branches.items()})
            size = len(next(iter(branches.values())))
            for start in range(0, size, _ROOT_CHUNK):
                ttree.extend({k: v[start : start + _ROOT_CHUNK] for k, v in branches.items()})
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _check_events_per_file(where: str, events_per_file: object) -> None:
    if (
        isinstance(events_per_file, bool)
        or not isinstance(events_per_file, int)
        or events_per_file < 1
    ):
        raise HepdaskError(
            f"{where}: events_per_file={events_per_file!r} must be a positive integer, for example "
            "250_000."
        )


def write_root(
    columns: Mapping[str, np.ndarray],
    directory: str | os.PathLike[str],
    *,
    events_per_file: int = 250_000,
    tree: str = "events",
) -> dict[str, list[pathlib.Path]]:
    """Write signal and background as separate series of ROOT TTree files.

    The class is the file (``signal_000.root``, ``background_000.root``, ...), so every column but
    ``Label`` becomes a branch. Each file is complete or absent: it is written under a temporary
    name and renamed into place. Files of an earlier, longer series with the same names are
    removed, so that a glob such as ``signal_*.root`` sees only this sample.

    Returns
    -------
    dict
        ``{"signal": [paths...], "background": [paths...]}`` in order; a class without events
        gets an empty list.
    """
    directory = pathlib.Path(directory)
    where = f"write_root to {directory}"
    _check_events_per_file(where, events_per_file)
    if "Label" not in columns:
        raise HepdaskError(
            f"{where}: the columns have no Label (1 signal, 0 background) to split the events by "
            "class; pass the output of read_csv or synthesize."
        )
    label = np.asarray(columns["Label"])
    branches = {name: np.asarray(values) for name, values in columns.items() if name != "Label"}
    bad = [n for n, v in branches.items() if v.ndim != 1 or v.dtype.kind not in "biuf"]
    uneven = [n for n, v in branches.items() if len(v) != len(label)]
    if bad or uneven or label.ndim != 1 or not np.isin(label, (0, 1)).all():
        raise HepdaskError(
            f"{where}: every column must be a 1-D numeric array as long as Label, and Label must "
            f"hold only 0 and 1 (not 1-D numeric: {', '.join(bad) or 'none'}; other length: "
            f"{', '.join(uneven) or 'none'}). Pass the output of read_csv or synthesize."
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written: dict[str, list[pathlib.Path]] = {}
        for name, mask in zip(CLASSES, (label == 1, label == 0), strict=True):
            rows = np.flatnonzero(mask)
            paths = []
            for number, start in enumerate(range(0, rows.size, events_per_file)):
                chosen = rows[start : start + events_per_file]
                paths.append(directory / f"{name}_{number:03d}.root")
                _write_tree(paths[-1], tree, {k: v[chosen] for k, v in branches.items()})
            series = re.compile(rf"{name}_\d{{3,}}\.root")
            for stale in directory.iterdir():
                if series.fullmatch(stale.name) and stale not in paths:
                    stale.unlink()
            written[name] = paths
    except OSError as exc:
        raise HepdaskError(
            f"{where} failed: {exc}. Check that the directory is writable and has free space, or "
            "choose another one."
        ) from exc
    return written
