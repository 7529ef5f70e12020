"""Test-split metrics: ROC AUC, the HiggsML AMS with thresholds chosen on validation, the
multi-class figures and the run summary (the plots are :mod:`hepdask.plots`').

Everything here works on NumPy arrays of the validation and test splits (scores,
labels, weights: a few bytes per event), whichever engine produced the scores.
Binary scores are the signal probability; with more than two classes there is
one column per class, and the metrics are accuracy, one-vs-rest AUCs, log-loss
and the confusion matrix (the AMS is a two-class figure).

The AMS thresholds are chosen on the validation split and the AMS reported on
the test split at those thresholds: the best AMS of the test split itself would
be an optimistic figure, tuned on the events it is measured on. A threshold only
ever falls between two distinct scores: events with the same score are selected
together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn import metrics as skm
from sklearn.metrics import roc_auc_score

__all__ = ["ams", "ams_at", "ams_curve", "ams_scan", "ams_thresholds", "evaluate_scores",
           "learned_nothing", "summary"]

Split = tuple[np.ndarray, np.ndarray, np.ndarray]  # (scores, labels, weights) of one split

#: Scores are "consistent with no separation" when their AUC is within this many standard
#: deviations of 0.5, the spread of the AUC of scores unrelated to the labels.
NULL_AUC_SIGMAS = 3.0


def ams(s: np.ndarray | float, b: np.ndarray | float, b_reg: float = 10.0) -> np.ndarray:
    """Approximate median significance of the HiggsML challenge (vectorised over cuts)."""
    s = np.asarray(s, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64) + b_reg
    return np.sqrt(np.maximum(2.0 * ((s + b) * np.log1p(s / b) - s), 0.0))


def ams_scan(scores: np.ndarray, y: np.ndarray, w: np.ndarray, b_reg: float = 10.0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AMS when selecting the events with ``score >= t``, for every distinct score ``t``:
    (thresholds from the highest, number of events selected, AMS)."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    sw = np.cumsum(np.where(y[order] == 1, w[order], 0.0), dtype=np.float64)
    bw = np.cumsum(np.where(y[order] == 0, w[order], 0.0), dtype=np.float64)
    last = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))  # end of each tie
    return ranked[last], last + 1, ams(sw[last], bw[last], b_reg)


def ams_curve(scores: np.ndarray, y: np.ndarray, w: np.ndarray, class_totals: Mapping[int, float],
              b_reg: float = 10.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`ams_scan` with the weights of each class scaled to ``class_totals``."""
    return ams_scan(scores, y, _to_totals(y, w, class_totals), b_reg)


def ams_at(scores: np.ndarray, y: np.ndarray, w: np.ndarray, class_totals: Mapping[int, float],
           threshold: float, b_reg: float = 10.0) -> tuple[float, float]:
    """(AMS, fraction of the events selected) when selecting ``score >= threshold``, with the
    weights of each class scaled to ``class_totals``."""
    selected = scores >= threshold
    norm = _to_totals(y, w, class_totals)
    value = ams(norm[selected & (y == 1)].sum(), norm[selected & (y == 0)].sum(), b_reg)
    return float(value), float(selected.mean())


def _to_totals(y: np.ndarray, w: np.ndarray, class_totals: Mapping[int, float]) -> np.ndarray:
    """Weights of one split scaled so that each class sums to its total over the whole data set,
    as in the challenge, where each leaderboard set was normalised to the totals."""
    norm = np.asarray(w, dtype=np.float64).copy()
    for label in (0, 1):
        in_class = y == label
        norm[in_class] *= class_totals[label] / norm[in_class].sum()
    return norm


def learned_nothing(scores: np.ndarray, y: np.ndarray, sigmas: float = NULL_AUC_SIGMAS
                    ) -> str | None:
    """Why ``scores`` show no sign of separating the classes ``y``, or None when they do.

    No sign: scores that are not all finite, the same score for every event, or an AUC
    (one-vs-rest for every class, with more than two) within ``sigmas`` standard
    deviations of 0.5, the spread the AUC of scores unrelated to the labels has for these
    numbers of events of each class (Mann-Whitney, with ties). The bound shrinks as the
    events grow: a weak but real separation on enough events is not flagged.
    """
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    if not len(y):
        return None
    if not np.isfinite(scores).all():
        return f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite"
    columns = scores.reshape(len(y), -1)
    if np.all(columns.max(axis=0) == columns.min(axis=0)):
        return f"every one of the {len(y)} events gets the same score"
    classes = range(columns.shape[1]) if columns.shape[1] > 2 else [1]
    found = []
    for k in classes:
        positive = y == k
        if positive.all() or not positive.any():
            return None  # one class only: nothing to measure
        column = columns[:, k] if columns.shape[1] > 1 else columns[:, 0]
        auc, sigma = float(roc_auc_score(positive, column)), _null_auc_sigma(column, positive)
        if abs(auc - 0.5) > sigmas * sigma:
            return None
        found.append(f"{'' if len(classes) == 1 else f'class {k} vs the rest: '}AUC {auc:.4f}"
                     f" within {sigmas:g} x {sigma:.4f} of 0.5 ({int(positive.sum())} vs "
                     f"{int((~positive).sum())} events)")
    return "; ".join(found)


