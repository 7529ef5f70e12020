"""The ATLAS Higgs Boson Machine Learning Challenge 2014 (HiggsML) data: read, synthesize, write as ROOT.

The challenge file (CERN Open Data record 328) is a CSV, while hepdask trains on ROOT TTrees. This
module converts the CSV into one TTree file series per class, and, where the CSV is neither present
nor downloadable, generates a synthetic stand-in with the same schema, the same ``-999`` pattern and
roughly the same shapes, so that examples and tests run offline. :func:`prepare` chooses between the
two and records what it did in ``MANIFEST.json``, so that later runs reuse the files and a synthetic
sample is never mistaken for the real data: :func:`find_prepared` tells, for the files a run reads,
which manifest lists them. Real data are never replaced or deleted, and files that no manifest
lists are never overwritten.
"""

from __future__ import annotations

import datetime
import gzip
import json
import logging
import os
import pathlib
import re
import shutil
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import uproot

from .errors import HepdaskError

__all__ = [
    "BACKGROUND_TOTAL",
    "COLUMNS",
    "CSV_NAME",
    "CSV_URL",
    "FEATURES",
    "MANIFEST_NAME",
    "SIGNAL_TOTAL",
    "PreparedData",
    "announce_synthetic",
    "find_prepared",
    "prepare",
    "read_csv",
    "synthesize",
    "write_root",
]

logger = logging.getLogger("hepdask")

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

SIGNAL_TOTAL = 691.9886
"""Sum of the signal weights of the challenge training set (and of each leaderboard set)."""
BACKGROUND_TOTAL = 410999.847
"""Sum of the background weights of the challenge training set (and of each leaderboard set)."""

CSV_NAME = "atlas-higgs-challenge-2014-v2.csv.gz"
CSV_URL = "https://opendata.cern.ch/record/328/files/atlas-higgs-challenge-2014-v2.csv.gz"
MANIFEST_NAME = "MANIFEST.json"

_UNDEFINED = -999.0
_KAGGLE_SETS = {"t": 250_000, "b": 100_000, "v": 450_000, "u": 18_238}
_CLASSES = ("signal", "background")
_DOWNLOAD_TIMEOUT_S = 10.0
# Entries per TTree.extend call, i.e. per basket: about 100 kB of float32, as in ROOT files written
# by analysis frameworks. Much larger baskets make every partition boundary that splits one
# decompress it twice (measured: +40% read time with 100k-entry baskets and 125k-entry steps).
_ROOT_CHUNK = 25_000

# --- Synthetic generator settings -------------------------------------------------------------
# Tuned so that the per-class quantiles resemble the README's and the classes overlap as in the
# real data: 5-fold XGBoost AUC on 7,521 events (depth 4) ~0.89, as the README reports for the
# real events; with 100k training events (depth 6, 200 trees) the test AUC is ~0.92.
_SIGNAL_FRACTION = 0.3427  # 85,667 of the 250,000 training events
_JET_FRACTIONS = {1: (0.30, 0.32, 0.30, 0.08), 0: (0.46, 0.30, 0.15, 0.10)}  # by Label
# Background composition (Z->tautau, W+jets, ttbar) in each jet bin 0..3.
_BACKGROUND_MIX = np.array(
    [[0.42, 0.58, 0.00], [0.40, 0.52, 0.08], [0.33, 0.42, 0.25], [0.24, 0.31, 0.45]]
)
# Per process (H, Z, W+jets, ttbar): jet pt slope above 30 GeV, jet eta width, VBF fraction among
# events with two or more jets, rapidity width of the di-tau resonance or W (each W in ttbar),
# probability that the MMC finds no solution (more likely when the MET points outside the
# tau-lepton angle), and raw event weights: a few discrete values (with probabilities), or a
# log-normal median, width and range, as the MC samples of the real data.
_JET_SLOPE = (42.0, 30.0, 30.0, 42.0)
_JET_ETA_WIDTH = (1.9, 1.75, 1.75, 1.5)
_VBF_FRACTION = (0.4, 0.0, 0.0, 0.0)
_RAPIDITY_WIDTH = (1.3, 1.9, 1.2, 1.2)
_MMC_UNDEFINED = (0.04, 0.05, 0.26, 0.2)
_DISCRETE_WEIGHTS = {
    0: ((0.001503, 0.001502, 0.002653, 0.018636), (0.43, 0.075, 0.115, 0.38)),
    1: ((1.682, 1.455, 0.744), (0.5, 0.3, 0.2)),
    3: ((0.064, 0.071, 0.074, 0.083), (0.25, 0.25, 0.25, 0.25)),
}
_W_WEIGHT = (3.6, 0.35, 2.0, 7.6)  # W+jets: log-normal median and width, clipped to a range
_DY_CONTINUUM = 0.20  # fraction of Z->tautau drawn from the Drell-Yan continuum above 60 GeV
_FAKE_TAU_ETA_WIDTH = 1.2  # in W+jets
_W_TAU_FRACTION = 0.5  # W -> tau nu -> l nu nu nu among W+jets (before selection)
# MMC model: for a di-tau resonance, the weight of the true log F and the typical log F; for
# other events, the weight of the collinear mass and the fit's prior mass; the log-normal noise,
# the fraction of poor fits and their noise factor.
_MMC_RESONANT = (0.3, 0.45)
_MMC_COLLINEAR = (0.5, 110.0)
_MMC_NOISE = (0.13, 0.2, 2.5)
# Soft activity (underlying event, pile-up), log-normal per event: its spread; at median
# activity, the unclustered recoil per component, the measured fraction of it, the soft-term
# measurement noise per component, and the soft sum E_T (GeV).
_SOFT = {"spread": 0.8, "kick": 22.0, "response": 0.35, "noise": 6.0, "sumet": 45.0}
_ETA_MAX = 2.5  # tau and lepton acceptance
_TAU_RESOLUTION = 0.06  # relative; that of the lepton is negligible
_BLOCK = 65_536  # events generated together
_CANDIDATES_PER_BATCH = 100_000  # per accept-reject round: small enough for the CPU cache
_REAL = np.float32  # the generator computes in single precision: 3 decimals are all that is kept
# Inverse CDF, on a uniform grid, of the visible energy fraction x of tau -> l nu nu, whose
# density is (5 - 9x^2 + 4x^3) / 3: a table lookup is much faster than a search per draw.
_LEP_X_GRID = np.linspace(0.0, 1.0, 4097)
_LEP_X_TABLE = np.interp(
    _LEP_X_GRID, (5 * _LEP_X_GRID - 3 * _LEP_X_GRID**3 + _LEP_X_GRID**4) / 3, _LEP_X_GRID
).astype(_REAL)


Arrays = dict[str, np.ndarray]


# --- Kinematics helpers (single precision) ---------------------------------------------------


