"""What the classifier does: ROC and background rejection, the overtraining check, score
distributions, the AMS against the threshold, training curves and feature importance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..evaluate import Split, ams_curve
from .style import Canvas, auto_bins, class_colours, density_hist, score_range

__all__ = [
    "plot_ams",
    "plot_history",
    "plot_importance",
    "plot_multiclass",
    "plot_overtraining",
    "plot_rejection",
    "plot_roc",
    "plot_scores",
]

#: the x-axis of a training curve, by engine
STEP_NAMES = {"xgboost": "boosting round", "keras": "epoch", "torch": "epoch",
              "sklearn": "epoch"}
METRIC_NAMES = {"auc": "AUC", "loss": "Loss", "logloss": "Log-loss", "error": "Error rate",
                "mlogloss": "Multi-class log-loss", "merror": "Multi-class error rate",
                "rmse": "RMSE", "aucpr": "Area under the precision-recall curve"}
IMPORTANCE_NAMES = {"xgboost": "total gain", "sklearn": "|coefficient| (normalised inputs)"}


def plot_roc(canvas: Canvas, test: Split, metrics: Mapping) -> None:
    """The usual ROC (signal against background efficiency) with its AUC, weighted and not."""
    from sklearn.metrics import roc_curve

    scores, y, w = test
    with canvas.figure("roc.png") as (_, ax):
        for weights, tag, key, style in ((None, "unweighted", "auc", "-"),
                                         (w, "weighted", "auc_weighted", "--")):
            fpr, tpr, _ = roc_curve(y, scores, sample_weight=weights)
            ax.plot(fpr, tpr, ls=style, lw=2, label=f"{tag}, AUC = {metrics.get(key, np.nan):.4f}")
        ax.plot([0, 1], [0, 1], ls=":", c="grey", label="random")
        ax.set(xlabel=r"Background efficiency $\varepsilon_b$",
               ylabel=r"Signal efficiency $\varepsilon_s$", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(loc="lower right", title="Test split")


def plot_rejection(canvas: Canvas, test: Split) -> None:
    """Background rejection 1/eps_b (log) against signal efficiency, weighted and not."""
    from sklearn.metrics import roc_curve

    scores, y, w = test
    with canvas.figure("rejection.png") as (_, ax):
        top = 1.0
        for weights, tag, style in ((None, "unweighted", "-"), (w, "weighted", "--")):
            fpr, tpr, _ = roc_curve(y, scores, sample_weight=weights)
            keep = fpr > 0
            ax.plot(tpr[keep], 1 / fpr[keep], ls=style, lw=2, label=tag)
            top = max(top, float((1 / fpr[keep]).max(initial=1.0)))
        efficiency = np.linspace(0.01, 1)
        ax.plot(efficiency, 1 / efficiency, ls=":", c="grey", label="random")
        ax.set(xlabel=r"Signal efficiency $\varepsilon_s$",
               ylabel=r"Background rejection 1/$\varepsilon_b$", yscale="log", xlim=(0, 1),
               ylim=(0.8, top * 30))
        ax.legend(loc="upper right", title="Test split")


def plot_overtraining(canvas: Canvas, train: Split, test: Split, bins: int | str,
                      class_names: Mapping[int, str]) -> None:
    """Train (points, statistical errors) over test (filled) score distributions per class,
    weighted and normalised, with the Kolmogorov-Smirnov p-value of train against test."""
    from scipy.stats import ks_2samp

    s_train, y_train, w_train = train
    s_test, y_test, w_test = test
    n = min(int(np.bincount(y_test, minlength=2).min()),
            int(np.bincount(y_train, minlength=2).min()))
    edges = np.linspace(*score_range(s_train, s_test), auto_bins(n, bins) + 1)
    centres = (edges[1:] + edges[:-1]) / 2
    colours = class_colours(2)
    with canvas.figure("overtraining.png") as (_, ax):
        for label in (0, 1):
            name, colour = class_names[label], colours[label]
            test_sel, train_sel = y_test == label, y_train == label
            density, _ = density_hist(s_test[test_sel], w_test[test_sel], edges)
            ax.stairs(density, edges, fill=True, alpha=0.35, color=colour,
                      label=f"{name} (test)")
            density_train, error = density_hist(s_train[train_sel], w_train[train_sel], edges)
            p = ks_2samp(s_train[train_sel], s_test[test_sel]).pvalue
            ax.errorbar(centres, density_train, yerr=error, fmt="o", ms=3.5, color=colour,
                        label=f"{name} (train), KS p = {p:.3g}")
        ax.set(xlabel="Classifier score", ylabel="Normalised events / bin width (weighted)",
               xlim=(edges[0], edges[-1]), yscale="log")
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, high * 1e-5), high * 40)
        ax.legend(loc="upper center", ncols=2, fontsize=9, title_fontsize=9,
                  title="Kolmogorov-Smirnov p-value of train against test (unweighted)")


def plot_scores(canvas: Canvas, test: Split, bins: int | str, class_names: Mapping[int, str],
                class_totals: Mapping[int, float] | None = None) -> None:
    """The test split's score distribution per class as expected events: each class's weights
    scaled to its total over the whole data set (``class_totals``), log scale, the background
    filled, so the signal's size against the background reads at a glance."""
    scores, y, w = test
    edges = np.linspace(*score_range(scores),
                        auto_bins(int(np.bincount(y, minlength=2).min()), bins) + 1)
    colours = class_colours(2)
    with canvas.figure("scores.png") as (_, ax):
        for label in (0, 1):
            sel = y == label
            scale = class_totals[label] / w[sel].sum() if class_totals else 1.0
            counts = np.histogram(scores[sel], edges, weights=w[sel] * scale)[0]
            ax.stairs(counts, edges, fill=label == 0, alpha=0.5 if label == 0 else 1, lw=2,
                      color=colours[label], label=class_names[label])
        ylabel = "Expected events / bin" if class_totals else "Weighted events / bin"
        ax.set(xlabel="Classifier score", ylabel=ylabel, yscale="log", xlim=(edges[0], edges[-1]))
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, high * 1e-6), high * 50)
        ax.legend(loc="upper center", title="Test split, weights scaled to the full data set"
                  if class_totals else "Test split", ncols=2)


