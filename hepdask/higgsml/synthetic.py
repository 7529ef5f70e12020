"""A synthetic stand-in for the HiggsML data: same schema, same -999 pattern, similar shapes.

It lets the examples and tests run offline; it is NOT the challenge data (see :func:`synthesize`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import HepdaskError
from .schema import BACKGROUND_TOTAL, FEATURES, KAGGLE_SETS, SIGNAL_TOTAL, UNDEFINED

__all__ = ["synthesize"]

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
_MMCUNDEFINED = (0.04, 0.05, 0.26, 0.2)
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
            column = np.full(n, UNDEFINED, _REAL)
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
    fail = np.asarray(_MMCUNDEFINED)[ev["process"]] * np.where(centrality < 0, 1.5, 0.6)
    mmc[rng.random(n) < fail] = UNDEFINED

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
        "DER_deltaeta_jet_jet": np.where(two, deta_jj, UNDEFINED),
        "DER_mass_jet_jet": np.where(two, mass_jj, UNDEFINED),
        "DER_prodeta_jet_jet": np.where(two, lead[1] * sub[1], UNDEFINED),
        "DER_deltar_tau_lep": np.sqrt((tau[1] - lep[1]) ** 2 + _wrap(tau[2] - lep[2]) ** 2),
        "DER_pt_tot": np.sqrt(
            (tau_x + lep_x + met_x + jet_x) ** 2 + (tau_y + lep_y + met_y + jet_y) ** 2
        ),
        "DER_sum_pt": tau[0] + lep[0] + jet_all_pt,
        "DER_pt_ratio_lep_tau": lep[0] / tau[0],
        "DER_met_phi_centrality": centrality,
        "DER_lep_eta_centrality": np.where(two, np.nan_to_num(lep_centrality), UNDEFINED),
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
    share = np.array(list(KAGGLE_SETS.values()), float) * n / sum(KAGGLE_SETS.values())
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(counts - share)[: n - counts.sum()]] += 1  # largest remainders
    codes = np.repeat(np.frombuffer("".join(KAGGLE_SETS).encode(), np.uint8), counts)
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
