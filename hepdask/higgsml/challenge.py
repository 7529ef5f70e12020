"""The challenge's own scoring: the AMS of the public and private leaderboard sets.

The 2014 challenge ranked submissions by the AMS of the events they selected in two sets that
nobody trained on: the public leaderboard (KaggleSet ``b``, 100,000 events, shown during the
challenge) and the private one (``v``, 450,000 events, the final ranking), each event weighted
by its KaggleWeight (normalised so that each set's classes sum to the totals of the training
set). The participants chose their selection threshold without seeing those sets; a run
chooses its own on hepdask's validation split (``metrics["ams"]["best"]``), and
:func:`leaderboard_block` applies it, unchanged, to the leaderboard sets.

The numbers are comparable with the published ones (:data:`~hepdask.higgsml.schema.ANCHORS`)
only for the complete sets of the real official file; every other case says why not.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import numpy as np

from .convert import LEADERBOARD as _SERIES
from .schema import ANCHORS, BACKGROUND_TOTAL, KAGGLE_SETS, SIGNAL_TOTAL

__all__ = ["LEADERBOARD", "leaderboard_block", "ranked_scores", "score_set", "summary_lines"]

LEADERBOARD = {name: _SERIES[name] for name in ("public", "private")}
"""The leaderboard file series of a prepared official directory and their KaggleSet letters."""

_TOTALS = {1: SIGNAL_TOTAL, 0: BACKGROUND_TOTAL}


def ranked_scores(score: np.ndarray, selected: np.ndarray | None, threshold: float
                  ) -> np.ndarray:
    """The scores that rank and select events (``>= threshold``): ``score``, with the events
    that fail the model's event selection (``selected`` False) below every other score and the
    threshold, so that they are never selected and rank as the least signal-like."""
    score = np.asarray(score, dtype=np.float64)
    if selected is None or not len(score):
        return score
    return np.where(np.asarray(selected, dtype=bool), score, min(score.min(), threshold) - 1.0)


def score_set(columns: Mapping[str, np.ndarray], threshold: float, *, b_reg: float = 10.0
              ) -> dict:
    """AMS, AUCs and selected fraction of one labelled set (``score``, ``Label``,
    ``KaggleWeight`` and, for a model with an event selection, ``selected``: the columns of
    :func:`hepdask.predict.score_files`), selecting ``score >= threshold``.

    The KaggleWeights of each class are scaled to the challenge totals (a factor 1 for a
    complete leaderboard set): the AMS of a subset is that of a set of the challenge's size.
    A set without events of both classes gets no AMS or AUC (None).
    """
    from sklearn.metrics import roc_auc_score

    from .. import evaluate as ev

    score = ranked_scores(columns["score"], columns.get("selected"), threshold)
    y = np.asarray(columns["Label"]).astype(np.int64)
    w = np.asarray(columns["KaggleWeight"], dtype=np.float64)
    out: dict = {"ams": None, "auc": None, "auc_weighted": None,
                 "selected_fraction": float((score >= threshold).mean()) if len(y) else 0.0,
                 "n_events": len(y), "n_signal": int((y == 1).sum()),
                 "n_background": int((y == 0).sum())}
    if out["n_signal"] and out["n_background"]:
        out["ams"] = ev.ams_at(score, y, w, _TOTALS, threshold, b_reg)[0]
        out["auc"] = float(roc_auc_score(y, score))
        out["auc_weighted"] = float(roc_auc_score(y, score, sample_weight=w))
    return out


def leaderboard_block(*, format: str, source: str, ams: Mapping,
                      sets: Mapping[str, Mapping[str, np.ndarray]], b_reg: float = 10.0) -> dict:
    """``metrics["higgsml"]``: the leaderboard sets scored at the run's threshold, and whether
    the result is comparable to the challenge's.

    Parameters
    ----------
    format, source
        Of the prepared directory the run read (:attr:`PreparedData.format`, ``.source``).
    ams
        The run's ``metrics["ams"]``: the threshold of its best AMS, chosen on the validation
        split (on the test split when the validation split lacks a class, which the block says).
    sets
        ``"public"`` / ``"private"`` -> the scored columns of that series (see
        :func:`score_set`); none when the data have no leaderboard series.
    b_reg
        The AMS regularisation (``evaluate.ams_breg``; the challenge's was 10).
    """
    best = ams["best"]
    split = ams.get("threshold_split", "validation")
    block: dict = {
        "format": format,
        "source": source,
        "comparable": False,
        "note": "",
        "threshold": float(best["threshold"]),
        "threshold_from": f"the best AMS on the {split} split"
                          + ("" if split == "validation" else
                             " (the validation split lacks a class: an optimistic choice)"),
        "selected_fraction_validation": best.get("selected_fraction_validation"),
    }
    for name in LEADERBOARD:
        if name in sets:
            block[name] = score_set(sets[name], block["threshold"], b_reg=b_reg)
    block["comparable"], block["note"] = _comparability(format, source, block, b_reg)
    block["anchors"] = dict(ANCHORS)
    return block


def _comparability(format: str, source: str, block: Mapping, b_reg: float) -> tuple[bool, str]:
    """Whether the block's AMS values are the challenge's, and a sentence saying why (not)."""
    scaled = ("hepdask's test split, with the weights of each class scaled to the challenge "
              "totals")
    if format == "synthetic" or source == "synthetic":
        return False, ("Synthetic data (hepdask's generator): no AMS of this run is comparable "
                       "to the leaderboard.")
    if format == "kaggle-training":
        return False, ("Kaggle training.csv has no leaderboard sets (no KaggleSet): the AMS "
                       f"is that of {scaled}, not comparable to the leaderboard.")
    if format != "official":
        return False, f"Data of format {format!r}: not comparable to the leaderboard."
    if "public" not in block and "private" not in block:
        return False, ("These official data hold no leaderboard events (KaggleSet b or v): the "
                       f"AMS is that of {scaled}, not comparable to the leaderboard.")
    counts = {name: block[name]["n_events"] if name in block else 0 for name in LEADERBOARD}
    complete = all(counts[name] == KAGGLE_SETS[letter] for name, letter in LEADERBOARD.items())
    if not complete:
        return False, (
            f"A subset of the leaderboard sets ({counts['public']:,} of "
            f"{KAGGLE_SETS['b']:,} public and {counts['private']:,} of {KAGGLE_SETS['v']:,} "
            "private events), its KaggleWeights scaled to the challenge totals: not comparable "
            "to the leaderboard.")
    if b_reg != 10.0:
        return False, (f"The AMS uses b_reg = {b_reg:g} (evaluate.ams_breg); the challenge's "
                       "was 10: not comparable to the leaderboard.")
    return True, ("The complete public and private leaderboard sets with their KaggleWeight and "
                  "b_reg = 10, at a threshold chosen without them: comparable to the "
                  "leaderboard.")


def summary_lines(block: Mapping) -> list[str]:
    """The run summary's HiggsML lines: the threshold, each leaderboard set, the anchors or
    the sentence that says why the numbers are not the challenge's."""
    fraction = block.get("selected_fraction_validation")
    lines = [f"HiggsML ({block['format']}, {block['source']}): events with score >= "
             f"{block['threshold']:.4g} selected"
             + (f" ({fraction:.1%} of validation)" if fraction is not None else ""),
             f"  threshold: {block['threshold_from']}"]
    for name in LEADERBOARD:
        if name in block:
            s = block[name]
            if s["ams"] is None:
                lines.append(f"  {name:<7} no AMS: {s['n_signal']} signal and "
                             f"{s['n_background']} background events")
                continue
            lines.append(f"  {name:<7} AMS {s['ams']:.4f}, AUC {s['auc']:.4f} (weighted "
                         f"{s['auc_weighted']:.4f}), {s['selected_fraction']:.1%} of "
                         f"{s['n_events']:,} events selected")
    if block["comparable"]:
        lines.append("  published private AMS: " + ", ".join(
            f"{name} {value:.5f}" for name, value in block["anchors"].items()))
    else:
        lines += textwrap.wrap(block["note"], 96, initial_indent="  ", subsequent_indent="  ")
    return lines
