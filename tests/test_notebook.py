"""examples/higgsml.ipynb runs from its first cell to its last, offline, in a temporary directory:
on the shared 1,000-event sample of the official file (its KaggleSet reassigned, so that the
leaderboard sets exist), or on a small synthetic sample when the shared data are absent."""

from __future__ import annotations

import csv
import re
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "higgsml.ipynb"
SAMPLE = SHARED / "higgsml" / "atlas-higgs-challenge-2014-v2-first1000.csv"
SETS = "t" * 600 + "b" * 150 + "v" * 250  # KaggleSet of the sample's events, in order


def leaderboard_sample(path: Path) -> Path:
    """The shared sample (all ``t``) with its KaggleSet column reassigned as in :data:`SETS`,
    otherwise unchanged: the official format, with public and private leaderboard events."""
    with SAMPLE.open(newline="") as source:
        rows = list(csv.reader(source))
    column = rows[0].index("KaggleSet")
    for row, kaggle_set in zip(rows[1:], SETS, strict=True):
        row[column] = kaggle_set
    with path.open("w", newline="") as out:
        csv.writer(out, lineterminator="\n").writerows(rows)
    return path


def test_the_committed_notebook_has_no_outputs():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", [])


def test_the_higgsml_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    real = SAMPLE.is_file()
    work = tmp_path / "work"
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    csv_path = leaderboard_sample(tmp_path / "official.csv") if real else None
    parameters.source += textwrap.dedent(f"""
        CSV = {str(csv_path) if real else None!r}
        SYNTHETIC_EVENTS = 3000
        CONFIG = {str(REPO / "configs" / "higgs.toml")!r}
        WORKDIR = {str(work)!r}
        WORKERS = 1  # half the start-up and torch imports of two, on CI's 2 shared cores
        NUM_BOOST_ROUND = 60
        EPOCHS = 8
        BATCH_SIZE = 64
    """)
    start = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    elapsed = time.perf_counter() - start
    print(f"the notebook ran in {elapsed:.1f} s")

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert ("SYNTHETIC" in text) is not real
    assert "ROC AUC" in text and "report.html" in text
    # the three looks at the data, and the plots of the two runs
    assert images == 3 + 9 + 3, images

    runs = work / "runs"
    for run in ("higgs-xgboost", "higgs-torch"):
        assert (runs / run / "metrics.json").is_file() and (runs / run / "report.html").is_file()
    with (work / "submission.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["EventId", "RankOrder", "Class"]
    n = 400 if real else 3000  # the b and v events of the sample, else every event
    assert sorted(int(r[1]) for r in rows[1:]) == list(range(1, n + 1))
    assert {r[2] for r in rows[1:]} <= {"s", "b"}

    # The submission scored as Kaggle did gives back the leaderboard AMS of metrics.json.
    scored = re.findall(r"^(\w[\w .]*): (\d+) events, .* AMS (\S+)(?: \(metrics.json: (\S+)\))?$",
                        text, re.MULTILINE)
    if real:
        assert [(name, int(count)) for name, count, *_ in scored] == [("public", 150),
                                                                      ("private", 250)]
        for *_, mine, reported in scored:
            assert np.isclose(float(mine), float(reported.rstrip(")")), atol=1e-3)
    else:
        assert [name for name, *_ in scored] == ["all test.csv events"]