def _uniform(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    return rng.random(n, dtype=_REAL) * (high - low) + low


def _normal(rng: np.random.Generator, mean: float, sigma: float, n: int) -> np.ndarray:
    return rng.standard_normal(n, dtype=_REAL) * sigma + mean


def _logistic(rng: np.random.Generator, sigma: float, n: int) -> np.ndarray:
    """A bell-shaped draw of standard deviation sigma, three times cheaper than a Gaussian."""
    u = rng.random(n, dtype=_REAL)
    return np.log((u + 1e-7) / (1.0 + 1e-7 - u)) * (sigma * np.sqrt(3) / np.pi)


def _wrap(phi: np.ndarray) -> np.ndarray:
    """Map angles onto [-pi, pi)."""
    return np.remainder(phi + np.pi, 2 * np.pi) - np.pi


def _breit_wigner(
    rng: np.random.Generator, n: int, mass: float, width: float, low: float, high: float
) -> np.ndarray:
    """Sample a Cauchy line shape restricted to [low, high] by inverting its CDF."""
    lo, hi = (float(np.arctan((x - mass) / (width / 2))) for x in (low, high))
    return mass + width / 2 * np.tan(_uniform(rng, lo, hi, n))


def _decay(
    rng: np.random.Generator,
    mass: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    rapidity_width: float,
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Isotropic two-body decay into massless daughters, boosted to the lab: two (px, py, pz).

    The parent has the given mass and transverse momentum, and a bell-shaped rapidity.
    """
    n = mass.size
    cos_t = _uniform(rng, -1.0, 1.0, n)
    sin_t = np.sqrt(1.0 - cos_t * cos_t)
    azimuth = _uniform(rng, -np.pi, np.pi, n)
    half = 0.5 * mass
    kx, ky, kz = half * sin_t * np.cos(azimuth), half * sin_t * np.sin(azimuth), half * cos_t
    mt = np.sqrt(mass * mass + px * px + py * py)
    exp_y = np.exp(_logistic(rng, rapidity_width, n))
    energy, pz = 0.5 * mt * (exp_y + 1 / exp_y), 0.5 * mt * (exp_y - 1 / exp_y)
    bx, by, bz = px / energy, py / energy, pz / energy
    gamma = energy / mass
    along = gamma * gamma / (gamma + 1) * (bx * kx + by * ky + bz * kz)  # (gamma-1)/b^2 * b.k
    a, b = along + gamma * half, gamma * half - along
    return (kx + a * bx, ky + a * by, kz + a * bz), (b * bx - kx, b * by - ky, b * bz - kz)


def _lepton_fraction(rng: np.random.Generator, n: int) -> np.ndarray:
    """Visible energy fraction of a leptonic tau decay (inverse CDF of the V-A spectrum)."""
    u = rng.random(n, dtype=_REAL) * (_LEP_X_TABLE.size - 1)
    i = u.astype(np.int32)
    return _LEP_X_TABLE[i] + (u - i) * (_LEP_X_TABLE[i + 1] - _LEP_X_TABLE[i])


def _hadron_fraction(rng: np.random.Generator, n: int) -> np.ndarray:
    """Visible energy fraction of a hadronic tau decay: a Kumaraswamy(1.6, 1.2) law, mean ~0.57,
    approximating the pi/rho/a1 mixture, sampled in closed form."""
    return (1.0 - (1.0 - rng.random(n, dtype=_REAL)) ** (1 / 1.2)) ** (1 / 1.6)


def _visible(
    rng: np.random.Generator,
    event: Arrays,
    prefix: str,
    momentum: tuple[np.ndarray, ...],
    fraction: np.ndarray | float,
    resolution: float,
) -> None:
    """Store the measured visible part of a tau (fraction 1: a prompt lepton) as px, py, pz, pt;
    add the neutrinos and the measurement error to the true MET."""
    px, py, pz = momentum
    measured = fraction * _normal(rng, 1.0, resolution, px.size) if resolution else fraction
    event[f"{prefix}_px"], event[f"{prefix}_py"] = measured * px, measured * py
    event[f"{prefix}_pz"] = measured * pz
    event[f"{prefix}_pt"] = np.sqrt(event[f"{prefix}_px"] ** 2 + event[f"{prefix}_py"] ** 2)
    event["met_x"] = event.get("met_x", 0.0) + (1 - measured) * px
    event["met_y"] = event.get("met_y", 0.0) + (1 - measured) * py


def _jets(rng: np.random.Generator, jet_num: np.ndarray, process: int) -> Arrays:
    """Jets above 30 GeV, the event's soft activity, and the recoil the tau pair must balance.

    Jets are drawn flat (only the existing ones, ~1.1 per event); pt is 30 GeV plus an exponential,
    generated directly in descending order (Renyi's representation), so leading and subleading
    need no sort. ``jet_num == 3`` means three or more: some events get a fourth or fifth jet that
    counts in ``jet_all_pt`` and the recoil only. VBF events get two forward-backward tag jets.
    """
    n = jet_num.size
    u = rng.random(n, dtype=_REAL)
    count = jet_num + (jet_num == 3) * ((u > 0.65).astype(np.int32) + (u > 0.9))
    starts = np.cumsum(count) - count
    owner = np.repeat(np.arange(n), count)
    position = np.arange(owner.size) - starts[owner]
    k = owner.size
    vbf = (jet_num >= 2) & (rng.random(n, dtype=_REAL) < _VBF_FRACTION[process])
    slope = _JET_SLOPE[process] * np.where(vbf, 1.1, 1.0).astype(_REAL)[owner]
    steps = rng.standard_exponential(k) / (position + 1)  # double: the sums below are long
    tail = np.concatenate([np.cumsum(steps[::-1])[::-1], [0.0]])
    pt = 30.0 + slope * (tail[:-1] - tail[(starts + count)[owner]]).astype(_REAL)
    eta = _normal(rng, 0.0, _JET_ETA_WIDTH[process], k) * np.where(position > 0, 1.15, 1.0)
    tag = np.flatnonzero(vbf[owner] & (position < 2))
    side = np.where(rng.random(n) < 0.5, 1.0, -1.0)[owner[tag]] * np.where(position[tag], -1, 1)
    eta[tag] = side * np.abs(_normal(rng, 2.0, 0.9, tag.size))
    outside = np.abs(eta) >= 4.5
    eta[outside] = _uniform(rng, -4.5, 4.5, np.count_nonzero(outside))
    phi = _uniform(rng, -np.pi, np.pi, k)
    cos, sin = np.cos(phi), np.sin(phi)
    error = pt * _normal(rng, 0.0, 0.1, k)  # true minus measured jet pt

    # The unclustered recoil ("kick") is only partly measured: the rest goes into the MET, and
    # the measured part is all that pt_tot sees.
    activity = np.exp(_normal(rng, 0.0, _SOFT["spread"], n))
    kick_x, kick_y = (
        _normal(rng, 0.0, _SOFT["kick"], n) * activity,
        _normal(rng, 0.0, _SOFT["kick"], n) * activity,
    )
    soft_x = _SOFT["response"] * kick_x + _normal(rng, 0.0, _SOFT["noise"], n) * activity
    soft_y = _SOFT["response"] * kick_y + _normal(rng, 0.0, _SOFT["noise"], n) * activity
    out = {
        "soft_sumet": _SOFT["sumet"] * activity,
        "jet_all_pt": np.bincount(owner, pt, n),
        "recoil_x": np.bincount(owner, (pt + error) * cos, n) + kick_x,
        "recoil_y": np.bincount(owner, (pt + error) * sin, n) + kick_y,
        "met_error_x": np.bincount(owner, error * cos, n) + kick_x - soft_x,
        "met_error_y": np.bincount(owner, error * sin, n) + kick_y - soft_y,
    }
    out = {name: values.astype(_REAL) for name, values in out.items()}
    for i, which in enumerate(("leading", "subleading")):
        present = count > i
        for name, values in (("pt", pt), ("eta", eta), ("phi", phi)):
            column = np.full(n, _UNDEFINED, _REAL)
            column[present] = values[starts[present] + i]
            out[f"jet_{which}_{name}"] = column
    out["process"] = np.full(n, process, np.int8)
    return out


def _ditau(rng: np.random.Generator, mass: np.ndarray, recoil: Arrays, rapidity: float) -> Arrays:
    """A resonance balancing the recoil, decaying to tau_lep tau_had.

    Most candidates fail the lepton cut, so only those passing it (``candidate``) are kept.
    """
    tau_lep, tau_had = _decay(rng, mass, -recoil["recoil_x"], -recoil["recoil_y"], rapidity)
    fraction = _lepton_fraction(rng, mass.size)
    keep = np.flatnonzero(_accepted(fraction, *tau_lep, 26.0))
    event = {"mass": mass[keep], "candidate": keep}
    _visible(rng, event, "lep", tuple(c[keep] for c in tau_lep), fraction[keep], 0.0)
    tau_had = tuple(c[keep] for c in tau_had)
    _visible(rng, event, "tau", tau_had, _hadron_fraction(rng, keep.size), _TAU_RESOLUTION)
    return event


def _higgs(rng: np.random.Generator, recoil: Arrays) -> Arrays:
    """H(125) -> tautau (from gluon or vector-boson fusion: the difference is in the jets)."""
    return _ditau(rng, np.full(recoil["recoil_x"].size, 125.0, _REAL), recoil, _RAPIDITY_WIDTH[0])


def _z(rng: np.random.Generator, recoil: Arrays) -> Arrays:
    """Z/gamma* -> tautau: the Z line shape plus a falling Drell-Yan continuum (~1/m^3)."""
    n = recoil["recoil_x"].size
    mass = _breit_wigner(rng, n, 91.19, 2.5, 70.0, 110.0)
    continuum = rng.random(n) < _DY_CONTINUUM
    lo, hi = 60.0**-2, 400.0**-2
    mass[continuum] = (lo - rng.random(np.count_nonzero(continuum)) * (lo - hi)) ** -0.5
    return _ditau(rng, mass, recoil, _RAPIDITY_WIDTH[1])


def _w(rng: np.random.Generator, recoil: Arrays) -> Arrays:
    """W(-> l nu) + jets, where a jet fakes the hadronic tau: a steeply falling tau pt.

    Part of the leptons come from W -> tau nu, tau -> l nu nu: softer, with more MET.
    """
    n = recoil["recoil_x"].size
    pt = 18.0 + 10.0 * rng.standard_exponential(n, dtype=_REAL)
    phi = _uniform(rng, -np.pi, np.pi, n)
    fake = (
        pt * np.cos(phi),
        pt * np.sin(phi),
        pt * np.sinh(_normal(rng, 0.0, _FAKE_TAU_ETA_WIDTH, n)),
    )
    event = {"mass": np.full(n, np.nan, _REAL)}
    _visible(rng, event, "tau", fake, 1.0, _TAU_RESOLUTION)
    mass = _breit_wigner(rng, n, 80.4, 2.1, 60.0, 100.0)
    px, py = -recoil["recoil_x"] - fake[0], -recoil["recoil_y"] - fake[1]
    lepton, neutrino = _decay(rng, mass, px, py, _RAPIDITY_WIDTH[2])
    from_tau = rng.random(n, dtype=_REAL) < _W_TAU_FRACTION
    fraction = np.where(from_tau, _lepton_fraction(rng, n), 1.0)
    _visible(rng, event, "lep", lepton, fraction, 0.0)
    event["met_x"] += neutrino[0]
    event["met_y"] += neutrino[1]
    return event


def _ttbar(rng: np.random.Generator, recoil: Arrays) -> Arrays:
    """ttbar -> b W(-> l nu) b W(-> tau nu): two boosted W's, hard b jets, three neutrinos."""
    n = recoil["recoil_x"].size
    pt = 20.0 * rng.standard_gamma(2.0, n, dtype=_REAL)
    phi = _uniform(rng, -np.pi, np.pi, n)
    w1_x, w1_y = pt * np.cos(phi), pt * np.sin(phi)
    masses = _breit_wigner(rng, 2 * n, 80.4, 2.1, 60.0, 100.0)
    lepton, nu_1 = _decay(rng, masses[:n], w1_x, w1_y, _RAPIDITY_WIDTH[3])
    w2_x, w2_y = -recoil["recoil_x"] - w1_x, -recoil["recoil_y"] - w1_y
    tau, nu_2 = _decay(rng, masses[n:], w2_x, w2_y, _RAPIDITY_WIDTH[3])
    event = {"mass": np.full(n, np.nan, _REAL)}
    _visible(rng, event, "lep", lepton, 1.0, 0.0)
    _visible(rng, event, "tau", tau, _hadron_fraction(rng, n), _TAU_RESOLUTION)
    event["met_x"] += nu_1[0] + nu_2[0]
    event["met_y"] += nu_1[1] + nu_2[1]
    return event


_PROCESSES: tuple[Callable[[np.random.Generator, Arrays], Arrays], ...] = (_higgs, _z, _w, _ttbar)


def _accepted(
    scale: np.ndarray | float, px: np.ndarray, py: np.ndarray, pz: np.ndarray, pt_min: float
) -> np.ndarray:
    """Whether scale * (px, py, pz) has pt above threshold and |eta| < 2.5 (|pz| < sinh(2.5) pt)."""
    pt = np.sqrt(px * px + py * py)
    return (scale * pt >= pt_min) & (np.abs(pz) < np.sinh(_ETA_MAX) * pt)


def _selected(event: Arrays) -> np.ndarray:
    """The challenge's preselection: a hadronic tau (20 GeV) and a lepton (26 GeV) in acceptance."""
    tau, lep = ([event[f"{p}_{c}"] for c in ("px", "py", "pz")] for p in ("tau", "lep"))
    return _accepted(1.0, *tau, 20.0) & _accepted(1.0, *lep, 26.0)


def _sample(rng: np.random.Generator, process: int, jet_num: np.ndarray) -> Arrays:
    """Events of one process: jets per event, then tau pairs by accept-reject until all pass.

    Slot ``i`` of a batch owns candidates ``i, i + T, i + 2T, ...``, all sharing its jets; slots
    without a passing candidate go round again. A process may drop candidates early, returning
    the positions of those it keeps as ``candidate``. Batches are capped in size to bound memory.
    """
    out = _jets(rng, jet_num, process)
    todo = np.arange(jet_num.size)
    rate = 0.1
    while todo.size:
        per_slot = int(np.clip(np.ceil(0.4 / rate), 1, 64))
        slots = todo[: max(1, _CANDIDATES_PER_BATCH // per_slot)]
        size = per_slot * slots.size
        recoil = {name: np.tile(out[name][slots], per_slot) for name in ("recoil_x", "recoil_y")}
        candidates = _PROCESSES[process](rng, recoil)
        passed = _selected(candidates)
        position = candidates.pop("candidate", np.arange(size))[passed]
        rate = max(position.size / size, 0.01)
        grid = np.zeros(size, bool)
        grid[position] = True
        row = np.empty(size, np.int64)
        row[position] = np.flatnonzero(passed)
        first = grid.reshape(per_slot, slots.size).argmax(axis=0)
        chosen = first * slots.size + np.arange(slots.size)
        found = grid[chosen]
        pick = row[chosen[found]]
        for name, values in candidates.items():
            out.setdefault(name, np.empty(jet_num.size, values.dtype))[slots[found]] = values[pick]
        todo = np.concatenate([slots[~found], todo[slots.size :]])
    return out


def _mass(
    pt1: np.ndarray,
    eta1: np.ndarray,
    phi1: np.ndarray,
    pt2: np.ndarray,
    eta2: np.ndarray,
    phi2: np.ndarray,
) -> np.ndarray:
    """Invariant mass of two massless objects."""
    return np.sqrt(np.maximum(2 * pt1 * pt2 * (np.cosh(eta1 - eta2) - np.cos(phi1 - phi2)), 0.0))


def _features(rng: np.random.Generator, ev: Arrays, jet_num: np.ndarray) -> Arrays:
    """Measured MET, the MMC and the derived features, from the generated primitives."""
    n = jet_num.size
    tau_x, tau_y, lep_x, lep_y = ev["tau_px"], ev["tau_py"], ev["lep_px"], ev["lep_py"]
    tau = ev["tau_pt"], np.arcsinh(ev["tau_pz"] / ev["tau_pt"]), np.arctan2(tau_y, tau_x)
    lep = ev["lep_pt"], np.arcsinh(ev["lep_pz"] / ev["lep_pt"]), np.arctan2(lep_y, lep_x)
    jet_all_pt = ev["jet_all_pt"]
    sumet = tau[0] + lep[0] + jet_all_pt + ev["soft_sumet"]
    met_x, met_y = ev["met_x"] + ev["met_error_x"], ev["met_y"] + ev["met_error_y"]
    met, met_phi = np.sqrt(met_x**2 + met_y**2), np.arctan2(met_y, met_x)
    lead = ev["jet_leading_pt"], ev["jet_leading_eta"], ev["jet_leading_phi"]
    sub = ev["jet_subleading_pt"], ev["jet_subleading_eta"], ev["jet_subleading_phi"]
    jet_x = np.where(jet_num >= 1, lead[0] * np.cos(lead[2]), 0.0)
    jet_x += np.where(jet_num >= 2, sub[0] * np.cos(sub[2]), 0.0)
    jet_y = np.where(jet_num >= 1, lead[0] * np.sin(lead[2]), 0.0)
    jet_y += np.where(jet_num >= 2, sub[0] * np.sin(sub[2]), 0.0)
    mass_vis = _mass(*tau, *lep)

    # MET azimuth relative to the tau-lepton bisector: sqrt(2) on it, -sqrt(2) opposite.
    sign = np.sign(np.sin(tau[2] - lep[2]))
    a, b = np.sin(met_phi - lep[2]) * sign, np.sin(tau[2] - met_phi) * sign
    centrality = (a + b) / np.sqrt(np.maximum(a**2 + b**2, 1e-12))

    # MMC. For a di-tau resonance, m_vis * F with F = M / m_vis = 1 / sqrt(x_tau x_lep) estimated
    # with shrinkage towards its typical value, so that the MMC error is correlated with m_vis as
    # in the real likelihood fit. Otherwise, the collinear-approximation mass from the MET, pulled
    # towards the fit's prior. Both get log-normal noise, with a tail of poor fits.
    det = tau_x * lep_y - tau_y * lep_x
    det = np.where(np.abs(det) < 1e-6, 1e-6, det)
    a_tau = np.clip((met_x * lep_y - met_y * lep_x) / det, 0.0, 3.0)
    a_lep = np.clip((tau_x * met_y - tau_y * met_x) / det, 0.0, 3.0)
    weight, typical = _MMC_RESONANT
    resonant = mass_vis * (ev["mass"] / mass_vis) ** weight * np.exp((1 - weight) * typical)
    weight, prior = _MMC_COLLINEAR
    collinear = (mass_vis * np.sqrt((1 + a_tau) * (1 + a_lep))) ** weight * prior ** (1 - weight)
    width, tail, factor = _MMC_NOISE
    noise = _normal(rng, 0.0, width, n) * np.where(rng.random(n, dtype=_REAL) < tail, factor, 1.0)
    mmc = np.where(np.isnan(ev["mass"]), collinear, resonant) * np.exp(noise)
    fail = np.asarray(_MMC_UNDEFINED)[ev["process"]] * np.where(centrality < 0, 1.5, 0.6)
    mmc[rng.random(n) < fail] = _UNDEFINED

    two = jet_num >= 2
    deta_jj = np.abs(lead[1] - sub[1])
    mid = 0.5 * (lead[1] + sub[1])
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # where undefined
        lep_centrality = np.exp(-4.0 / deta_jj**2 * (lep[1] - mid) ** 2)
        mass_jj = _mass(*lead, *sub)
    return {
        "DER_mass_MMC": mmc,
        "DER_mass_transverse_met_lep": np.sqrt(2 * met * lep[0] * (1 - np.cos(met_phi - lep[2]))),
        "DER_mass_vis": mass_vis,
        "DER_pt_h": np.sqrt((tau_x + lep_x + met_x) ** 2 + (tau_y + lep_y + met_y) ** 2),
        "DER_deltaeta_jet_jet": np.where(two, deta_jj, _UNDEFINED),
        "DER_mass_jet_jet": np.where(two, mass_jj, _UNDEFINED),
        "DER_prodeta_jet_jet": np.where(two, lead[1] * sub[1], _UNDEFINED),
        "DER_deltar_tau_lep": np.sqrt((tau[1] - lep[1]) ** 2 + _wrap(tau[2] - lep[2]) ** 2),
        "DER_pt_tot": np.sqrt(
            (tau_x + lep_x + met_x + jet_x) ** 2 + (tau_y + lep_y + met_y + jet_y) ** 2
        ),
        "DER_sum_pt": tau[0] + lep[0] + jet_all_pt,
        "DER_pt_ratio_lep_tau": lep[0] / tau[0],
        "DER_met_phi_centrality": centrality,
        "DER_lep_eta_centrality": np.where(two, np.nan_to_num(lep_centrality), _UNDEFINED),
        "PRI_tau_pt": tau[0],
        "PRI_tau_eta": tau[1],
        "PRI_tau_phi": tau[2],
        "PRI_lep_pt": lep[0],
        "PRI_lep_eta": lep[1],
        "PRI_lep_phi": lep[2],
        "PRI_met": met,
        "PRI_met_phi": met_phi,
        "PRI_met_sumet": sumet,
        **{f"PRI_{name}": ev[name] for name in ev if name.startswith("jet_")},
    }


def _kaggle_sets(rng: np.random.Generator, n: int) -> np.ndarray:
    """KaggleSet codes in the official proportions: training first, the rest shuffled."""
    share = np.array(list(_KAGGLE_SETS.values()), float) * n / sum(_KAGGLE_SETS.values())
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(counts - share)[: n - counts.sum()]] += 1  # largest remainders
    codes = np.repeat(np.frombuffer("".join(_KAGGLE_SETS).encode(), np.uint8), counts)
    codes[counts[0] :] = rng.permutation(codes[counts[0] :])
    return codes


def _normalised(weight: np.ndarray, label: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Scale weights so that in every group each class sums to its challenge total."""
    key = group * 2 + label
    sums = np.bincount(key, weights=weight, minlength=key.max(initial=0) + 1)
    totals = np.where(label == 1, SIGNAL_TOTAL, BACKGROUND_TOTAL)
    return weight * totals / sums[key]


def _block(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, Arrays]:
    """Labels, processes and feature columns (rounded to 3 decimals, as in the CSV) of n events."""
    label = rng.random(n) < _SIGNAL_FRACTION
    cumulative = np.cumsum([_JET_FRACTIONS[0], _JET_FRACTIONS[1]], axis=1)[label.astype(int)]
    jet_num = (rng.random(n)[:, None] > cumulative[:, :3]).sum(axis=1).astype(np.int32)
    mix = np.cumsum(_BACKGROUND_MIX, axis=1)[jet_num, :2]
    process = np.where(label, 0, 1 + (rng.random(n)[:, None] > mix).sum(axis=1))
    events: Arrays = {}
    for code in range(len(_PROCESSES)):
        where = np.flatnonzero(process == code)
        for name, values in _sample(rng, code, jet_num[where]).items():
            events.setdefault(name, np.empty(n, values.dtype))[where] = values
    features = {
        name: np.round(values, 3) for name, values in _features(rng, events, jet_num).items()
    }
    features["PRI_jet_num"] = jet_num
    return label, process, features


def synthesize(n_events: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Generate a synthetic HiggsML sample with the official schema, for offline use.

    Events are simulated as H -> tautau (gluon and vector-boson fusion) against Z -> tautau,
    W + jets with a fake tau, and ttbar, each through a two-body decay chain, a tau visible-energy
    model, the jet multiplicities of the real data, MET resolution and the challenge preselection;
    derived features are computed from the primitives with the challenge's definitions. The
    classes overlap about as much as in the real data (XGBoost, 200 trees of depth 6, reaches a
    test AUC of ~0.92 with 100k training events), but this is NOT the challenge data: use it for
    plumbing, tests and timing, not for physics numbers. About 0.6 million events per second.

    Parameters
    ----------
    n_events
        Number of events, both classes together (about 34% signal).
    seed
        Seed of the random generator; equal arguments give identical samples.

    Returns
    -------
    dict of numpy arrays
        ``EventId`` (int64, from 100000), the 30 :data:`FEATURES` (float32, ``PRI_jet_num``
        int32, -999 where undefined), ``Weight`` (float32, each class summing to its challenge
        total), ``Label`` (int8, 1 signal), ``KaggleSet`` (uint8 ASCII code of t/b/v/u) and
        ``KaggleWeight`` (float32, normalised per KaggleSet and class).
    """
    if isinstance(n_events, bool) or not isinstance(n_events, int | np.integer) or n_events < 0:
        raise HepdaskError(
            f"synthesize(n_events={n_events!r}): the number of events must be a non-negative "
            "integer; pass, for example, 250_000."
        )
    n = int(n_events)
    rng = np.random.default_rng(seed)
    label, process = np.empty(n, np.int8), np.empty(n, np.int8)
    columns: dict[str, np.ndarray] = {"EventId": np.arange(100_000, 100_000 + n, dtype=np.int64)}
    for name in FEATURES:
        columns[name] = np.empty(n, np.int32 if name == "PRI_jet_num" else np.float32)
    for start in range(0, n, _BLOCK):  # blocks keep the working set in the CPU cache
        stop = min(start + _BLOCK, n)
        label[start:stop], process[start:stop], block = _block(rng, stop - start)
        for name, values in block.items():
            columns[name][start:stop] = values

    weight = np.empty(n)
    for code, (values, probabilities) in _DISCRETE_WEIGHTS.items():
        where = np.flatnonzero(process == code)
        weight[where] = rng.choice(values, where.size, p=probabilities)
    median, width, low, high = _W_WEIGHT
    where = np.flatnonzero(process == 2)
    weight[where] = np.clip(rng.lognormal(np.log(median), width, where.size), low, high)
    kaggle_set = _kaggle_sets(rng, n)
    set_index = np.searchsorted(np.frombuffer(b"btuv", np.uint8), kaggle_set)
    columns["Weight"] = _normalised(weight, label, np.zeros(n, np.int64)).astype(np.float32)
    columns["Label"] = label
    columns["KaggleSet"] = kaggle_set
    columns["KaggleWeight"] = _normalised(weight, label, set_index).astype(np.float32)
    return columns


# --- CSV ------------------------------------------------------------------------------------


def _is_gzip(path: pathlib.Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _codes(what: str, series: Any, codes: dict[str, int], dtype: type) -> np.ndarray:
    """Map a categorical CSV column onto integer codes, rejecting unknown or missing values."""
    categories = [str(category) for category in series.cat.categories]
    index = series.cat.codes.to_numpy()
    bad = sorted(set(categories) - set(codes))
    if bad or (index < 0).any():
        raise HepdaskError(
            f"{what} has {series.name} value(s) {', '.join(map(repr, bad)) or 'missing'}; only "
            f"{', '.join(codes)} are valid. Use the unmodified official file."
        )
    return np.array([codes[category] for category in categories], dtype=dtype)[index]


def _no_csv(what: str) -> HepdaskError:
    return HepdaskError(
        f"{what} does not exist. Download {CSV_NAME} from CERN Open Data record 328 "
        f"({CSV_URL}) and give its path, or check the spelling."
    )


def read_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read the official HiggsML CSV (plain or gzip-compressed) into the :func:`synthesize` schema.

    ``Label`` becomes 1 (``s``) / 0 (``b``) and ``KaggleSet`` the ASCII code of its letter, so
    that real and synthetic samples are interchangeable downstream; ``-999.0`` values are kept.
    """
    import pandas as pd  # only needed here, and slow to import

    path = pathlib.Path(path)
    what = f"The HiggsML CSV {path}"
    if not path.is_file():
        raise _no_csv(what)
    try:
        gz = _is_gzip(path)
        with (gzip.open if gz else open)(path, "rt", encoding="ascii", newline="") as handle:
            header = handle.readline().strip().split(",")
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise HepdaskError(
            f"{what} cannot be read ({exc}). It must be the official CSV, plain or gzip-compressed; "
            "download it again if it is truncated or corrupt."
        ) from exc
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise HepdaskError(
            f"{what} lacks the column(s) {', '.join(missing)}, so it is not the official "
            "atlas-higgs-challenge-2014-v2 file (the older Kaggle training.csv has no KaggleSet or "
            "KaggleWeight). Use the file from CERN Open Data record 328."
        )
    dtypes: dict[str, Any] = dict.fromkeys(COLUMNS, np.float32)
    dtypes.update(EventId=np.int64, PRI_jet_num=np.int32, Label="category", KaggleSet="category")
    try:
        frame = pd.read_csv(
            path, usecols=list(COLUMNS), dtype=dtypes, compression="gzip" if gz else None
        )
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise HepdaskError(
            f"{what} cannot be parsed ({exc}). Every value must be a number, except Label (s/b) and "
            "KaggleSet (t/b/v/u); download the file again if it is truncated or was edited."
        ) from exc
    columns = {name: frame[name].to_numpy() for name in COLUMNS}
    columns["Label"] = _codes(what, frame["Label"], {"s": 1, "b": 0}, np.int8)
    codes = {key: ord(key) for key in _KAGGLE_SETS}
    columns["KaggleSet"] = _codes(what, frame["KaggleSet"], codes, np.uint8)
    return columns


# --- ROOT -----------------------------------------------------------------------------------


def _write_tree(path: pathlib.Path, tree: str, branches: Mapping[str, np.ndarray]) -> None:
    """Write one TTree file under a temporary name and rename it into place once complete."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with uproot.recreate(temporary) as file:
            ttree = file.mktree(tree, {name: values.dtype for name, values in branches.items()})
            size = len(next(iter(branches.values())))
            for start in range(0, size, _ROOT_CHUNK):
                ttree.extend({k: v[start : start + _ROOT_CHUNK] for k, v in branches.items()})
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _check_events_per_file(where: str, events_per_file: object) -> None:
    if (
        isinstance(events_per_file, bool)
        or not isinstance(events_per_file, int)
        or events_per_file < 1
    ):
        raise HepdaskError(
            f"{where}: events_per_file={events_per_file!r} must be a positive integer, for example "
            "250_000."
        )


def write_root(
    columns: Mapping[str, np.ndarray],
    directory: str | os.PathLike[str],
    *,
    events_per_file: int = 250_000,
    tree: str = "events",
) -> dict[str, list[pathlib.Path]]:
    """Write signal and background as separate series of ROOT TTree files.

    The class is the file (``signal_000.root``, ``background_000.root``, ...), so every column but
    ``Label`` becomes a branch. Each file is complete or absent: it is written under a temporary
    name and renamed into place. Files of an earlier, longer series with the same names are
    removed, so that a glob such as ``signal_*.root`` sees only this sample.

    Returns
    -------
    dict
        ``{"signal": [paths...], "background": [paths...]}`` in order; a class without events
        gets an empty list.
    """
    directory = pathlib.Path(directory)
    where = f"write_root to {directory}"
    _check_events_per_file(where, events_per_file)
    if "Label" not in columns:
        raise HepdaskError(
            f"{where}: the columns have no Label (1 signal, 0 background) to split the events by "
            "class; pass the output of read_csv or synthesize."
        )
    label = np.asarray(columns["Label"])
    branches = {name: np.asarray(values) for name, values in columns.items() if name != "Label"}
    bad = [n for n, v in branches.items() if v.ndim != 1 or v.dtype.kind not in "biuf"]
    uneven = [n for n, v in branches.items() if len(v) != len(label)]
    if bad or uneven or label.ndim != 1 or not np.isin(label, (0, 1)).all():
        raise HepdaskError(
            f"{where}: every column must be a 1-D numeric array as long as Label, and Label must "
            f"hold only 0 and 1 (not 1-D numeric: {', '.join(bad) or 'none'}; other length: "
            f"{', '.join(uneven) or 'none'}). Pass the output of read_csv or synthesize."
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written: dict[str, list[pathlib.Path]] = {}
        for name, mask in zip(_CLASSES, (label == 1, label == 0), strict=True):
            rows = np.flatnonzero(mask)
            paths = []
            for number, start in enumerate(range(0, rows.size, events_per_file)):
                chosen = rows[start : start + events_per_file]
                paths.append(directory / f"{name}_{number:03d}.root")
                _write_tree(paths[-1], tree, {k: v[chosen] for k, v in branches.items()})
            series = re.compile(rf"{name}_\d{{3,}}\.root")
            for stale in directory.iterdir():
                if series.fullmatch(stale.name) and stale not in paths:
                    stale.unlink()
            written[name] = paths
    except OSError as exc:
        raise HepdaskError(
            f"{where} failed: {exc}. Check that the directory is writable and has free space, or "
            "choose another one."
        ) from exc
    return written


# --- prepare --------------------------------------------------------------------------------

# Where prepare writes a new series before moving it into place: hidden, so that the samples'
# globs never see a half-written series, and in the same file system, so that moving is renaming.
_STAGING = ".hepdask-prepare"
_REPLACES = "replaces"  # staging manifest only: the files of the series it replaces


@dataclass(frozen=True)
class PreparedData:
    """HiggsML ROOT files ready for training, as recorded in ``MANIFEST.json``.

    Attributes
    ----------
    source
        ``"csv"``, ``"download"`` or ``"synthetic"``: whether these are the real challenge data.
    directory
        The data directory.
    files
        Paths of the ROOT files per class (``"signal"``, ``"background"``), in order.
    n_events
        Number of events per class.
    tree
        Name of the TTree in every file.
    manifest
        The manifest as written to disk.
    """

    source: str
    directory: pathlib.Path
    files: dict[str, list[pathlib.Path]]
    n_events: dict[str, int]
    tree: str
    manifest: dict[str, Any]

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PreparedData:
        """Load a prepared directory, checking that every file its manifest lists exists."""
        prepared = cls.read(directory)
        if prepared.absent:
            raise HepdaskError(
                f"The HiggsML manifest {prepared.directory / MANIFEST_NAME} lists file(s) that do "
                f"not exist: {', '.join(map(str, prepared.absent))}. Run "
                f"hepdask.higgsml.prepare({str(prepared.directory)!r}) to write them again."
            )
        return prepared

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> PreparedData:
        """The manifest of ``directory`` as it is, whether or not the files it lists exist."""
        directory = pathlib.Path(directory)
        path = directory / MANIFEST_NAME
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            files = {name: [directory / f for f in manifest["files"][name]] for name in _CLASSES}
            n_events = {name: int(manifest["n_events"][name]) for name in _CLASSES}
            source, tree = str(manifest["source"]), str(manifest["tree"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HepdaskError(
                f"The HiggsML manifest {path} is missing or damaged ({exc!r}). Run "
                f"hepdask.higgsml.prepare({str(directory)!r}) to (re)create the data."
            ) from exc
        return cls(source, directory, files, n_events, tree, manifest)

    @property
    def names(self) -> set[str]:
        """The names of the files the manifest lists."""
        return {path.name for paths in self.files.values() for path in paths}

    @property
    def absent(self) -> list[pathlib.Path]:
        """The files the manifest lists that do not exist."""
        return [path for paths in self.files.values() for path in paths if not path.is_file()]


def find_prepared(paths: Iterable[str]) -> dict[str, PreparedData]:
    """The prepared HiggsML directory whose manifest lists each of ``paths`` (local files; the
    others are left out): where the files a run reads come from, whatever its [prepare] says."""
    manifests: dict[pathlib.Path, PreparedData | None] = {}
    found = {}
    for path in paths:
        if "://" in path:
            continue
        file = pathlib.Path(path).resolve()
        if file.parent not in manifests:
            try:
                manifests[file.parent] = PreparedData.read(file.parent)
            except HepdaskError:
                manifests[file.parent] = None
        prepared = manifests[file.parent]
        if prepared is not None and file.name in prepared.names:
            found[path] = prepared
    return found


def announce_synthetic(prepared: PreparedData, action: str) -> None:
    """The SYNTHETIC DATA banner on the ``hepdask`` logger, when ``prepared`` is synthetic."""
    if prepared.source == "synthetic":
        n_events = sum(prepared.n_events.values())
        seed = prepared.manifest.get("seed", "unknown")
        logger.warning(_banner(prepared.directory, n_events, seed, action))


def _download(directory: pathlib.Path) -> pathlib.Path | None:
    """Fetch the official CSV into ``directory``; None, and one log line, on any failure."""
    target = directory / CSV_NAME
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with urllib.request.urlopen(CSV_URL, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            with temporary.open("wb") as handle:
                shutil.copyfileobj(response, handle, 1 << 20)
        if not _is_gzip(temporary):  # a proxy's or portal's HTML page, say
            raise ValueError("the response is not a gzip file")
        os.replace(temporary, target)
    except (OSError, ValueError) as exc:  # URLError, HTTPError and timeouts are OSErrors
        logger.warning("could not download %s: %s", CSV_URL, exc)
        return None
    finally:
        temporary.unlink(missing_ok=True)
    return target


def _local_csv(directory: pathlib.Path, csv: str | os.PathLike[str] | None) -> pathlib.Path | None:
    """The CSV to convert: the one given, else the official file in the directory, if any."""
    if csv is not None:
        return pathlib.Path(csv)
    for name in (CSV_NAME, CSV_NAME.removesuffix(".gz")):
        if (directory / name).is_file():
            return directory / name
    return None


def _banner(directory: pathlib.Path, n_events: int, seed: object, action: str) -> str:
    rule = "=" * 78
    return (
        f"\n{rule}\nSYNTHETIC DATA: {action} {n_events:,} synthetic HiggsML events (seed {seed}) "
        f"in {directory}.\nThey mimic the schema and rough shapes of the ATLAS HiggsML 2014 "
        "challenge data but are NOT\nthe real challenge data: AUC and AMS values are not "
        "comparable with the challenge results.\nFor the real data, download "
        f"{CSV_NAME} from CERN Open Data record 328\n({CSV_URL})\nand put it at "
        f"{directory / CSV_NAME}, or pass --csv PATH; the next run converts it.\n{rule}"
    )


def _write_manifest(directory: pathlib.Path, manifest: dict[str, Any]) -> None:
    path = directory / MANIFEST_NAME
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _names(paths: list[pathlib.Path]) -> str:
    shown = ", ".join(path.name for path in paths[:4])
    return shown + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")


def _series(directory: pathlib.Path) -> list[pathlib.Path]:
    """The files the samples' usual globs (``signal_*.root``, ``background_*.root``) would read."""
    return sorted(path for name in _CLASSES for path in directory.glob(f"{name}_*.root"))


def _previous(directory: pathlib.Path) -> PreparedData | None:
    """The earlier preparation in ``directory``; None where there is neither one nor any file a
    new one could overwrite. Without a readable manifest, files of the series may be anybody's,
    real data included: hepdask refuses to touch them."""
    try:
        return PreparedData.read(directory)
    except HepdaskError as exc:
        theirs = _series(directory)
        if theirs:
            raise HepdaskError(
                f"The HiggsML data directory {directory} holds {_names(theirs)} but no readable "
                f"{MANIFEST_NAME} ({exc.__cause__!r}), so hepdask cannot tell whether they are its "
                "own synthetic files or real data, and will not overwrite them. Point "
                "prepare.directory (or --directory) at another directory, or, if these files "
                "are an old hepdask sample you want replaced, delete them yourself first."
            ) from None
        return None


def _check_unlisted(directory: pathlib.Path, previous: PreparedData | None) -> None:
    """Before writing: every file of the series must be one that the manifest lists."""
    listed = previous.names if previous is not None else set()
    unlisted = [path for path in _series(directory) if path.name not in listed]
    if unlisted:
        raise HepdaskError(
            f"The HiggsML data directory {directory} holds {_names(unlisted)}, which its "
            f"{MANIFEST_NAME} does not list: hepdask never overwrites or deletes files it did not "
            "write, and a new series would be mixed with them. Move them to another directory, "
            "or point prepare.directory (or --directory) elsewhere."
        )


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _sizes(n_events: Mapping[str, int], events_per_file: object) -> list[list[int]] | None:
    """Events per file of each class in a layout (None for a layout that is not one)."""
    if isinstance(events_per_file, bool) or not isinstance(events_per_file, int):
        return None
    return [[min(events_per_file, n - start) for start in range(0, n, events_per_file)]
            for n in (n_events[name] for name in _CLASSES)]


def _read_root(prepared: PreparedData) -> dict[str, np.ndarray]:
    """The events of a prepared directory as columns (``Label`` included), to write them anew."""
    from .dataset import READ_ERRORS

    parts, labels = [], []
    for name, label in zip(_CLASSES, (1, 0), strict=True):
        for path in prepared.files[name]:
            try:
                with uproot.open(path) as file:
                    parts.append(file[prepared.tree].arrays(library="np"))
            except (*READ_ERRORS, KeyError) as exc:
                raise HepdaskError(
                    f"Cannot read {path} ({exc}) to re-split the real HiggsML data of "
                    f"{prepared.directory} into other files; nothing was changed. Restore the "
                    "file, or convert the CSV into another directory."
                ) from exc
            labels.append(np.full(len(next(iter(parts[-1].values()))), label, np.int8))
    columns = {branch: np.concatenate([part[branch] for part in parts]) for branch in parts[0]}
    columns["Label"] = np.concatenate(labels)
    return columns


def _keep_real(
    previous: PreparedData, csv: str | os.PathLike[str] | None, layout: dict[str, Any]
) -> PreparedData:
    """Real data stay: reused, re-split from their ROOT files into the requested layout, or
    converted again from their CSV where files are missing; never replaced or deleted."""
    directory, manifest = previous.directory, previous.manifest
    origin = pathlib.Path(str(manifest.get("csv", "")))
    if csv is not None and not _same_file(csv, origin):
        raise HepdaskError(
            f"The HiggsML data directory {directory} already holds the real challenge data "
            f"({previous.source}, from {origin}), and hepdask never replaces real data. To convert "
            f"{csv}, choose another prepare.directory (or --directory); to use the data in "
            f"{directory}, leave prepare.csv (--csv) out."
        )
    if previous.absent:
        if not origin.is_file():
            raise HepdaskError(
                f"The real HiggsML data in {directory} are incomplete: {_names(previous.absent)}, "
                f"listed in its {MANIFEST_NAME}, do not exist, and {origin}, the CSV they were "
                "converted from, is gone too. hepdask never replaces real data with synthetic "
                "ones: restore the missing files or the CSV, or move the remaining files away and "
                "prepare the directory again."
            )
        _check_unlisted(directory, previous)
        logger.warning("Converting %s again: %s lack(s) in %s", origin, _names(previous.absent),
                       directory)
        return _install(directory, read_csv(origin), dict(manifest), layout, previous)
    if all(manifest.get(key) == value for key, value in layout.items()):
        return previous
    _check_unlisted(directory, previous)
    same_files = layout["tree"] == previous.tree and _sizes(
        previous.n_events, manifest.get("events_per_file")
    ) == _sizes(previous.n_events, layout["events_per_file"])
    if same_files:  # e.g. 250000 or 125000 per file of a small CSV: the very same files
        _write_manifest(directory, {**manifest, **layout})
        return PreparedData.load(directory)
    logger.warning(
        "Re-splitting the real HiggsML data (%s) in %s from %s to %s events per file (tree %r): "
        "the same events in other files, so the train/validation/test split, which is keyed by "
        "file name and entry, changes too.",
        previous.source, directory, manifest.get("events_per_file"), layout["events_per_file"],
        layout["tree"],
    )
    return _install(directory, _read_root(previous), dict(manifest), layout, previous)


def _install(
    directory: pathlib.Path,
    columns: Mapping[str, np.ndarray],
    manifest: dict[str, Any],
    layout: dict[str, Any],
    previous: PreparedData | None,
) -> PreparedData:
    """Write the series and its manifest into the staging directory, then move them into place.

    The files a new series replaces stay untouched until all of it is written: a full disk or an
    interruption before that leaves the directory as it was, and one after it is finished by the
    next :func:`prepare` (see :func:`_finish`).
    """
    staging = directory / _STAGING
    shutil.rmtree(staging, ignore_errors=True)
    try:
        files = write_root(columns, staging, tree=layout["tree"],
                           events_per_file=layout["events_per_file"])
        signal = columns["Label"] == 1
        weight = columns["Weight"].astype(np.float64)
        manifest.update(
            layout,
            branches=[name for name in columns if name != "Label"],
            files={name: [p.name for p in files[name]] for name in _CLASSES},
            n_events={"signal": int(signal.sum()), "background": int((~signal).sum())},
            weight_sums={
                "signal": float(weight[signal].sum()),
                "background": float(weight[~signal].sum()),
            },
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        manifest[_REPLACES] = sorted(previous.names) if previous is not None else []
        _write_manifest(staging, manifest)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise HepdaskError(
                f"Writing the HiggsML manifest into {staging} failed: {exc}. The data in "
                f"{directory} are unchanged; free some space and try again."
            ) from exc
        raise
    _finish(directory)
    return PreparedData.load(directory)


def _finish(directory: pathlib.Path) -> None:
    """Move a complete staged series into place, also after an interruption; remove an incomplete
    one (copies only: the files it was to replace are still there).

    The staging manifest, written last, marks the staged series complete; the directory's own
    manifest is removed before the first file moves and written again after the last one, so it
    never lists files that are not (or no longer) those it describes.
    """
    staging = directory / _STAGING
    if not staging.is_dir():
        return
    try:
        pending = PreparedData.read(staging)
    except HepdaskError:
        shutil.rmtree(staging, ignore_errors=True)
        return
    manifest = dict(pending.manifest)
    replaced = set(manifest.pop(_REPLACES, []))
    try:
        (directory / MANIFEST_NAME).unlink(missing_ok=True)
        for name in sorted(replaced - pending.names):
            (directory / name).unlink(missing_ok=True)
        for name in sorted(pending.names):
            if (staging / name).exists():
                os.replace(staging / name, directory / name)
        _write_manifest(directory, manifest)
        (staging / MANIFEST_NAME).unlink()
        shutil.rmtree(staging)
    except OSError as exc:
        raise HepdaskError(
            f"Moving the prepared HiggsML files from {staging} into {directory} failed: {exc}. "
            "The complete new series is in the former; prepare the directory again to finish."
        ) from exc


def prepare(
    directory: str | os.PathLike[str],
    *,
    csv: str | os.PathLike[str] | None = None,
    download: bool = True,
    synthetic_events: int = 250_000,
    seed: int = 0,
    events_per_file: int = 250_000,
    tree: str = "events",
) -> PreparedData:
    """Make sure HiggsML ROOT files are in ``directory``: convert, download or synthesize them.

    Real data (converted from a CSV or a download) are never replaced or deleted: they are
    reused as they are; re-split from their own ROOT files when another tree or number of events
    per file is asked for; converted again from their CSV when files are missing; and a
    different ``csv`` is refused. A synthetic sample is reused when it has the seed, size and
    layout asked for and no real CSV is available; otherwise the first available source wins:
    ``csv``, or the official file in ``directory`` (``.csv.gz`` or ``.csv``); a download from CERN
    Open Data if ``download``; ``synthetic_events`` synthetic events, announced by a warning
    banner on the ``hepdask`` logger.

    Files of the series (``signal_*.root``, ``background_*.root``) that no readable manifest
    lists are never overwritten: ``prepare`` refuses instead. A new series is written aside and
    moved into place once complete, so an interruption or a full disk loses nothing.

    Returns
    -------
    PreparedData
        The files, event counts and manifest; ``source`` says whether the data are real.
    """
    directory = pathlib.Path(directory)
    _check_events_per_file(f"prepare {directory}", events_per_file)
    if csv is not None and not pathlib.Path(csv).is_file():
        raise _no_csv(f"The HiggsML CSV {csv}")
    _finish(directory)
    previous = _previous(directory)
    layout = {"tree": tree, "events_per_file": events_per_file}
    if previous is not None and previous.source != "synthetic":
        return _keep_real(previous, csv, layout)
    local = _local_csv(directory, csv)
    request = {**layout, "seed": seed, "synthetic_events": synthetic_events}
    if (previous is not None and local is None and not previous.absent
            and all(previous.manifest.get(key) == value for key, value in request.items())):
        announce_synthetic(previous, "reusing")
        return previous
    _check_unlisted(directory, previous)

    manifest: dict[str, Any] = {
        "manifest_version": 1,
        "dataset": "ATLAS Higgs Boson Machine Learning Challenge 2014 (CERN Open Data record 328)",
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HepdaskError(
            f"Cannot create the HiggsML data directory {directory}: {exc}. Choose a writable one."
        ) from exc
    if local is None and download and (fetched := _download(directory)) is not None:
        local, manifest["url"] = fetched, CSV_URL
    if local is not None:
        columns = read_csv(local)
        manifest.update(source="download" if "url" in manifest else "csv", csv=str(local.resolve()))
    else:
        columns = synthesize(synthetic_events, seed=seed)
        manifest.update(source="synthetic", seed=seed, synthetic_events=synthetic_events)
        logger.warning(_banner(directory, synthetic_events, seed, "generated"))
    return _install(directory, columns, manifest, layout, previous)