def plot_ams(canvas: Canvas, test: Split, validation: Split | None, metrics: Mapping,
             class_totals: Mapping[int, float]) -> None:
    """AMS against the score threshold on the test (and validation) split, with the thresholds
    the validation split chose (best AMS, top fraction) marked."""
    a = metrics["ams"]
    with canvas.figure("ams.png") as (_, ax):
        curves = [("test", test, "-", 2.0)]
        # from the threshold keeping 25% of the test events: the AMS peaks at high scores
        lowest = float(np.quantile(test[0], 0.75))
        if a["threshold_split"] == "validation" and validation is not None:
            curves.append(("validation", validation, "--", 1.5))
        for name, split, style, width in curves:
            thresholds, _, curve = ams_curve(*split, class_totals, a["b_reg"])
            ax.plot(thresholds, curve, ls=style, lw=width, label=f"{name} split")
        top = f"top {a['top_fraction']['fraction']:.0%}"
        for key, style, colour, name in (("best", "-.", "#ffa90e", "best AMS"),
                                         ("top_fraction", ":", "#832db6", top)):
            point = a[key]
            ax.axvline(point["threshold"], ls=style, c=colour, lw=1.5,
                       label=f"{name} on {a['threshold_split']}: score \u2265 "
                             f"{point['threshold']:.3g}\n  test AMS {point['value']:.3f}, "
                             f"{point['selected_fraction']:.1%} selected")
            lowest = min(lowest, point["threshold"] - 0.02 * (1 - point["threshold"]))
        ax.set(xlabel="Score threshold (events with score \u2265 threshold selected)",
               ylabel=f"AMS ($b_{{reg}}$ = {a['b_reg']:g})",
               xlim=(lowest, float(test[0].max())))
        ax.set_ylim(0, ax.get_ylim()[1] * 1.6)
        ax.legend(loc="upper left", fontsize=9)


