"""The ATLAS Higgs Boson Machine Learning Challenge 2014 (HiggsML), hepdask's headline use case.

The challenge file (CERN Open Data record 328) is a CSV, while hepdask trains on ROOT TTrees:

- :mod:`~hepdask.higgsml.schema`: the columns, weight totals and KaggleSet sizes;
- :mod:`~hepdask.higgsml.convert`: the CSV (the official file, Kaggle's training.csv or test.csv,
  told apart by the header) read into columns and written back, and columns written as ROOT file
  series (per class, and per leaderboard set for the official file);
- :mod:`~hepdask.higgsml.synthetic`: a synthetic stand-in with the same schema, the same ``-999``
  pattern and roughly the same shapes, so that examples and tests run offline;
- :mod:`~hepdask.higgsml.preparation`: :func:`prepare` chooses between converting, downloading and
  synthesizing, and records what it did in ``MANIFEST.json``, so that later runs reuse the files
  and a synthetic sample is never mistaken for the real data (:func:`find_prepared` tells, for the
  files a run reads, which manifest lists them). Real data are never replaced or deleted, and
  files that no manifest lists are never overwritten;
- :mod:`~hepdask.higgsml.challenge`: the challenge's own scoring, the AMS of the public and
  private leaderboard sets at a run's threshold (``metrics["higgsml"]``);
- :mod:`~hepdask.higgsml.submission`: the Kaggle submission of a trained model, and its check.
"""

from __future__ import annotations

from . import challenge, submission
from .convert import csv_format, read_csv, write_csv, write_root
from .preparation import MANIFEST_NAME, PreparedData, announce_synthetic, find_prepared, prepare
from .schema import (
    ANCHORS,
    BACKGROUND_TOTAL,
    COLUMNS,
    CSV_NAME,
    CSV_URL,
    FEATURES,
    FORMATS,
    SIGNAL_TOTAL,
)
from .synthetic import synthesize

__all__ = [
    "ANCHORS",
    "BACKGROUND_TOTAL",
    "COLUMNS",
    "CSV_NAME",
    "CSV_URL",
    "FEATURES",
    "FORMATS",
    "MANIFEST_NAME",
    "SIGNAL_TOTAL",
    "PreparedData",
    "announce_synthetic",
    "challenge",
    "csv_format",
    "find_prepared",
    "prepare",
    "read_csv",
    "submission",
    "synthesize",
    "write_csv",
    "write_root",
]
