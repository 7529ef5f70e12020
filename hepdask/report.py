"""report.html: one self-contained page of a run (plots as data URIs, inline CSS, no script
or network), to open from the run directory or mail to a colleague.

It shows what the run was (name, data source, the synthetic warning), how good the model is
(AUC, AMS, and the HiggsML leaderboard block with its published anchors when the run has
one), every plot, the config, the specs table and the timings.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from .outputs import write_text

__all__ = ["PLOT_ORDER", "write_report"]

#: the plots in the order a physicist reads them, with a caption each; others follow by name
PLOT_ORDER = {
    "roc.png": "ROC curve, weighted and unweighted, with the AUC (test split)",
    "rejection.png": "Background rejection 1/\u03b5<sub>b</sub> against signal efficiency",
    "overtraining.png": "Overtraining check: train (points) against test (filled) per class, "
                        "with the Kolmogorov-Smirnov p-values",
    "scores.png": "Score distributions of the test split per class",
    "ams.png": "AMS against the score threshold; the thresholds chosen on the validation split",
    "features.png": "Input features per class (weighted, normalised, physical units)",
    "correlation.png": "Correlation matrix of the input features per class",
    "history.png": "Training curves",
    "importance.png": "Feature importance",
}

LEFT = ' class="l"'
WIDE = {"features.png", "correlation.png", "history.png"}  # the full width of the page
CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.warning { background: #fff3cd; border: 1px solid #e0b000; padding: 0.6em 1em; margin: 1em 0; }
.note { background: #eef4fb; border: 1px solid #9ab; padding: 0.6em 1em; margin: 1em 0; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure.plot { margin: 0; flex: 1 1 45%; max-width: 49%; } figure.wide { flex-basis: 100%;
  max-width: 100%; } figure img { width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.95em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def write_report(directory: str | Path, metrics: Mapping, *, name: str,
                 config_text: str | None = None, specs=None,
                 plots: Sequence[str | Path] | None = None) -> Path:
    """Write ``directory/report.html`` (atomically) and return its path.

    ``plots``: the PNG files to embed; by default every ``*.png`` of ``directory``.
    ``specs``: the run's :class:`~hepdask.specs.Specs`, for the table of branches.
    """
    directory = Path(directory)
    paths = [Path(p) for p in plots] if plots is not None else sorted(directory.glob("*.png"))
    paths.sort(key=lambda p: (list(PLOT_ORDER).index(p.name) if p.name in PLOT_ORDER
                              else len(PLOT_ORDER), p.name))
    data = metrics.get("data") or {}
    body = [f"<h1>{_e(name)}</h1>",
            f"<p>{_e(metrics.get('engine', ''))} model, "
            f"{metrics.get('features', '?')} features</p>"]
    if data.get("source") == "synthetic":
        body.append('<div class="warning"><b>Synthetic data.</b> These events come from '
                    "hepdask's generator, not from the ATLAS simulation: the numbers and plots "
                    "show that the chain works, not physics results.</div>")
    body += _data_section(data), _metrics_section(metrics)
    if isinstance(metrics.get("higgsml"), Mapping):
        body.append(_higgsml_section(metrics["higgsml"]))
    body.append('<h2>Plots</h2><div class="plots">')
    for path in paths:
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        wide = " wide" if path.name in WIDE else ""
        body.append(f'<figure class="plot{wide}" id="{_e(path.stem)}"><img alt="{_e(path.name)}"'
                    f' src="data:image/png;base64,{encoded}"><figcaption>{_e(path.name)}: '
                    f"{PLOT_ORDER.get(path.name, '')}</figcaption></figure>")
    body.append("</div>")
    if specs is not None:
        body.append(_specs_section(specs))
    timings = metrics.get("timings_s") or {}
    if timings:
        body.append("<h2>Timings</h2>" + _table(["phase", "seconds"],
                                               [[k, f"{v:.1f}"] for k, v in timings.items()]))
    if config_text is not None:
        body.append(f"<h2>Config</h2><pre>{_e(config_text)}</pre>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>hepdask run {_e(name)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    return write_text(directory / "report.html", page)


def _e(value) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str] | None, rows: Sequence[Sequence], *, left: int = 1) -> str:
    """An HTML table (without header row when ``header`` is None: a list of facts); the first
    ``left`` columns left-aligned (names), the rest right-aligned (numbers)."""
    def cells(tag, values):
        return "".join(f"<{tag}{LEFT if i < left else ''}>{_e(v)}</{tag}>"
                       for i, v in enumerate(values))
    head = "" if header is None else "<tr>" + cells("th", header) + "</tr>"
    return ("<table>" + head + "".join("<tr>" + cells("td", row) + "</tr>" for row in rows)
            + "</table>")


def _number(value, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _data_section(data: Mapping) -> str:
    rows = [["source", data.get("source", "?")]]
    if "format" in data:
        rows.append(["format", data["format"]])
    if "dataset" in data:
        rows.append(["data set", data["dataset"]])
    out = "<h2>Data</h2>" + _table(None, rows)
    samples = data.get("samples") or {}
    if samples:
        out += _table(["sample", "events", "files"], [
            [name, s.get("events", ""), ", ".join(Path(f["path"]).name for f in s.get("files", []))]
            for name, s in samples.items()])
    return out


def _metrics_section(metrics: Mapping) -> str:
    rows = [["events (train / validation / test)",
             f"{metrics.get('n_train', '?')} / {metrics.get('n_validation', '?')} / "
             f"{metrics.get('n_test', '?')}"]]
    for key, label in (("auc", "ROC AUC"), ("auc_weighted", "ROC AUC (weighted)"),
                       ("accuracy", "accuracy"), ("best_iteration", "best iteration")):
        if metrics.get(key) is not None:
            rows.append([label, _number(metrics[key])])
    if "auc_per_class" in metrics:
        rows.append(["one-vs-rest AUC per class",
                     ", ".join(f"{a:.4f}" for a in metrics["auc_per_class"])])
    a = metrics.get("ams")
    if isinstance(a, Mapping):
        for key, label in (("best", "the best AMS"),
                           ("top_fraction", f"the top {a['top_fraction'].get('fraction', 0):.0%}")):
            point = a[key]
            rows.append([f"AMS at {label} on {a['threshold_split']} (b_reg = {a['b_reg']:g})",
                         f"{point['value']:.3f} on test (score \u2265 {point['threshold']:.4g}, "
                         f"{point['selected_fraction']:.1%} selected)"])
    out = "<h2>Metrics</h2>" + _table(None, rows)
    for key in ("warning",):
        if metrics.get(key):
            out += f'<div class="warning">{_e(metrics[key])}</div>'
    if isinstance(a, Mapping) and a.get("note"):
        out += f'<div class="note">{_e(a["note"])}</div>'
    return out


def _higgsml_section(block: Mapping) -> str:
    """The leaderboard block of a HiggsML run (``metrics["higgsml"]``): whatever it holds."""
    out = ["<h2>HiggsML challenge</h2>"]
    facts = [[key.replace("_", " "), _number(block[key])] for key in
             ("format", "source", "comparable", "threshold", "threshold_from",
              "selected_fraction_validation") if key in block]
    out.append(_table(None, facts))
    if block.get("note"):
        kind = "note" if block.get("comparable") else "warning"
        out.append(f'<div class="{kind}">{_e(block["note"])}</div>')
    sets = [s for s in ("public", "private") if isinstance(block.get(s), Mapping)]
    if sets:
        columns = ["ams", "auc", "auc_weighted", "selected_fraction", "n_events", "n_signal",
                   "n_background"]
        present = [c for c in columns if any(c in block[s] for s in sets)]
        out.append(_table(["leaderboard set", *(c.replace("_", " ") for c in present)],
                          [[s, *(_number(block[s].get(c), 5) for c in present)] for s in sets]))
    anchors = block.get("anchors") or {}
    if anchors:
        private = (block.get("private") or {}).get("ams")
        rows = [[name, f"{value:.5f}",
                 f"{private - value:+.3f}" if isinstance(private, int | float) else ""]
                for name, value in sorted(anchors.items(), key=lambda kv: -kv[1])]
        out.append("<p>Published private-leaderboard AMS, for comparison:</p>"
                   + _table(["anchor", "private AMS", "this run \u2212 anchor"], rows))
    extra = {k: v for k, v in block.items() if k not in {
        "format", "source", "comparable", "note", "threshold", "threshold_from",
        "selected_fraction_validation", "public", "private", "anchors"}}
    if extra:
        out.append(f"<pre>{_e(json.dumps(extra, indent=1, default=str))}</pre>")
    return "\n".join(out)


def _specs_section(specs) -> str:
    rows = [[b.name, b.count, _number(b.min), _number(b.max), _number(b.mean), _number(b.std),
             b.missing] for b in specs.branches.values()]
    return "<h2>Specs</h2>" + _table(["branch", "count", "min", "max", "mean", "std", "missing"],
                                     rows)
