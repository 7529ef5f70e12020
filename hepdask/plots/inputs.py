"""What the classifier is given: per-feature distributions per class and the correlation
matrix per class, on a sample of the test events in physical units (the normalisation undone).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .style import Canvas, auto_bins, class_colours, density_hist

__all__ = ["FeatureSample", "plot_correlation", "plot_features", "unit_of"]

MAX_FEATURES = 30


@dataclass(frozen=True)
class FeatureSample:
    """Test events' features in physical units (missing values NaN), labels and weights."""

    X: np.ndarray
    y: np.ndarray
    w: np.ndarray
    names: tuple[str, ...]

#: name parts that make a quantity an energy, momentum or mass (HiggsML's and NanoAOD's names)
_GEV = {"pt", "mass", "met", "sumet", "e", "energy", "ht", "mt", "px", "py", "pz", "mht"}
#: name parts that make it an angle, a ratio or a count, whatever else the name says
_NO_UNIT = {"eta", "phi", "deltaeta", "deltaphi", "deltar", "dr", "prodeta", "centrality",
            "ratio", "n", "num", "mask", "charge", "frac", "fraction"}


def unit_of(name: str) -> str:
    """The unit of a feature from its name: "GeV" for momenta, energies and masses, "" for
    angles, ratios, counts and whatever the name does not tell (e.g. DER_pt_ratio_lep_tau: "")."""
    parts = set(re.split(r"[_.\[\]]+", name.lower()))
    return "GeV" if parts & _GEV and not parts & _NO_UNIT else ""


def _axis_label(name: str) -> str:
    unit = unit_of(name)
    return f"{name} [{unit}]" if unit else name


def plot_features(canvas: Canvas, X: np.ndarray, y: np.ndarray, w: np.ndarray,
                  names: Sequence[str], class_names: Mapping[int, str], bins: int | str
                  ) -> None:
    """One panel per feature (at most 30, in the order given): each class's weighted,
    normalised distribution between the 0.5% and 99.5% quantiles, the missing values left out
    (their fraction per class in the legend when there are any)."""
    from matplotlib.ticker import MaxNLocator

    n_features = len(names)
    ncols = min(5, n_features)
    nrows = -(-n_features // ncols)
    classes = sorted(class_names)
    colours = class_colours(len(classes))
    n_bins = min(auto_bins(int(np.bincount(y, minlength=len(classes)).min()), bins), 40)
    width, height = 3.3 * ncols, 2.6 * nrows + 0.8
    with canvas.figure("features.png", nrows=nrows, ncols=ncols, figsize=(width, height),
                       margins={"left": 0.6 / width, "right": 1 - 0.15 / width,
                                "top": 1 - 0.75 / height, "bottom": 0.55 / height,
                                "hspace": 0.55, "wspace": 0.28}) as (fig, axes):
        for ax in np.ravel(axes)[n_features:]:
            ax.set_axis_off()
        for j, (ax, name) in enumerate(zip(np.ravel(axes), names, strict=False)):
            column = X[:, j]
            finite = np.isfinite(column)
            if not finite.any():
                ax.set_axis_off()
                continue
            lo, hi = np.quantile(column[finite], [0.005, 0.995])
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            discrete = np.unique(column[finite][:2000]).size <= 12
            missing = []
            edges = (np.arange(np.floor(lo), np.ceil(hi) + 2) - 0.5 if discrete
                     else np.linspace(lo, hi, n_bins + 1))
            for label, colour in zip(classes, colours, strict=True):
                sel = (y == label) & finite
                density, _ = density_hist(np.clip(column[sel], edges[0], edges[-1]), w[sel],
                                            edges)
                ax.stairs(density, edges, lw=1.5, color=colour, label=class_names[label])
                missing.append(1 - sel.sum() / max(int((y == label).sum()), 1))
            ax.set_xlabel(_axis_label(name), fontsize=10)
            ax.minorticks_off()  # ticks are most of a grid's drawing time
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.set_yticks([])
            ax.tick_params(labelsize=8, top=False)
            ax.set_xlim(edges[0], edges[-1])
            ax.set_ylim(0, ax.get_ylim()[1] * 1.35)
            if max(missing) > 0.005:
                ax.text(0.97, 0.95, "missing: " + ", ".join(f"{m:.0%}" for m in missing),
                        transform=ax.transAxes, ha="right", va="top", fontsize=7)
        for row in np.atleast_2d(axes):
            row[0].set_ylabel("Normalised (weighted)", fontsize=9)
        handles, names_ = np.ravel(axes)[0].get_legend_handles_labels()
        fig.legend(handles, names_, loc="upper center", ncols=len(classes), fontsize=11,
                   bbox_to_anchor=(0.5, 1.0), title_fontsize=9,
                   title="missing values (NaN, the sentinel) left out; \"missing\": their "
                         "fraction for " + ", ".join(class_names[k] for k in classes))


def weighted_correlation(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Pearson correlations of the columns, each pair over the events where both are
    defined (missing values are NaN), by three products of (events x features) matrices:
    ``einsum``, not BLAS, whose threads can spin for seconds on a busy machine for a product
    this size."""
    valid = np.isfinite(X).astype(np.float64)
    n = (w[:, None] * valid).sum(axis=0)
    means = np.einsum("ni,n->i", np.where(valid > 0, X, 0.0), w) / np.where(n > 0, n, 1.0)
    centred = np.where(valid > 0, X - means, 0.0)
    weighted = centred * w[:, None]
    covariance = np.einsum("ni,nj->ij", weighted, centred)
    variance = np.einsum("ni,nj->ij", weighted * centred, valid)  # var of i where j is defined
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = covariance / np.sqrt(variance * variance.T)
    return np.clip(corr, -1, 1)


def plot_correlation(canvas: Canvas, X: np.ndarray, y: np.ndarray, w: np.ndarray,
                     names: Sequence[str], class_names: Mapping[int, str]) -> None:
    """The weighted correlation matrix of the features, one panel per class."""
    classes = sorted(class_names)
    size = 2.0 + 0.17 * len(names)  # the matrix, in inches
    names_in = 0.06 * max(map(len, names)) + 0.2  # tick labels, 7 pt
    width = names_in + len(classes) * (size + 0.3) + 1.2
    height = size + names_in + 0.8
    with canvas.figure("correlation.png", ncols=len(classes), figsize=(width, height),
                       margins={"left": names_in / width, "right": 1 - 1.3 / width,
                                "bottom": names_in / height, "top": 1 - 0.75 / height,
                                "wspace": 0.3 / size}) as (fig, axes):
        image = None
        for i, (ax, label) in enumerate(zip(np.ravel(axes), classes, strict=True)):
            sel = y == label
            corr = weighted_correlation(X[sel].astype(np.float64), w[sel])
            image = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
            ticks = np.arange(len(names))
            ax.set_xticks(ticks, names, rotation=90, fontsize=7)
            ax.set_yticks(ticks, names if i == 0 else [], fontsize=7)
            ax.minorticks_off()
            ax.tick_params(length=0)
            ax.set_title(f"{class_names[label]} ({int(sel.sum())} test events)", fontsize=12)
        bar = fig.add_axes((1 - 1.1 / width, names_in / height, 0.2 / width, size / height))
        fig.colorbar(image, cax=bar, label="Correlation coefficient (weighted)")
