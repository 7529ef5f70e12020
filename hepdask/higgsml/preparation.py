"""Prepared HiggsML directories: ROOT files converted, downloaded or synthesized once, described
by ``MANIFEST.json``, and never replaced where they hold real data."""

from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import shutil
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import uproot

from ..errors import HepdaskError
from .convert import (
    CLASSES,
    NAMES,
    SERIES,
    TEST,
    _check_events_per_file,
    _groups,
    _is_gzip,
    _no_csv,
    csv_format,
    read_csv,
    write_root,
)
from .schema import CSV_NAME, CSV_URL
from .synthetic import synthesize

__all__ = ["MANIFEST_NAME", "PreparedData", "announce_synthetic", "find_prepared", "prepare"]

logger = logging.getLogger("hepdask")

MANIFEST_NAME = "MANIFEST.json"
_DOWNLOAD_TIMEOUT_S = 10.0

# --- prepare --------------------------------------------------------------------------------

# Where prepare writes a new series before moving it into place: hidden, so that the samples'
# globs never see a half-written series, and in the same file system, so that moving is renaming.
_STAGING = ".hepdask-prepare"
_REPLACES = "replaces"  # staging manifest only: the files of the series it replaces
# The official file's sets are series of their own ("leaderboard": true); manifests written before
# have all its events in signal/background, and are re-split.
_BEFORE = {"leaderboard": False}
_MEANING = {
    "official": "KaggleSet t is hepdask's training, validation and test data (signal_*, "
                "background_*), and b and v the public and private leaderboard sets (public_*, "
                "private_*, with a Label branch), scored with their KaggleWeight as the challenge "
                "scored them",
    "kaggle-training": "no KaggleSet, so the AMS is not comparable to the leaderboard: every event "
                       "is in signal_*/background_*, and the AMS is that of hepdask's test split",
    "kaggle-test": "without Label, its events (test_*) are for a submission, not for training",
}


@dataclass(frozen=True)
class PreparedData:
    """HiggsML ROOT files ready for training, as recorded in ``MANIFEST.json``.

    Attributes
    ----------
    source
        ``"csv"``, ``"download"`` or ``"synthetic"``: whether these are the real challenge data.
    directory
        The data directory.
    files
        Paths of the ROOT files per series, in order: ``"signal"`` and ``"background"`` (the
        training events); for the official file also ``"public"``, ``"private"`` and
        ``"unused"`` where they have events; for Kaggle's test.csv only ``"test"``.
    n_events
        Number of events per series.
    tree
        Name of the TTree in every file.
    manifest
        The manifest as written to disk.
    """

    source: str
    directory: pathlib.Path
    files: dict[str, list[pathlib.Path]]
    n_events: dict[str, int]
    tree: str
    manifest: dict[str, Any]

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PreparedData:
        """Load a prepared directory, checking that every file its manifest lists exists."""
        prepared = cls.read(directory)
        if prepared.absent:
            raise HepdaskError(
                f"The HiggsML manifest {prepared.directory / MANIFEST_NAME} lists file(s) that do "
                f"not exist: {', '.join(map(str, prepared.absent))}. Run "
                f"hepdask.higgsml.prepare({str(prepared.directory)!r}) to write them again."
            )
        return prepared

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> PreparedData:
        """The manifest of ``directory`` as it is, whether or not the files it lists exist."""
        directory = pathlib.Path(directory)
        path = directory / MANIFEST_NAME
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            files = {str(name): [directory / str(f) for f in names]
                     for name, names in manifest["files"].items()}
            n_events = {name: int(manifest["n_events"][name]) for name in files}
            source, tree = str(manifest["source"]), str(manifest["tree"])
            if not set(CLASSES) <= set(files) and TEST not in files:
                raise ValueError("neither signal and background nor test files")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HepdaskError(
                f"The HiggsML manifest {path} is missing or damaged ({exc!r}). Run "
                f"hepdask.higgsml.prepare({str(directory)!r}) to (re)create the data."
            ) from exc
        return cls(source, directory, files, n_events, tree, manifest)

    @property
    def names(self) -> set[str]:
        """The names of the files the manifest lists."""
        return {path.name for paths in self.files.values() for path in paths}

    @property
    def absent(self) -> list[pathlib.Path]:
        """The files the manifest lists that do not exist."""
        return [path for paths in self.files.values() for path in paths if not path.is_file()]

    @property
    def format(self) -> str:
        """The form the data came in (a key of :data:`~hepdask.higgsml.schema.FORMATS`).

        Manifests written before the format was recorded came from the official file or the
        generator.
        """
        default = "synthetic" if self.source == "synthetic" else "official"
        return str(self.manifest.get("format", default))


