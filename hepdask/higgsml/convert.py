"""The HiggsML CSV files (the official one and Kaggle's training.csv and test.csv) read into NumPy
columns and written back, and columns written as ROOT TTree file series."""

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
from .schema import COLUMNS, CSV_FORMATS, CSV_NAME, CSV_URL, FORMATS, KAGGLE_SETS

__all__ = ["csv_format", "read_csv", "write_csv", "write_root"]

CLASSES = ("signal", "background")  # the file series of the two classes, in this order
# The official file's leaderboard sets (and the unused one): series by KaggleSet letter, both
# classes in one file, with a Label branch. Its KaggleSet t events are the CLASSES series.
LEADERBOARD = {"public": "b", "private": "v", "unused": "u"}
TEST = "test"  # the series of Kaggle's test.csv: no label
SERIES = (*CLASSES, *LEADERBOARD, TEST)  # every series a prepared directory may hold
NAMES = {
    "official": "the official CERN Open Data file atlas-higgs-challenge-2014-v2",
    "kaggle-training": "Kaggle's training.csv",
    "kaggle-test": "Kaggle's test.csv",
    "synthetic": "hepdask's synthetic generator",
}
"""What each format is, in words, for messages."""
_ACCEPTED = (
    f"hepdask reads the official {CSV_NAME.removesuffix('.gz')}[.gz] (CERN Open Data record 328, "
    f"{CSV_URL}), Kaggle's training.csv (EventId, the 30 features, Weight, Label) or Kaggle's "
    "test.csv (EventId and the 30 features), plain or gzip-compressed"
)
_LABELS = {"s": 1, "b": 0}
# Entries per TTree.extend call, i.e. per basket: about 100 kB of float32, as in ROOT files written
# by analysis frameworks. Much larger baskets make every partition boundary that splits one
# decompress it twice (measured: +40% read time with 100k-entry baskets and 125k-entry steps).
_ROOT_CHUNK = 25_000
_CSV_CHUNK = 100_000  # rows formatted at a time by write_csv
_HEADER_LIMIT = 1 << 16  # a header line longer than this is not a HiggsML header

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
            f"{', '.join(codes)} are valid. Use the unmodified file."
        )
    return np.array([codes[category] for category in categories], dtype=dtype)[index]


def _no_csv(what: str, path: pathlib.Path) -> HepdaskError:
    where = "is a directory" if path.is_dir() else "does not exist"
    return HepdaskError(
        f"{what} {where}. Download {CSV_NAME} from CERN Open Data record 328 ({CSV_URL}), or use "
        "Kaggle's training.csv, and give the file's path, or check the spelling."
    )


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _header(path: pathlib.Path) -> tuple[list[str], bool]:
    """The column names of a CSV's first line, and whether the file is gzip-compressed."""
    what = f"The HiggsML CSV {path}"
    if not path.is_file():
        raise _no_csv(what, path)
    try:
        gz = _is_gzip(path)
        with (gzip.open if gz else open)(path, "rt", encoding="utf-8-sig", errors="replace",
                                         newline="") as handle:
            line = handle.readline(_HEADER_LIMIT)
    except (OSError, EOFError, zlib.error) as exc:
        raise HepdaskError(
            f"{what} cannot be read ({exc}). {_ACCEPTED}; download it again if it is truncated "
            "or corrupt."
        ) from exc
    return [name.strip().strip('"') for name in line.strip().split(",")], gz


def _format_of(what: str, header: list[str]) -> str:
    """The format whose columns the header has, and none of the others' (KaggleSet without
    KaggleWeight is a damaged official file, not a training.csv)."""
    if header == [""]:
        raise HepdaskError(f"{what} is empty. {_ACCEPTED}; download it again.")
    known = [name for name in COLUMNS if name in header]
    fits = {}
    for name in CSV_FORMATS:
        missing = [column for column in FORMATS[name] if column not in header]
        extra = [column for column in known if column not in FORMATS[name]]
        if not missing and not extra:
            return name
        fits[name] = missing, extra
    nearest = min(CSV_FORMATS, key=lambda name: sum(map(len, fits[name])))  # first of a tie
    missing, extra = fits[nearest]
    if "\ufffd" in ",".join(header):  # bytes that are no text: a ROOT file, an archive...
        problem = "it is not a text file"
    elif not known:
        shown = ascii(",".join(header)[:60])  # control characters and tabs visible
        problem = f"its first line ({shown}) names none of the comma-separated HiggsML columns"
    else:
        problem = f"compared with the nearest, {NAMES[nearest]}, its header " + " and ".join(
            [*([f"lacks {_listed(missing)}"] if missing else []),
             *([f"has {_listed(extra)}, which that file does not"] if extra else [])])
    raise HepdaskError(
        f"{what} is none of the HiggsML files: {problem}. {_ACCEPTED}; give one of them "
        "unmodified."
    )


