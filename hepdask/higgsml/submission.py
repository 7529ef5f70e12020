"""The Kaggle submission of a trained HiggsML model: ``EventId,RankOrder,Class``, checked.

The challenge took one row per test event: ``RankOrder``, a permutation of 1..N with the most
signal-like event ranked N, and ``Class``, ``s`` for the events the submission selects (its
AMS was computed on those), else ``b``. The ranks are real ranks (the position of each event's
score in the sorted scores, :func:`rank_order`), not the sorting permutation that ``argsort``
alone gives; the classes come from the threshold the run chose on its validation split.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import HepdaskError

__all__ = ["HEADER", "check_submission", "rank_order", "write_submission"]

log = logging.getLogger("hepdask")

HEADER = "EventId,RankOrder,Class"
_CHUNK = 100_000  # events scored at once: a few tens of MB of features
_REDO = ("Write it again with `hepdask higgsml submission RUN_DIR TEST_CSV -o OUT` (or "
         "hepdask.higgsml.submission.write_submission) and do not edit it by hand.")


def rank_order(score: np.ndarray) -> np.ndarray:
    """Each event's rank, 1 for the least and N for the most signal-like score (ties in the
    order of the events): ``argsort(argsort(score)) + 1``."""
    order = np.argsort(np.asarray(score), kind="stable")
    return np.argsort(order, kind="stable") + 1


def write_submission(run_dir: str | os.PathLike[str], test_csv: str | os.PathLike[str],
                     output: str | os.PathLike[str], *, threshold: float | None = None) -> dict:
    """Score every event of ``test_csv`` with the model of ``run_dir`` and write the Kaggle
    submission ``output`` (whole or not at all), then check it as Kaggle would.

    Parameters
    ----------
    run_dir
        A finished run of a binary HiggsML model.
    test_csv
        Kaggle's test.csv, or any HiggsML CSV (every event of it is ranked).
    output
        The submission file to write, in an existing directory; an existing file is replaced
        only once the new one is complete.
    threshold
        Events with ``score >= threshold`` get ``Class`` ``s``; by default the run's
        (``metrics.json``: ``higgsml.threshold``, else ``ams.best.threshold``).

    Returns
    -------
    dict
        ``N`` (events), ``n_signal`` (rows classed ``s``), ``threshold``, ``threshold_from``
        (where it came from) and ``path``.
    """
    from ..bundle import Bundle, records
    from ..outputs import atomic_path
    from .challenge import ranked_scores
    from .convert import read_csv

    run_dir, test_csv, output = Path(run_dir), Path(test_csv), Path(output)
    bundle = Bundle.load(run_dir)
    _check_binary(bundle, run_dir)
    metrics = _metrics(run_dir)
    threshold, threshold_from = _threshold(run_dir, metrics, threshold)
    if metrics is not None and metrics.get("data", {}).get("source") == "synthetic":
        log.warning("The model of %s was trained on synthetic data (hepdask's generator): its "
                    "submission is no challenge result.", run_dir)
    _check_output(output, test_csv)
    columns = read_csv(test_csv)
    _check_features(bundle, run_dir, test_csv, columns)
    n = len(columns["EventId"])
    if n == 0:
        raise HepdaskError(f"{test_csv} holds no event: give the test CSV with its events.")
    scores, passed = [], []
    for start in range(0, n, _CHUNK):
        events = records({name: columns[name][start:start + _CHUNK] for name in bundle.inputs},
                         min(_CHUNK, n - start))
        scored = bundle.score(events)
        scores.append(np.asarray(scored["score"], dtype=np.float64))
        passed.append(scored.get("selected", np.ones(len(events), dtype=bool)))
    score = ranked_scores(np.concatenate(scores) if scores else np.empty(0),
                          np.concatenate(passed) if passed else None, threshold)
    ranks = rank_order(score)
    signal = score >= threshold
    ids = np.asarray(columns["EventId"]).astype(np.int64)
    labels = np.where(signal, "s", "b")
    text = "\n".join([HEADER, *(f"{e},{r},{c}" for e, r, c in zip(ids.tolist(), ranks.tolist(),
                                                                   labels, strict=True))]) + "\n"
    with atomic_path(output) as tmp:
        tmp.write_text(text, encoding="ascii")
        check_submission(tmp, event_ids=ids, name=output)
    return {"N": n, "n_signal": int(signal.sum()), "threshold": threshold,
            "threshold_from": threshold_from, "path": output}


def check_submission(path: str | os.PathLike[str], *, event_ids: Sequence[int] | None = None,
                     name: str | os.PathLike[str] | None = None) -> dict:
    """Check a submission file as Kaggle did: the header exactly ``EventId,RankOrder,Class``,
    one row per event (the EventIds of ``event_ids`` when given, each once), RankOrder a
    permutation of 1..N, Class ``s`` or ``b``. ``name``: how to call the file in errors (the
    file being written, for its temporary copy).

    Returns ``N`` and ``n_signal``; a bad file raises one paragraph naming it, the row (line
    number) and what to do.
    """
    path = Path(path)
    shown = Path(name) if name is not None else path

    def bad(what: str) -> HepdaskError:
        return HepdaskError(f"The submission {shown} is not a valid Kaggle submission: {what}. "
                            + _REDO)

    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except FileNotFoundError:
        raise HepdaskError(f"The submission {shown} does not exist: give the path of the file "
                           "that `hepdask higgsml submission` wrote.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise bad(f"it cannot be read as ASCII text ({exc})") from None
    if not lines or lines[0] != HEADER:
        found = repr(lines[0][:80]) if lines else "nothing (the file is empty)"
        raise bad(f"line 1 must be the header {HEADER!r} exactly, and is {found}")
    n = len(lines) - 1
    if n == 0:
        raise bad("it has a header but no row")
    ids = np.empty(n, dtype=np.int64)
    ranks = np.empty(n, dtype=np.int64)
    n_signal = 0
    for row, line in enumerate(lines[1:]):
        fields = line.split(",")
        if len(fields) != 3:
            raise bad(f"line {row + 2} ({line[:80]!r}) has {len(fields)} field(s); every row is "
                      "EventId,RankOrder,Class")
        try:
            ids[row], ranks[row] = int(fields[0]), int(fields[1])
        except ValueError:
            raise bad(f"line {row + 2} ({line[:80]!r}): EventId and RankOrder must be whole "
                      "numbers") from None
        if fields[2] not in ("s", "b"):
            raise bad(f"line {row + 2} ({line[:80]!r}): Class must be s or b")
        n_signal += fields[2] == "s"
    if event_ids is not None and len(event_ids) != n:
        raise bad(f"it has {n} rows, and the test set has {len(event_ids)} events; there must "
                  "be one row per test event")
    outside = np.flatnonzero((ranks < 1) | (ranks > n))
    if outside.size:
        raise bad(f"line {outside[0] + 2} has RankOrder {ranks[outside[0]]}, outside 1..{n} "
                  f"(the file has {n} rows)")
    for values, column in ((ranks, "RankOrder"), (ids, "EventId")):
        first, again = _first_repeat(values)
        if again is not None:
            raise bad(f"line {again + 2} repeats the {column} {values[again]} of line "
                      f"{first + 2}; each must appear once")
    if event_ids is not None:
        expected = np.asarray(event_ids, dtype=np.int64)
        unknown = np.flatnonzero(~np.isin(ids, expected))
        if unknown.size:
            raise bad(f"line {unknown[0] + 2} has the EventId {ids[unknown[0]]}, which is not "
                      "an event of the test set")
    return {"N": n, "n_signal": int(n_signal), "path": shown}


def _first_repeat(values: np.ndarray) -> tuple[int, int | None]:
    """(row of the first occurrence, row of its first repetition), or (0, None)."""
    order = np.argsort(values, kind="stable")
    same = np.flatnonzero(values[order][1:] == values[order][:-1])
    if not same.size:
        return 0, None
    repeats = order[same + 1]  # a later row of each repeated value
    k = int(np.argmin(repeats))
    value = values[repeats[k]]
    return int(np.flatnonzero(values == value)[0]), int(repeats[k])


def _check_binary(bundle, run_dir: Path) -> None:
    if bundle.n_classes != 2:
        raise HepdaskError(
            f"The model of {run_dir} ({run_dir / 'bundle.json'}) has {bundle.n_classes} classes "
            f"({bundle.classes}): a HiggsML submission ranks the events by one signal score. "
            "Give the run directory of a binary model (signal label 1, background 0)."
        )


def _check_features(bundle, run_dir: Path, test_csv: Path, columns: dict) -> None:
    missing = [name for name in bundle.inputs if name not in columns]
    jagged = [name for name in bundle.inputs if bundle.preprocess.branches[name].jagged]
    if missing or jagged:
        raise HepdaskError(
            f"The model of {run_dir} computes its features from the branches "
            f"{', '.join(bundle.inputs)}, and {test_csv} lacks "
            f"{', '.join(missing or jagged)} (its columns: the HiggsML "
            f"{'features' if 'DER_mass_MMC' in columns else 'columns ' + ', '.join(columns)}): "
            "it is not a HiggsML model. Give the run directory of a model trained on the "
            "HiggsML DER_*/PRI_* features."
        )


def _metrics(run_dir: Path) -> dict | None:
    """The run's metrics.json, None when the run was not evaluated."""
    path = run_dir / "metrics.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise HepdaskError(f"{path} cannot be read ({exc}): the run directory is damaged; "
                           "evaluate the run again.") from None