def find_prepared(paths: Iterable[str]) -> dict[str, PreparedData]:
    """The prepared HiggsML directory whose manifest lists each of ``paths`` (local files; the
    others are left out): where the files a run reads come from, whatever its [prepare] says."""
    manifests: dict[pathlib.Path, PreparedData | None] = {}
    found = {}
    for path in paths:
        if "://" in path:
            continue
        file = pathlib.Path(path).resolve()
        if file.parent not in manifests:
            try:
                manifests[file.parent] = PreparedData.read(file.parent)
            except HepdaskError:
                manifests[file.parent] = None
        prepared = manifests[file.parent]
        if prepared is not None and file.name in prepared.names:
            found[path] = prepared
    return found


def announce_synthetic(prepared: PreparedData, action: str) -> None:
    """The SYNTHETIC DATA banner on the ``hepdask`` logger, when ``prepared`` is synthetic."""
    if prepared.source == "synthetic":
        n_events = sum(prepared.n_events.values())
        seed = prepared.manifest.get("seed", "unknown")
        logger.warning(_banner(prepared.directory, n_events, seed, action))


def _download(directory: pathlib.Path) -> pathlib.Path | None:
    """Fetch the official CSV into ``directory``; None, and one log line, on any failure."""
    target = directory / CSV_NAME
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with urllib.request.urlopen(CSV_URL, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            with temporary.open("wb") as handle:
                shutil.copyfileobj(response, handle, 1 << 20)
        if not _is_gzip(temporary):  # a proxy's or portal's HTML page, say
            raise ValueError("the response is not a gzip file")
        os.replace(temporary, target)
    except (OSError, ValueError) as exc:  # URLError, HTTPError and timeouts are OSErrors
        logger.warning("could not download %s: %s", CSV_URL, exc)
        return None
    finally:
        temporary.unlink(missing_ok=True)
    return target


def _local_csv(directory: pathlib.Path, csv: str | os.PathLike[str] | None) -> pathlib.Path | None:
    """The CSV to convert: the one given, else the official file or Kaggle's training.csv in the
    directory, if any."""
    if csv is not None:
        return pathlib.Path(csv)
    for name in (CSV_NAME, CSV_NAME.removesuffix(".gz"), "training.csv.gz", "training.csv"):
        if (directory / name).is_file():
            return directory / name
    return None


def _banner(directory: pathlib.Path, n_events: int, seed: object, action: str) -> str:
    rule = "=" * 78
    return (
        f"\n{rule}\nSYNTHETIC DATA: {action} {n_events:,} synthetic HiggsML events (seed {seed}) "
        f"in {directory}.\nThey mimic the schema and rough shapes of the ATLAS HiggsML 2014 "
        "challenge data but are NOT\nthe real challenge data: AUC and AMS values are not "
        "comparable with the challenge results.\nFor the real data, download "
        f"{CSV_NAME} from CERN Open Data record 328\n({CSV_URL})\nand put it at "
        f"{directory / CSV_NAME}, or pass --csv PATH; the next run converts it.\n{rule}"
    )


def _write_manifest(directory: pathlib.Path, manifest: dict[str, Any]) -> None:
    path = directory / MANIFEST_NAME
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _names(paths: list[pathlib.Path]) -> str:
    shown = ", ".join(path.name for path in paths[:4])
    return shown + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")


def _series(directory: pathlib.Path) -> list[pathlib.Path]:
    """The files the usual globs of every series (``signal_*.root``, ``public_*.root``, ...)
    would read."""
    return sorted(path for name in SERIES for path in directory.glob(f"{name}_*.root"))


def _previous(directory: pathlib.Path) -> PreparedData | None:
    """The earlier preparation in ``directory``; None where there is neither one nor any file a
    new one could overwrite. Without a readable manifest, files of the series may be anybody's,
    real data included: hepdask refuses to touch them."""
    try:
        return PreparedData.read(directory)
    except HepdaskError as exc:
        theirs = _series(directory)
        if theirs:
            raise HepdaskError(
                f"The HiggsML data directory {directory} holds {_names(theirs)} but no readable "
                f"{MANIFEST_NAME} ({exc.__cause__!r}), so hepdask cannot tell whether they are its "
                "own synthetic files or real data, and will not overwrite them. Point "
                "prepare.directory (or --directory) at another directory, or, if these files "
                "are an old hepdask sample you want replaced, delete them yourself first."
            ) from None
        return None


def _check_unlisted(directory: pathlib.Path, previous: PreparedData | None) -> None:
    """Before writing: every file of the series must be one that the manifest lists."""
    listed = previous.names if previous is not None else set()
    unlisted = [path for path in _series(directory) if path.name not in listed]
    if unlisted:
        raise HepdaskError(
            f"The HiggsML data directory {directory} holds {_names(unlisted)}, which its "
            f"{MANIFEST_NAME} does not list: hepdask never overwrites or deletes files it did not "
            "write, and a new series would be mixed with them. Move them to another directory, "
            "or point prepare.directory (or --directory) elsewhere."
        )


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _sizes(n_events: Mapping[str, int], events_per_file: object) -> list[list[int]] | None:
    """Events per file of each series in a layout (None for a layout that is not one)."""
    if isinstance(events_per_file, bool) or not isinstance(events_per_file, int):
        return None
    return [[min(events_per_file, n - start) for start in range(0, n, events_per_file)]
            for n in n_events.values()]


def _layout(format: str, tree: str, events_per_file: int) -> dict[str, Any]:
    """The manifest keys that decide which files a directory holds."""
    return {"tree": tree, "events_per_file": events_per_file, "leaderboard": format == "official"}


def _records(manifest: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether a manifest records every value wanted (older manifests: see ``_BEFORE``)."""
    recorded = {**_BEFORE, **manifest}
    return all(recorded.get(key) == value for key, value in wanted.items())


def _read_root(prepared: PreparedData) -> dict[str, np.ndarray]:
    """The events of a prepared directory as columns (``Label`` included where the files are
    labelled), to write them anew."""
    from ..dataset import READ_ERRORS

    parts = []
    for name, paths in prepared.files.items():
        for path in paths:
            try:
                with uproot.open(path) as file:
                    part = file[prepared.tree].arrays(library="np")
            except (*READ_ERRORS, KeyError) as exc:
                raise HepdaskError(
                    f"Cannot read {path} ({exc}) to re-split the real HiggsML data of "
                    f"{prepared.directory} into other files; nothing was changed. Restore the "
                    "file, or convert the CSV into another directory."
                ) from exc
            if name in CLASSES:  # the class is the file
                part["Label"] = np.full(len(next(iter(part.values()))), name == "signal", np.int8)
            parts.append(part)
    if any(part.keys() != parts[0].keys() for part in parts):
        raise HepdaskError(
            f"The ROOT files of the real HiggsML data in {prepared.directory} do not all have the "
            "same branches, so hepdask cannot re-split them; nothing was changed. Restore the "
            "files, or convert the CSV into another directory."
        )
    return {branch: np.concatenate([part[branch] for part in parts]) for branch in parts[0]}


def _keep_real(
    previous: PreparedData, csv: str | os.PathLike[str] | None, tree: str, events_per_file: int
) -> PreparedData:
    """Real data stay: reused, re-split from their ROOT files into the requested layout, or
    converted again from their CSV where files are missing; never replaced or deleted."""
    directory, manifest, found = previous.directory, previous.manifest, previous.format
    layout = _layout(found, tree, events_per_file)
    origin = pathlib.Path(str(manifest.get("csv", "")))
    if csv is not None and not _same_file(csv, origin):
        raise HepdaskError(
            f"The HiggsML data directory {directory} already holds real data ({NAMES[found]}, "
            f"{previous.source} from {origin}), and hepdask never replaces real data. To convert "
            f"{csv}, choose another prepare.directory (or --directory); to use the data in "
            f"{directory}, leave prepare.csv (--csv) out."
        )
    if previous.absent:
        if not origin.is_file():
            raise HepdaskError(
                f"The real HiggsML data in {directory} are incomplete: {_names(previous.absent)}, "
                f"listed in its {MANIFEST_NAME}, do not exist, and {origin}, the CSV they were "
                "converted from, is gone too. hepdask never replaces real data with synthetic "
                "ones: restore the missing files or the CSV, or move the remaining files away and "
                "prepare the directory again."
            )
        if (now := csv_format(origin)) != found:
            raise HepdaskError(
                f"The real HiggsML data in {directory} are incomplete ({_names(previous.absent)} "
                f"do not exist), and {origin}, the CSV they were converted from, is now "
                f"{NAMES[now]}, not {NAMES[found]}: hepdask will not mix the two. Restore the "
                "missing files or the original CSV, or prepare the new CSV into another directory."
            )
        _check_unlisted(directory, previous)
        logger.warning("Converting %s again: %s lack(s) in %s", origin, _names(previous.absent),
                       directory)
        return _install(directory, read_csv(origin), dict(manifest, format=found), layout,
                        previous)
    if _records(manifest, layout):
        return previous
    _check_unlisted(directory, previous)
    resplit = not _records(manifest, {"leaderboard": layout["leaderboard"]})
    same_files = not resplit and layout["tree"] == previous.tree and _sizes(
        previous.n_events, manifest.get("events_per_file")
    ) == _sizes(previous.n_events, layout["events_per_file"])
    if same_files:  # e.g. 250000 or 125000 per file of a small CSV: the very same files
        _write_manifest(directory, {**manifest, **layout, "format": found})
        return PreparedData.load(directory)
    if resplit:
        logger.warning(
            "Re-splitting the real HiggsML data (%s) in %s from their own files into the "
            "challenge's sets: KaggleSet t in signal_*/background_*, b, v and u in public_*, "
            "private_*, unused_* (with a Label branch); the training files then hold the t "
            "events only, so the train/validation/test split changes too.",
            previous.source, directory,
        )
    else:
        logger.warning(
            "Re-splitting the real HiggsML data (%s) in %s from %s to %s events per file (tree "
            "%r): the same events in other files, so the train/validation/test split, which is "
            "keyed by file name and entry, changes too.",
            previous.source, directory, manifest.get("events_per_file"),
            layout["events_per_file"], layout["tree"],
        )
    return _install(directory, _read_root(previous), dict(manifest, format=found), layout,
                    previous)


def _install(
    directory: pathlib.Path,
    columns: Mapping[str, np.ndarray],
    manifest: dict[str, Any],
    layout: dict[str, Any],
    previous: PreparedData | None,
) -> PreparedData:
    """Write the series and its manifest into the staging directory, then move them into place.

    The files a new series replaces stay untouched until all of it is written: a full disk or an
    interruption before that leaves the directory as it was, and one after it is finished by the
    next :func:`prepare` (see :func:`_finish`).
    """
    staging = directory / _STAGING
    shutil.rmtree(staging, ignore_errors=True)
    try:
        files = write_root(columns, staging, tree=layout["tree"],
                           events_per_file=layout["events_per_file"],
                           leaderboard=layout["leaderboard"])
        rows = _groups(f"prepare {directory}", columns, layout["leaderboard"])
        manifest.update(
            layout,
            branches=[name for name in columns if name != "Label"],
            files={name: [p.name for p in paths] for name, paths in files.items()},
            n_events={name: int(rows[name].sum()) for name in files},
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        if "Label" in columns:  # the training classes' totals
            weight = columns["Weight"].astype(np.float64)
            manifest["weight_sums"] = {name: float(weight[rows[name]].sum()) for name in CLASSES}
        manifest[_REPLACES] = sorted(previous.names) if previous is not None else []
        _write_manifest(staging, manifest)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise HepdaskError(
                f"Writing the HiggsML manifest into {staging} failed: {exc}. The data in "
                f"{directory} are unchanged; free some space and try again."
            ) from exc
        raise
    _finish(directory)
    return PreparedData.load(directory)


def _finish(directory: pathlib.Path) -> None:
    """Move a complete staged series into place, also after an interruption; remove an incomplete
    one (copies only: the files it was to replace are still there).

    The staging manifest, written last, marks the staged series complete; the directory's own
    manifest is removed before the first file moves and written again after the last one, so it
    never lists files that are not (or no longer) those it describes.
    """
    staging = directory / _STAGING
    if not staging.is_dir():
        return
    try:
        pending = PreparedData.read(staging)
    except HepdaskError:
        shutil.rmtree(staging, ignore_errors=True)
        return
    manifest = dict(pending.manifest)
    replaced = set(manifest.pop(_REPLACES, []))
    try:
        (directory / MANIFEST_NAME).unlink(missing_ok=True)
        for name in sorted(replaced - pending.names):
            (directory / name).unlink(missing_ok=True)
        for name in sorted(pending.names):
            if (staging / name).exists():
                os.replace(staging / name, directory / name)
        _write_manifest(directory, manifest)
        (staging / MANIFEST_NAME).unlink()
        shutil.rmtree(staging)
    except OSError as exc:
        raise HepdaskError(
            f"Moving the prepared HiggsML files from {staging} into {directory} failed: {exc}. "
            "The complete new series is in the former; prepare the directory again to finish."
        ) from exc


def _check_test_csv(
    directory: pathlib.Path, previous: PreparedData | None, csv: str | os.PathLike[str]
) -> None:
    """Kaggle's test.csv only into a directory of its own: its unlabelled events must neither
    replace training data nor be mixed with them."""
    waiting = _local_csv(directory, None)
    if waiting is not None and not _same_file(waiting, csv):
        training = f"{waiting.name}, to be converted"
    elif previous is not None and previous.format != "kaggle-test":
        training = f"{NAMES[previous.format]}, {previous.source}"
    else:
        return
    elsewhere = directory.with_name(directory.name + "-test")
    raise HepdaskError(
        f"The HiggsML CSV {csv} is Kaggle's test.csv (no Label), but {directory} holds training "
        f"data ({training}), which it would replace or be mixed with. Prepare the test.csv into "
        "a directory of its own: give another prepare.directory (or --directory), e.g. "
        f"{elsewhere}."
    )


def prepare(
    directory: str | os.PathLike[str],
    *,
    csv: str | os.PathLike[str] | None = None,
    download: bool = True,
    synthetic_events: int = 250_000,
    seed: int = 0,
    events_per_file: int = 250_000,
    tree: str = "events",
) -> PreparedData:
    """Make sure HiggsML ROOT files are in ``directory``: convert, download or synthesize them.

    A CSV may be the official file, Kaggle's training.csv or Kaggle's test.csv, told apart by its
    header (:func:`~hepdask.higgsml.convert.csv_format`); the format is logged, with what it means
    for the AMS, and recorded in the manifest (``"format"``). The official file's training set
    (KaggleSet ``t``) goes into the signal and background series, its leaderboard sets into
    their own (:func:`~hepdask.higgsml.convert.write_root` with ``leaderboard``); a test.csv,
    into a directory of its own, is the ``test`` series.

    Real data (converted from a CSV or a download) are never replaced or deleted: they are
    reused as they are; re-split from their own ROOT files when another tree or number of events
    per file is asked for, or when they were prepared before the leaderboard series existed;
    converted again from their CSV when files are missing; and a different ``csv`` is refused. A
    synthetic sample is reused when it has the seed, size and layout asked for and no real CSV is
    available; otherwise the first available source wins: ``csv``, or the official file (``.csv.gz``
    or ``.csv``) or Kaggle's training.csv[.gz] in ``directory``; a download from CERN Open Data if
    ``download``; ``synthetic_events`` synthetic events, announced by a warning banner on the
    ``hepdask`` logger.

    Files of the series (``signal_*.root``, ``public_*.root``, ...) that no readable manifest
    lists are never overwritten: ``prepare`` refuses instead. A new series is written aside and
    moved into place once complete, so an interruption or a full disk loses nothing.

    Returns
    -------
    PreparedData
        The files, event counts and manifest; ``source`` says whether the data are real,
        ``format`` which file they came from.
    """
    directory = pathlib.Path(directory)
    _check_events_per_file(f"prepare {directory}", events_per_file)
    if csv is not None and not pathlib.Path(csv).is_file():
        raise _no_csv(f"The HiggsML CSV {csv}", pathlib.Path(csv))
    given = csv_format(csv) if csv is not None else None  # a wrong file touches nothing
    _finish(directory)
    previous = _previous(directory)
    if given == "kaggle-test":
        _check_test_csv(directory, previous, csv)
    if previous is not None and previous.source != "synthetic":
        return _keep_real(previous, csv, tree, events_per_file)
    local = _local_csv(directory, csv)
    request = {**_layout("synthetic", tree, events_per_file), "seed": seed,
               "synthetic_events": synthetic_events}
    if (previous is not None and local is None and not previous.absent
            and _records(previous.manifest, request)):
        announce_synthetic(previous, "reusing")
        return previous
    _check_unlisted(directory, previous)

    manifest: dict[str, Any] = {
        "manifest_version": 1,
        "dataset": "ATLAS Higgs Boson Machine Learning Challenge 2014 (CERN Open Data record 328)",
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HepdaskError(
            f"Cannot create the HiggsML data directory {directory}: {exc}. Choose a writable one."
        ) from exc
    if local is None and download and (fetched := _download(directory)) is not None:
        local, manifest["url"] = fetched, CSV_URL
    if local is not None:
        found = given or csv_format(local)
        if found == "kaggle-test":
            _check_test_csv(directory, previous, local)
        logger.info("%s is %s: %s.", local, NAMES[found], _MEANING[found])
        columns = read_csv(local)
        manifest.update(source="download" if "url" in manifest else "csv", format=found,
                        csv=str(local.resolve()))
    else:
        found = "synthetic"
        columns = synthesize(synthetic_events, seed=seed)
        manifest.update(source="synthetic", format=found, seed=seed,
                        synthetic_events=synthetic_events)
        logger.warning(_banner(directory, synthetic_events, seed, "generated"))
    return _install(directory, columns, manifest, _layout(found, tree, events_per_file), previous)