def plot_history(canvas: Canvas, history: Mapping, engine: str,
                 best_iteration: int | None = None) -> None:
    """One panel per metric, train and validation, against boosting round or epoch."""
    from matplotlib.ticker import MaxNLocator, NullLocator

    names = sorted({m for h in history.values() for m in h})
    if not names:
        return
    step = STEP_NAMES.get(engine, "iteration")
    width = 5.2 * len(names) + 0.6
    with canvas.figure("history.png", ncols=len(names), figsize=(width, 4.6),
                       margins={"left": 1.0 / width, "right": 1 - 0.3 / width, "top": 0.86,
                                "wspace": 0.3}) as (_, axes):
        for ax, metric in zip(np.ravel(axes), names, strict=True):
            for split, values in history.items():
                if metric in values:
                    ax.plot(np.arange(1, len(values[metric]) + 1), values[metric], lw=2,
                            label=split)
            if best_iteration is not None:
                ax.axvline(best_iteration + 1, ls=":", c="grey",
                           label=f"best {step} ({best_iteration + 1})")
            ax.set(xlabel=step.capitalize(), ylabel=METRIC_NAMES.get(metric, metric))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds and epochs: 1, 2, ...
            if max(map(len, (v.get(metric, ()) for v in history.values()))) < 20:
                ax.xaxis.set_minor_locator(NullLocator())
            ax.legend(loc="best")


def plot_importance(canvas: Canvas, importance: Mapping[str, float], engine: str) -> None:
    """The 20 most important features, largest at the top."""
    total = sum(importance.values()) or 1.0
    top = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:20][::-1]
    height = 0.32 * len(top) + 1.4
    with canvas.figure("importance.png", figsize=(8, height),
                       margins={"left": 0.36, "right": 0.96, "top": 1 - 0.5 / height,
                                "bottom": 0.7 / height}) as (_, ax):
        ax.barh([k for k, _ in top], [v / total for _, v in top], color=class_colours(1)[0])
        ax.set(xlabel=f"Fraction of the importance ({IMPORTANCE_NAMES.get(engine, 'score')})")
        ax.tick_params(axis="y", which="both", left=False, right=False, labelsize=9)
        ax.set_ylim(-0.7, len(top) - 0.3)


def plot_multiclass(canvas: Canvas, test: Split, metrics: Mapping, bins: int | str,
                    class_names: Mapping[int, str]) -> None:
    """Per class k: P(k) for the test events of every true class; one-vs-rest ROC curves."""
    from sklearn.metrics import roc_curve

    scores, y, w = test
    n_classes = scores.shape[1]
    colours = class_colours(n_classes)
    edges = np.linspace(0.0, 1.0, auto_bins(int(np.bincount(y, minlength=n_classes).min()),
                                            bins) + 1)
    width = 4.6 * n_classes
    with canvas.figure("scores.png", ncols=n_classes, figsize=(width, 4.8),
                       margins={"left": 0.9 / width, "right": 1 - 0.2 / width, "top": 0.86,
                                "wspace": 0.25}) as (_, axes):
        for k, ax in enumerate(np.ravel(axes)):
            for label in range(n_classes):
                sel = y == label
                density, _ = density_hist(scores[sel, k], w[sel], edges)
                ax.stairs(density, edges, lw=2, color=colours[label], label=class_names[label])
            ax.set(xlabel=f"P({class_names[k]})", yscale="log", xlim=(0, 1))
            low, high = ax.get_ylim()
            ax.set_ylim(low, high * 30)
            ax.legend(loc="upper center", ncols=2, fontsize=9, title="true class")
        np.ravel(axes)[0].set_ylabel("Normalised events / bin width (weighted)")
    with canvas.figure("roc.png") as (_, ax):
        aucs: Sequence = metrics.get("auc_per_class", [np.nan] * n_classes)
        for k in range(n_classes):
            fpr, tpr, _ = roc_curve(y == k, scores[:, k])
            ax.plot(fpr, tpr, lw=2, color=colours[k],
                    label=f"{class_names[k]} vs rest, AUC = {aucs[k]:.4f}")
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        ax.set(xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1),
               ylim=(0, 1.02))
        ax.legend(loc="lower right", title="Test split")
