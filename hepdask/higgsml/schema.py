"""The HiggsML data set's schema: its columns, weight totals and KaggleSet sizes, and where the
official file is published."""

from __future__ import annotations

__all__ = ["ANCHORS", "BACKGROUND_TOTAL", "COLUMNS", "CSV_FORMATS", "CSV_NAME", "CSV_URL",
           "FEATURES", "FORMATS", "KAGGLE_SETS", "SIGNAL_TOTAL", "UNDEFINED"]

FEATURES: tuple[str, ...] = (
    "DER_mass_MMC",
    "DER_mass_transverse_met_lep",
    "DER_mass_vis",
    "DER_pt_h",
    "DER_deltaeta_jet_jet",
    "DER_mass_jet_jet",
    "DER_prodeta_jet_jet",
    "DER_deltar_tau_lep",
    "DER_pt_tot",
    "DER_sum_pt",
    "DER_pt_ratio_lep_tau",
    "DER_met_phi_centrality",
    "DER_lep_eta_centrality",
    "PRI_tau_pt",
    "PRI_tau_eta",
    "PRI_tau_phi",
    "PRI_lep_pt",
    "PRI_lep_eta",
    "PRI_lep_phi",
    "PRI_met",
    "PRI_met_phi",
    "PRI_met_sumet",
    "PRI_jet_num",
    "PRI_jet_leading_pt",
    "PRI_jet_leading_eta",
    "PRI_jet_leading_phi",
    "PRI_jet_subleading_pt",
    "PRI_jet_subleading_eta",
    "PRI_jet_subleading_phi",
    "PRI_jet_all_pt",
)
"""The 30 DER_/PRI_ features, in the column order of the official CSV."""

COLUMNS: tuple[str, ...] = ("EventId", *FEATURES, "Weight", "Label", "KaggleSet", "KaggleWeight")
"""All 35 columns of the official CSV, in order."""

FORMATS: dict[str, tuple[str, ...]] = {
    "official": COLUMNS,
    "kaggle-training": ("EventId", *FEATURES, "Weight", "Label"),
    "kaggle-test": ("EventId", *FEATURES),
    "synthetic": COLUMNS,
}
"""The columns of each form of the data, in order: the CERN Open Data file
(atlas-higgs-challenge-2014-v2), Kaggle's training.csv and test.csv, and hepdask's generator
(the official schema)."""
CSV_FORMATS = ("official", "kaggle-training", "kaggle-test")
"""The formats a HiggsML CSV can have (the keys of :data:`FORMATS` that are files one downloads)."""

ANCHORS: dict[str, float] = {
    "winner": 3.80581,
    "best single XGBoost": 3.72370,
    "TMVA BDT baseline": 3.19956,
}
"""Published private-leaderboard AMS values of the challenge, to put a run's private AMS beside."""

SIGNAL_TOTAL = 691.9886
"""Sum of the signal weights of the challenge training set (and of each leaderboard set)."""
BACKGROUND_TOTAL = 410999.847
"""Sum of the background weights of the challenge training set (and of each leaderboard set)."""

CSV_NAME = "atlas-higgs-challenge-2014-v2.csv.gz"
CSV_URL = "https://opendata.cern.ch/record/328/files/atlas-higgs-challenge-2014-v2.csv.gz"
UNDEFINED = -999.0
"""The value of a feature that is undefined for the event (e.g. jet features without jets)."""
KAGGLE_SETS = {"t": 250_000, "b": 100_000, "v": 450_000, "u": 18_238}
"""Events per KaggleSet of the official file: training, public and private leaderboard, unused."""