def _null_auc_sigma(scores: np.ndarray, positive: np.ndarray) -> float:
    """Standard deviation of the AUC of scores unrelated to the labels (Mann-Whitney U with
    the tie correction), for these scores' ties and numbers of events of each class."""
    n1, n0 = int(positive.sum()), int((~positive).sum())
    n = n1 + n0
    _, ties = np.unique(scores, return_counts=True)
    ties = ties.astype(np.float64)
    variance = n1 * n0 / 12.0 * ((n + 1) - (ties**3 - ties).sum() / (n * (n - 1)))
    return math.sqrt(max(variance, 0.0)) / (n1 * n0)


def evaluate_scores(scores: np.ndarray, y: np.ndarray, w: np.ndarray, *,
                    class_totals: Mapping[int, float], b_reg: float = 10.0,
                    top_fraction: float = 0.15, extra: Sequence[str] = (),
                    validation: Split | None = None) -> dict:
    """Metrics of the scores on the test split, plus the ``extra`` ones named in the config.

    The AMS thresholds are chosen on ``validation`` (see :func:`ams_thresholds`). Each
    split's AMS needs its weights scaled up to the full data set's totals per class
    (``class_totals``, label -> sum of weights).
    """
    scores, y, w = _arrays(scores, y, w)
    if scores.ndim == 2:
        return _evaluate_multiclass(scores, y, w, extra)
    metrics: dict = {"n_test": len(y), "n_signal": int((y == 1).sum()),
                     "n_background": int((y == 0).sum())}
    if extra:
        metrics.update(extra_metrics(extra, scores, y, w))
    if metrics["n_signal"] == 0 or metrics["n_background"] == 0:
        metrics["warning"] = "the test split holds one class only: no AUC or AMS"
        return metrics
    metrics["auc"] = float(roc_auc_score(y, scores))
    metrics["auc_weighted"] = float(roc_auc_score(y, scores, sample_weight=w))
    metrics["ams"] = ams_thresholds((scores, y, w), validation, class_totals, b_reg, top_fraction)
    return metrics


def ams_thresholds(test: Split, validation: Split | None, class_totals: Mapping[int, float],
                   b_reg: float, top_fraction: float) -> dict:
    """The AMS at two thresholds chosen on the validation split: the one of the best AMS, and
    the highest one that selects at least ``top_fraction`` of the events; each with its AMS
    and selected fraction on the test split (``value``, ``selected_fraction``) and on the
    split that chose it. Without validation events of both classes, the test split chooses
    (an optimistic figure), and ``threshold_split`` says so."""
    choose, split = validation, "validation"
    if choose is None or len(np.unique(choose[1])) < 2:
        choose, split = test, "test"
    chooser = _arrays(*choose)
    thresholds, selected, curve = ams_curve(*chooser, class_totals, b_reg)
    n = len(chooser[1])
    chosen = {"best": int(np.argmax(curve)),
              "top_fraction": int(np.searchsorted(selected, max(1, math.ceil(top_fraction * n))))}
    out: dict = {"b_reg": b_reg, "threshold_split": split}
    if split == "test":
        out["note"] = ("the validation split lacks events of both classes: the thresholds were "
                       "chosen on the test split, so its AMS values are optimistic")
    test = _arrays(*test)
    for key, i in chosen.items():
        value, fraction = ams_at(*test, class_totals, float(thresholds[i]), b_reg)
        out[key] = {"threshold": float(thresholds[i]), "value": value,
                    "selected_fraction": fraction}
        if split == "validation":
            out[key].update({"value_validation": float(curve[i]),
                             "selected_fraction_validation": float(selected[i] / n)})
    out["top_fraction"]["fraction"] = top_fraction
    return out


def _arrays(scores, y, w) -> Split:
    return (np.asarray(scores, dtype=np.float64), np.asarray(y).astype(np.int64),
            np.asarray(w, dtype=np.float64))


