"""The look shared by every plot: mplhep's neutral ROOT-like style, the "hepdask" label, the
run name, and a "Synthetic data" warning on every plot of a synthetic run.

A figure written without the warning could be mistaken for a real-data result once copied
into slides; so the label is drawn by :meth:`Canvas.figure`, never left to each plot.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Canvas", "auto_bins", "class_colours", "density_hist", "hep_style", "score_range"]

EXPERIMENT = "hepdask"
DPI = 100
MARGINS = {"left": 0.15, "right": 0.96, "bottom": 0.12, "top": 0.93}
MIN_BINS, MAX_BINS = 10, 100

#: background first: the colours of class 0, 1, 2, ... (colour-blind safe, Petroff 2021)
COLOURS = ("#3f90da", "#bd1f01", "#ffa90e", "#94a4a2", "#832db6", "#a96b59", "#e76300",
           "#b9ac70", "#717581", "#92dadd")


def auto_bins(n_events: int, bins: int | str = "auto") -> int:
    """Histogram bins for ``n_events``: ``bins`` itself when a number, else the Rice rule
    (2 n^(1/3), within 10 to 100), so that a small test split does not get empty bins and a
    large one is not over-smoothed."""
    if not isinstance(bins, str):
        return int(bins)
    return int(np.clip(round(2 * max(n_events, 1) ** (1 / 3)), MIN_BINS, MAX_BINS))


def class_colours(n_classes: int) -> list[str]:
    return [COLOURS[k % len(COLOURS)] for k in range(n_classes)]


@dataclass
class Canvas:
    """Makes the figures of one run and labels them; ``rendered`` holds each one's PNG bytes
    (written into the run by the caller: the figures may be drawn on a Dask worker)."""

    run: str
    synthetic: bool = False
    rendered: dict[str, bytes] = field(default_factory=dict)

    @contextmanager
    def figure(self, name: str, *, nrows: int = 1, ncols: int = 1, figsize=(6.4, 5.2),
               margins: dict | None = None, **kwargs) -> Iterator[tuple]:
        """(figure, axes) for ``name`` (e.g. "roc.png"), rendered when the block ends, with the
        label above the frame (where no legend or curve can hide it). The layout is fixed
        (``margins``, as figure fractions): a layout engine costs seconds per figure. No pyplot:
        a figure of its own, whatever backend or figures the process has."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
        fig.subplots_adjust(**{**MARGINS, **(margins or {})})
        yield fig, (axes[0, 0] if nrows == ncols == 1 else axes)
        self._label(fig, axes)
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=DPI)
        self.rendered[name] = out.getvalue()

    def _label(self, fig, axes) -> None:
        """"hepdask" in bold (and "Synthetic data" in italics) top left, the run name top right:
        one mathtext string each, placed without measuring text (which would draw the figure)."""
        title = f"$\\bf{{{EXPERIMENT}}}$"
        if self.synthetic:
            title += " $\\it{Synthetic~data}$"
        if axes.size == 1:
            ax = axes[0, 0]
            ax.text(0.0, 1.015, title, transform=ax.transAxes, va="bottom", fontsize=14)
            ax.text(1.0, 1.015, self.run, transform=ax.transAxes, va="bottom", ha="right",
                    fontsize=12)
            return
        fig.text(0.01, 0.995, title, va="top", ha="left", fontsize=15)
        fig.text(0.99, 0.995, self.run, va="top", ha="right", fontsize=13)


@contextmanager
def hep_style() -> Iterator[None]:
    """mplhep's ROOT style (neutral: no experiment's fonts or logo)."""
    import matplotlib
    import mplhep

    with matplotlib.style.context(mplhep.style.ROOT), matplotlib.rc_context({
        "font.size": 12, "axes.labelsize": 13, "legend.fontsize": 10, "legend.frameon": False,
        "figure.autolayout": False, "figure.constrained_layout.use": False,
        "axes.prop_cycle": matplotlib.cycler(color=COLOURS),
    }):
        yield


def score_range(*arrays: np.ndarray) -> tuple[float, float]:
    """The histogram range of scores: 0 to 1 for probabilities, else the smallest and largest
    finite value of ``arrays`` (0, 1 when there is none)."""
    lo, hi = math.inf, -math.inf
    for a in arrays:
        a = a[np.isfinite(a)]
        if len(a):
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    if not math.isfinite(lo) or (0 <= lo and hi <= 1):
        return 0.0, 1.0
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def density_hist(values: np.ndarray, weights: np.ndarray, edges: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Density (normalised to unit area) and its statistical error, sqrt(sum w^2) per bin."""
    sums = np.histogram(values, edges, weights=weights)[0]
    squares = np.histogram(values, edges, weights=np.square(weights))[0]
    norm = sums.sum() * np.diff(edges)
    norm = np.where(norm > 0, norm, 1.0)
    return sums / norm, np.sqrt(squares) / norm
