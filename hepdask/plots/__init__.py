"""The plots of a run, as a HEP physicist reads them, written as PNG into the run directory.

Binary runs: ``roc.png``, ``rejection.png`` (1/eps_b against eps_s), ``overtraining.png``
(train against test per class, with KS p-values), ``scores.png``, ``ams.png`` (the AMS
against the threshold, the validation-chosen thresholds marked), ``features.png`` and
``correlation.png`` (the inputs, in physical units), ``history.png`` and ``importance.png``.
Multi-class runs get the score and ROC plots per class and the same input, history and
importance plots. Every figure carries the run name, and "Synthetic data" for a synthetic
run. Histograms take their bins from the number of events (``evaluate.bins = "auto"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..evaluate import Split
from ..outputs import atomic_path
from .inputs import MAX_FEATURES, FeatureSample, plot_correlation, plot_features, unit_of
from .performance import (
    plot_ams,
    plot_history,
    plot_importance,
    plot_multiclass,
    plot_overtraining,
    plot_rejection,
    plot_roc,
    plot_scores,
)
from .style import Canvas, auto_bins, hep_style

__all__ = ["FeatureSample", "auto_bins", "plot_all", "render", "unit_of"]

BINARY_NAMES = {0: "background", 1: "signal"}


def plot_all(directory: str | Path, *, test: Split, metrics: Mapping,
             validation: Split | None = None, train: Split | None = None,
             class_totals: Mapping[int, float] | None = None,
             importance: Mapping[str, float] | None = None, history: Mapping | None = None,
             engine: str = "", best_iteration: int | None = None,
             inputs: FeatureSample | None = None, bins: int | str = "auto", run: str = "",
             synthetic: bool = False, class_names: Mapping[int, str] | None = None
             ) -> list[Path]:
    """Write every plot the inputs allow into ``directory``; returns their paths.

    ``test``, ``validation`` and ``train`` are (scores, labels, weights) of the splits (the
    train scores give the overtraining check); ``inputs`` a sample of test events' features in
    physical units. ``metrics`` is :func:`hepdask.evaluate.evaluate_scores`'s. (Drawing the
    figures on the Dask workers was measured slower on the default run: each worker's first
    matplotlib import costs more than the figures.)
    """
    test = _split(test)
    multiclass = np.ndim(test[0]) == 2
    if class_names is None or not multiclass:
        class_names = (BINARY_NAMES if not multiclass
                       else {k: f"class {k}" for k in range(test[0].shape[1])})
    train = _split(train) if train is not None and len(np.unique(train[1])) == 2 else None
    validation = None if validation is None else _split(validation)
    if inputs is not None and not len(inputs.y):
        inputs = None
    jobs: list[tuple] = []  # (plot function, its arguments after the canvas)
    if inputs is not None:
        jobs += [(_plot_features, (inputs, importance, class_names, bins)),
                 (_plot_correlation, (inputs, importance, class_names))]
    if multiclass:
        jobs.append((plot_multiclass, (test, metrics, bins, class_names)))
    elif "auc" in metrics:  # both classes in the test split
        jobs += [(plot_roc, (test, metrics)), (plot_rejection, (test,)),
                 (plot_scores, (test, bins, class_names, class_totals))]
        if train is not None:
            jobs.append((plot_overtraining, (train, test, bins, class_names)))
        if "ams" in metrics and class_totals is not None:
            jobs.append((plot_ams, (test, validation, metrics, class_totals)))
    if history:
        jobs.append((plot_history, (history, engine, best_iteration)))
    if importance:
        jobs.append((plot_importance, (importance, engine)))
    directory = Path(directory)
    written = []
    for plot, args in jobs:
        for name, png in render(run, synthetic, plot, args).items():
            with atomic_path(directory / name) as tmp:
                tmp.write_bytes(png)
            written.append(directory / name)
    return written


def render(run: str, synthetic: bool, plot: Callable, args: tuple) -> dict[str, bytes]:
    """The PNG bytes of the figures ``plot(canvas, *args)`` draws, in hepdask's style."""
    canvas = Canvas(run=run, synthetic=synthetic)
    with hep_style():
        plot(canvas, *args)
    return canvas.rendered


def _plot_features(canvas: Canvas, inputs: FeatureSample, importance, class_names, bins):
    X, names = _chosen(inputs, importance)
    plot_features(canvas, X, inputs.y, inputs.w, names, class_names, bins)


def _plot_correlation(canvas: Canvas, inputs: FeatureSample, importance, class_names):
    X, names = _chosen(inputs, importance)
    plot_correlation(canvas, X, inputs.y, inputs.w, names, class_names)


def _split(split: Split) -> Split:
    scores, y, w = split
    return (np.asarray(scores, dtype=np.float64), np.asarray(y).astype(np.int64),
            np.asarray(w, dtype=np.float64))


def _chosen(inputs: FeatureSample, importance: Mapping[str, float] | None
            ) -> tuple[np.ndarray, list[str]]:
    """The columns shown: the most important first when known, else in layout order; at most
    :data:`MAX_FEATURES`, mask columns (0/1 per object slot) left out."""
    order = [j for j, name in enumerate(inputs.names) if ".mask[" not in name]
    if importance:
        order.sort(key=lambda j: -importance.get(inputs.names[j], 0.0))
    order = order[:MAX_FEATURES]
    return inputs.X[:, order], [inputs.names[j] for j in order]