def _evaluate_multiclass(scores: np.ndarray, y: np.ndarray, w: np.ndarray,
                         extra: Sequence[str]) -> dict:
    n_classes = scores.shape[1]
    metrics: dict = {"n_test": len(y), "n_classes": n_classes,
                     "n_per_class": np.bincount(y, minlength=n_classes).tolist()}
    if len(np.unique(y)) < n_classes:
        metrics["warning"] = "the test split lacks some classes: no AUC"
        return metrics
    predicted = scores.argmax(axis=1)
    metrics["accuracy"] = float(skm.accuracy_score(y, predicted))
    metrics["accuracy_weighted"] = float(skm.accuracy_score(y, predicted, sample_weight=w))
    metrics["auc"] = float(roc_auc_score(y, scores, multi_class="ovr", average="macro"))
    metrics["auc_per_class"] = [float(roc_auc_score(y == k, scores[:, k]))
                                for k in range(n_classes)]
    metrics["confusion_matrix"] = skm.confusion_matrix(y, predicted,
                                                       labels=range(n_classes)).tolist()
    metrics.update(extra_metrics(extra, scores, y, w))
    return metrics


def extra_metrics(names: Sequence[str], scores: np.ndarray, y: np.ndarray,
                  w: np.ndarray) -> dict:
    """The metrics of ``evaluate.metrics``: class decisions at probability 0.5 (two classes,
    or at 0 for decision-function scores) or by the largest probability; macro averages over
    classes."""
    probabilities = bool(scores.min() >= 0 and scores.max() <= 1)
    if scores.ndim == 2:
        predicted, average = scores.argmax(axis=1), "macro"
    else:
        predicted, average = (scores >= (0.5 if probabilities else 0.0)).astype(np.int64), "binary"
    out: dict = {}
    for name in names:
        if name == "accuracy":
            out[name] = skm.accuracy_score(y, predicted)
        elif name == "auc":
            continue  # always reported
        elif name == "precision":
            out[name] = skm.precision_score(y, predicted, average=average, zero_division=0)
        elif name == "recall":
            out[name] = skm.recall_score(y, predicted, average=average, zero_division=0)
        elif name == "f1":
            out[name] = skm.f1_score(y, predicted, average=average, zero_division=0)
        elif name == "logloss" and probabilities:
            labels = range(scores.shape[1]) if scores.ndim == 2 else [0, 1]
            p = scores / scores.sum(axis=1, keepdims=True) if scores.ndim == 2 else scores
            out[name] = skm.log_loss(y, p, sample_weight=w, labels=labels)
    return {k: float(v) for k, v in out.items()}


def summary(metrics: Mapping, run_dir: str | Path) -> str:
    """The few lines printed at the end of a run."""
    lines = [f"Run directory: {run_dir}"]
    data = metrics.get("data", {})
    if "source" in data:
        form = f" ({data['format']})" if data.get("format") else ""
        lines.append(f"Data: {data.get('dataset', '')} {data['source']}{form}".replace("  ", " "))
    if metrics.get("read_errors"):
        errors = metrics["read_errors"]
        known = sum(e["events"] for e in errors if e["events"] is not None)
        unknown = sum(e["events"] is None for e in errors)
        lines.append(f"Skipped (unreadable): {len(errors)} files or ranges, {known} events lost"
                     + (f", and {unknown} file(s) that could not be opened" if unknown else ""))
    lines.append(f"Events: {metrics.get('n_train', 0)} train, {metrics.get('n_validation', 0)} "
                 f"validation, {metrics['n_test']} test; {metrics.get('features', '?')} features")
    if "n_classes" in metrics and "auc" in metrics:
        lines.append(f"{metrics['n_classes']} classes: accuracy {metrics['accuracy']:.4f}, "
                     f"one-vs-rest AUC {metrics['auc']:.4f} (per class "
                     + ", ".join(f"{a:.3f}" for a in metrics["auc_per_class"]) + ")")
    elif "auc" in metrics:
        a = metrics["ams"]
        best, top = a["best"], a["top_fraction"]
        lines += [
            f"ROC AUC: {metrics['auc']:.4f} (weighted {metrics['auc_weighted']:.4f})",
            f"AMS on test, thresholds from {a['threshold_split']}: {best['value']:.3f} at the best"
            f" (score >= {best['threshold']:.4g}, {best['selected_fraction']:.1%} selected),",
            f"  {top['value']:.3f} at the top {top['fraction']:.0%} (score >= "
            f"{top['threshold']:.4g}, {top['selected_fraction']:.1%} selected)",
        ]
        if "note" in a:
            lines.append(f"Note: {a['note']}")
    else:
        lines.append(metrics.get("warning", ""))
    if "higgsml" in metrics:
        from .higgsml.challenge import summary_lines

        lines += summary_lines(metrics["higgsml"])
    if metrics.get("best_iteration") is not None:
        lines.append(f"Best iteration: {metrics['best_iteration']}")
    timings = metrics.get("timings_s", {})
    if timings:
        lines.append("Time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    width = max(map(len, lines))
    return "\n".join(["=" * width, *lines, "=" * width])