def csv_format(path: str | os.PathLike[str]) -> str:
    """The format of a HiggsML CSV (a key of :data:`~hepdask.higgsml.schema.FORMATS` other than
    ``"synthetic"``), from its header only, so that a large file is checked before it is read."""
    path = pathlib.Path(path)
    return _format_of(f"The HiggsML CSV {path}", _header(path)[0])


def read_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a HiggsML CSV of any format (plain or gzip-compressed) into the :func:`synthesize`
    schema, with the columns that format has (:data:`~hepdask.higgsml.schema.FORMATS`).

    ``Label`` becomes 1 (``s``) / 0 (``b``) and ``KaggleSet`` the ASCII code of its letter, so
    that real and synthetic samples are interchangeable downstream; ``-999.0`` values are kept.
    """
    import pandas as pd  # only needed here, and slow to import

    path = pathlib.Path(path)
    what = f"The HiggsML CSV {path}"
    header, gz = _header(path)
    names = FORMATS[_format_of(what, header)]
    dtypes: dict[str, Any] = dict.fromkeys(names, np.float32)
    dtypes.update(EventId=np.int64, PRI_jet_num=np.int32)
    dtypes.update({name: "category" for name in ("Label", "KaggleSet") if name in names})
    try:
        frame = pd.read_csv(
            path, usecols=list(names), dtype=dtypes, compression="gzip" if gz else None
        )
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise HepdaskError(
            f"{what} cannot be parsed ({exc}). Every value must be a number, except Label (s/b) and "
            "KaggleSet (t/b/v/u); download the file again if it is truncated or was edited."
        ) from exc
    if frame.empty:
        raise HepdaskError(f"{what} has a header but no events. Download it again.")
    columns = {name: frame[name].to_numpy() for name in names}
    if "Label" in names:
        columns["Label"] = _codes(what, frame["Label"], _LABELS, np.int8)
    if "KaggleSet" in names:
        codes = {key: ord(key) for key in KAGGLE_SETS}
        columns["KaggleSet"] = _codes(what, frame["KaggleSet"], codes, np.uint8)
    return columns


def _text(name: str, values: np.ndarray) -> np.ndarray:
    """One column as the challenge files write it: letters for Label and KaggleSet, integers as
    integers, floats in their shortest form (``-999.0`` stays ``-999.0``)."""
    if name == "Label":
        return np.where(values == 1, "s", "b")
    if name == "KaggleSet":
        return values.astype(np.uint8).view("S1").astype(str)
    return values.astype(str)


def write_csv(
    columns: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    *,
    format: str = "official",
) -> pathlib.Path:
    """Write columns (of :func:`read_csv` or :func:`synthesize`) as a HiggsML CSV of ``format``:
    the inverse of :func:`read_csv`, e.g. a Kaggle test.csv of a synthetic sample.

    The header and values are those of the challenge files; a path ending in ``.gz`` is
    gzip-compressed. The file appears complete or not at all. Kaggle's training.csv carried the
    weights the challenge scored with, the official file's KaggleWeight: written as its
    ``Weight`` where the columns have a KaggleWeight.
    """
    from ..outputs import atomic_path

    path = pathlib.Path(path)
    where = f"write_csv to {path}"
    if format not in CSV_FORMATS:
        raise HepdaskError(
            f"{where}: format={format!r} is not a CSV format; use one of {', '.join(CSV_FORMATS)}."
        )
    names = FORMATS[format]
    if format == "kaggle-training" and "KaggleWeight" in columns:
        columns = {**columns, "Weight": columns["KaggleWeight"]}
    missing = [name for name in names if name not in columns]
    values = [np.asarray(columns[name]) for name in names if name in columns]
    if missing or any(v.ndim != 1 or len(v) != len(values[0]) for v in values):
        raise HepdaskError(
            f"{where}: the {format} file needs the 1-D columns {', '.join(names)} of equal length "
            f"(missing: {', '.join(missing) or 'none'}). Pass the output of read_csv or "
            "synthesize, or another format."
        )
    if "Label" in names and not np.isin(columns["Label"], (0, 1)).all():
        raise HepdaskError(f"{where}: Label must hold only 1 (signal) and 0 (background).")
    if "KaggleSet" in names and not np.isin(columns["KaggleSet"],
                                            [ord(key) for key in KAGGLE_SETS]).all():
        raise HepdaskError(
            f"{where}: KaggleSet must hold the ASCII codes of {', '.join(KAGGLE_SETS)} only, as "
            "read_csv and synthesize make them."
        )
    with atomic_path(path) as temporary:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(temporary, "wt", encoding="ascii", newline="") as handle:
            handle.write(",".join(names) + "\n")
            for start in range(0, len(values[0]), _CSV_CHUNK):
                text = [_text(n, v[start : start + _CSV_CHUNK]) for n, v in zip(names, values,
                                                                                 strict=True)]
                handle.writelines(",".join(row) + "\n" for row in zip(*text, strict=True))
    return path


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


def _groups(
    where: str, columns: Mapping[str, np.ndarray], leaderboard: bool
) -> dict[str, np.ndarray]:
    """The rows of each series: by class; with ``leaderboard`` the training set by class and the
    other KaggleSets by letter; without Label, all in ``test``."""
    if "Label" not in columns:
        if leaderboard:
            raise HepdaskError(
                f"{where}: leaderboard=True splits the events by KaggleSet and class, but the "
                "columns have no Label (1 signal, 0 background); pass the output of read_csv of "
                "the official file, or leave leaderboard out."
            )
        return {TEST: np.ones(len(next(iter(columns.values()), ())), bool)}
    label = np.asarray(columns["Label"])
    if not leaderboard:
        return {"signal": label == 1, "background": label == 0}
    kaggle_set = np.asarray(columns.get("KaggleSet", ()))
    codes = [ord(letter) for letter in KAGGLE_SETS]
    if kaggle_set.shape != label.shape or not np.isin(kaggle_set, codes).all():
        raise HepdaskError(
            f"{where}: leaderboard=True needs a KaggleSet column (the ASCII codes of "
            f"{', '.join(KAGGLE_SETS)}, as long as Label); pass the output of read_csv of the "
            "official file, or leave leaderboard out."
        )
    training = kaggle_set == ord("t")
    return {
        "signal": training & (label == 1),
        "background": training & (label == 0),
        **{name: kaggle_set == ord(letter) for name, letter in LEADERBOARD.items()},
    }


def write_root(
    columns: Mapping[str, np.ndarray],
    directory: str | os.PathLike[str],
    *,
    events_per_file: int = 250_000,
    tree: str = "events",
    leaderboard: bool = False,
) -> dict[str, list[pathlib.Path]]:
    """Write the events as series of ROOT TTree files: signal and background, the class being
    the file (``signal_000.root``, ``background_000.root``, ..., every column but ``Label`` a
    branch).

    With ``leaderboard`` (the official file), only the training set (KaggleSet ``t``) is in
    signal and background; the public (``b``), private (``v``) and unused (``u``) sets are the
    series ``public``, ``private`` and ``unused``, both classes in one file with a ``Label``
    branch (int8, 1 signal), as the challenge scored them. Columns without ``Label`` (Kaggle's
    test.csv) are the series ``test``.

    Each file is complete or absent: it is written under a temporary name and renamed into place.
    Files of an earlier, longer series with the same names are removed, so that a glob such as
    ``signal_*.root`` sees only this sample.

    Returns
    -------
    dict
        ``{series: [paths...]}`` in order: ``signal`` and ``background`` for labelled events,
        possibly empty lists; the other series where they have events.
    """
    directory = pathlib.Path(directory)
    where = f"write_root to {directory}"
    _check_events_per_file(where, events_per_file)
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    size = len(arrays["Label"]) if "Label" in arrays else len(next(iter(arrays.values()), ()))
    bad = [n for n, v in arrays.items() if v.ndim != 1 or v.dtype.kind not in "biuf"]
    uneven = [n for n, v in arrays.items() if len(v) != size]
    if bad or uneven or not arrays or not np.isin(arrays.get("Label", 0), (0, 1)).all():
        raise HepdaskError(
            f"{where}: every column must be a 1-D numeric array of the same length, and Label, "
            f"if any, must hold only 0 and 1 (not 1-D numeric: {', '.join(bad) or 'none'}; other "
            f"length: {', '.join(uneven) or 'none'}). Pass the output of read_csv or synthesize."
        )
    groups = _groups(where, arrays, leaderboard)
    if "Label" in arrays:
        arrays["Label"] = arrays["Label"].astype(np.int8)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written: dict[str, list[pathlib.Path]] = {}
        for name, mask in groups.items():
            branches = {k: v for k, v in arrays.items() if k != "Label" or name not in CLASSES}
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
            if paths or name in CLASSES:
                written[name] = paths
    except OSError as exc:
        raise HepdaskError(
            f"{where} failed: {exc}. Check that the directory is writable and has free space, or "
            "choose another one."
        ) from exc
    return written