def _threshold(run_dir: Path, metrics: dict | None, threshold: float | None
               ) -> tuple[float, str]:
    """The threshold to use and where it came from."""
    if threshold is not None:
        if not math.isfinite(threshold):
            raise HepdaskError(f"The threshold {threshold!r} is not a finite number: give a "
                               "score, e.g. --threshold 0.8.")
        return float(threshold), "--threshold"
    path = run_dir / "metrics.json"
    if metrics is None:
        raise HepdaskError(f"{path} does not exist (the run was not evaluated), so the run has "
                           "no threshold: evaluate the run, or give --threshold.")
    if "threshold" in metrics.get("higgsml", {}):
        block = metrics["higgsml"]
        return float(block["threshold"]), f"{path}: higgsml.threshold, {block['threshold_from']}"
    best = metrics.get("ams", {}).get("best", {})
    if "threshold" in best:
        split = metrics["ams"].get("threshold_split", "validation")
        return float(best["threshold"]), f"{path}: ams.best.threshold, the best AMS on the " \
                                         f"{split} split"
    raise HepdaskError(
        f"{path} has no AMS threshold (neither higgsml.threshold nor ams.best.threshold: "
        f"{metrics.get('warning', 'the run has no AMS')}). Give --threshold, or train on data "
        "whose validation split holds both classes."
    )


def _check_output(output: Path, test_csv: Path) -> None:
    """Before any work: the submission can be written where asked, over nothing it must keep."""
    if not output.parent.is_dir():
        raise HepdaskError(
            f"The directory of the submission {output} ({output.parent}) does not exist: create "
            "it, or give another -o/--output."
        )
    if output.is_dir():
        raise HepdaskError(f"The submission {output} is a directory: give a file name, e.g. "
                           f"{output / 'submission.csv'}.")
    if output.resolve() == test_csv.resolve() or (
            output.exists() and test_csv.exists() and os.path.samefile(output, test_csv)):
        raise HepdaskError(f"The submission {output} would replace the test CSV {test_csv}: "
                           "give another -o/--output.")
