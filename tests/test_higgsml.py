"""Tests of hepdask.higgsml: the synthetic generator, the CSV reader, the ROOT writer, prepare."""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import uproot

from hepdask import higgsml
from hepdask.errors import HepdaskError
from hepdask.higgsml import (
    BACKGROUND_TOTAL,
    COLUMNS,
    FEATURES,
    SIGNAL_TOTAL,
    PreparedData,
    prepare,
    read_csv,
    synthesize,
    write_root,
)

DATA = Path(__file__).parents[1].parent / "shared" / "data" / "higgsml"
FIRST1000 = DATA / "atlas-higgs-challenge-2014-v2-first1000.csv"
README = DATA / "README.md"
UNDEFINED = -999.0
# Undefined unless PRI_jet_num >= 1, resp. >= 2 (README, "When a value is -999.0").
NEED_ONE_JET = ["PRI_jet_leading_pt", "PRI_jet_leading_eta", "PRI_jet_leading_phi"]
NEED_TWO_JETS = [
    "PRI_jet_subleading_pt",
    "PRI_jet_subleading_eta",
    "PRI_jet_subleading_phi",
    "DER_deltaeta_jet_jet",
    "DER_mass_jet_jet",
    "DER_prodeta_jet_jet",
    "DER_lep_eta_centrality",
]


@pytest.fixture(scope="module")
def sample() -> dict[str, np.ndarray]:
    return synthesize(250_000, seed=3)


@pytest.fixture(scope="module")
def real() -> dict[str, np.ndarray]:
    if not FIRST1000.is_file():
        pytest.skip(f"the real HiggsML sample {FIRST1000} is not in this checkout's shared data")
    return read_csv(FIRST1000)


@pytest.fixture(params=["synthetic", "real"])
def either(request: pytest.FixtureRequest) -> dict[str, np.ndarray]:
    return request.getfixturevalue("sample" if request.param == "synthetic" else "real")


# --- synthesize -------------------------------------------------------------------------------


def test_schema_and_dtypes(sample: dict[str, np.ndarray]) -> None:
    assert list(sample) == list(COLUMNS)
    assert len(FEATURES) == 30 and len(set(FEATURES)) == 30
    assert all(len(values) == 250_000 for values in sample.values())
    expected = dict.fromkeys(FEATURES, np.float32)
    expected.update(
        EventId=np.int64,
        PRI_jet_num=np.int32,
        Weight=np.float32,
        Label=np.int8,
        KaggleSet=np.uint8,
        KaggleWeight=np.float32,
    )
    assert {name: values.dtype for name, values in sample.items()} == {
        name: np.dtype(dtype) for name, dtype in expected.items()
    }
    np.testing.assert_array_equal(sample["EventId"], np.arange(100_000, 350_000))
    for name in (*FEATURES, "Weight", "KaggleWeight"):
        assert np.isfinite(sample[name]).all(), name
    assert set(np.unique(sample["Label"])) == {0, 1}
    assert set(np.unique(sample["PRI_jet_num"])) == {0, 1, 2, 3}
    assert 0.33 < sample["Label"].mean() < 0.355


def test_reproducible() -> None:
    first, again, other = (
        synthesize(3000, seed=7),
        synthesize(3000, seed=7),
        synthesize(3000, seed=8),
    )
    for name in COLUMNS:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["DER_mass_MMC"], other["DER_mass_MMC"])


@pytest.mark.parametrize("n", [0, 1, 17])
def test_tiny_samples(n: int) -> None:
    columns = synthesize(n)
    assert list(columns) == list(COLUMNS) and all(len(v) == n for v in columns.values())


@pytest.mark.parametrize("n", [-1, 2.5, "10", True])
def test_bad_size(n: object) -> None:
    with pytest.raises(HepdaskError, match="non-negative integer"):
        synthesize(n)  # type: ignore[arg-type]


def test_undefined_pattern(either: dict[str, np.ndarray]) -> None:
    """-999 exactly where the README's rules put it, in the synthetic and the real data."""
    jets = either["PRI_jet_num"]
    undefined = {name: either[name] == UNDEFINED for name in FEATURES}
    for name in NEED_ONE_JET:
        np.testing.assert_array_equal(undefined[name], jets == 0, err_msg=name)
    for name in NEED_TWO_JETS:
        np.testing.assert_array_equal(undefined[name], jets <= 1, err_msg=name)
    others = set(FEATURES) - {*NEED_ONE_JET, *NEED_TWO_JETS, "DER_mass_MMC"}
    assert not any(undefined[name].any() for name in others)
    all_pt = either["PRI_jet_all_pt"]
    assert (all_pt[jets == 0] == 0).all()
    assert (all_pt[jets > 0] >= 30).all()


def test_mmc_undefined_fractions(sample: dict[str, np.ndarray]) -> None:
    undefined = sample["DER_mass_MMC"] == UNDEFINED
    signal = sample["Label"] == 1
    assert 0.02 < undefined[signal].mean() < 0.045
    assert 0.18 < undefined[~signal].mean() < 0.24
    for jets in range(4):  # in every jet bin
        assert undefined[sample["PRI_jet_num"] == jets].any()


def test_jet_multiplicity(sample: dict[str, np.ndarray]) -> None:
    readme = {1: (0.30, 0.32, 0.30, 0.08), 0: (0.46, 0.30, 0.15, 0.10)}
    for label, fractions in readme.items():
        jets = sample["PRI_jet_num"][sample["Label"] == label]
        measured = np.bincount(jets, minlength=4) / jets.size
        np.testing.assert_allclose(measured, fractions, atol=0.03)


def test_selection_and_ranges(sample: dict[str, np.ndarray]) -> None:
    jets = sample["PRI_jet_num"]
    assert sample["PRI_tau_pt"].min() >= 20 and sample["PRI_lep_pt"].min() >= 26
    assert np.abs(sample["PRI_tau_eta"]).max() <= 2.5 and np.abs(sample["PRI_lep_eta"]).max() <= 2.5
    assert sample["PRI_jet_leading_pt"][jets >= 1].min() >= 30
    assert sample["PRI_jet_subleading_pt"][jets >= 2].min() >= 30
    assert (sample["PRI_jet_leading_pt"] >= sample["PRI_jet_subleading_pt"])[jets >= 2].all()
    assert np.abs(sample["PRI_jet_leading_eta"][jets >= 1]).max() <= 4.5
    for name in ("PRI_tau_phi", "PRI_lep_phi", "PRI_met_phi", "PRI_jet_leading_phi"):
        phi = sample[name][sample[name] != UNDEFINED]
        assert np.abs(phi).max() <= 3.142, name
        counts = np.histogram(phi, bins=8, range=(-np.pi, np.pi))[0]
        assert counts.min() > 0.95 * counts.mean(), f"{name} is not uniform"
    centrality = sample["DER_met_phi_centrality"]
    assert np.abs(centrality).max() <= 1.415
    defined = sample["DER_lep_eta_centrality"][jets >= 2]
    assert defined.min() >= 0 and defined.max() <= 1
    for name in FEATURES:  # official format: three decimals
        values = sample[name].astype(np.float64)
        np.testing.assert_allclose(values, np.round(values, 3), atol=1e-4, err_msg=name)


def test_derived_follow_primitives(either: dict[str, np.ndarray]) -> None:
    """The README's formulas hold (up to the 3-decimal rounding) in synthetic and real data."""
    c = {name: either[name].astype(np.float64) for name in FEATURES}
    two = either["PRI_jet_num"] >= 2

    def close(name: str, expected: np.ndarray, atol: float, rtol: float = 0.0) -> None:
        np.testing.assert_allclose(c[name], expected, atol=atol, rtol=rtol, err_msg=name)

    tau = c["PRI_tau_pt"], c["PRI_tau_eta"], c["PRI_tau_phi"]
    lep = c["PRI_lep_pt"], c["PRI_lep_eta"], c["PRI_lep_phi"]
    met, met_phi = c["PRI_met"], c["PRI_met_phi"]
    close("DER_sum_pt", tau[0] + lep[0] + c["PRI_jet_all_pt"], atol=0.0025)
    close("DER_pt_ratio_lep_tau", lep[0] / tau[0], atol=0.001)
    close(
        "DER_mass_transverse_met_lep",
        np.sqrt(2 * met * lep[0] * (1 - np.cos(met_phi - lep[2]))),
        atol=0.2,
        rtol=0.005,
    )
    mass_vis = np.sqrt(2 * tau[0] * lep[0] * (np.cosh(tau[1] - lep[1]) - np.cos(tau[2] - lep[2])))
    close("DER_mass_vis", mass_vis, atol=0.1, rtol=0.015)
    dphi = np.remainder(tau[2] - lep[2] + np.pi, 2 * np.pi) - np.pi
    close("DER_deltar_tau_lep", np.hypot(tau[1] - lep[1], dphi), atol=0.0025)
    px = tau[0] * np.cos(tau[2]) + lep[0] * np.cos(lep[2]) + met * np.cos(met_phi)
    py = tau[0] * np.sin(tau[2]) + lep[0] * np.sin(lep[2]) + met * np.sin(met_phi)
    close("DER_pt_h", np.hypot(px, py), atol=0.2, rtol=0.005)
    eta1, eta2 = c["PRI_jet_leading_eta"][two], c["PRI_jet_subleading_eta"][two]
    np.testing.assert_allclose(c["DER_deltaeta_jet_jet"][two], np.abs(eta1 - eta2), atol=0.0015)
    np.testing.assert_allclose(c["DER_prodeta_jet_jet"][two], eta1 * eta2, atol=0.006)
    apart = np.abs(eta1 - eta2) > 0.2  # else the rounding of the etas matters
    centrality = np.exp(
        -4 / (eta1 - eta2)[apart] ** 2 * (lep[1][two] - (eta1 + eta2) / 2)[apart] ** 2
    )
    np.testing.assert_allclose(c["DER_lep_eta_centrality"][two][apart], centrality, atol=0.01)
    sign = np.sign(np.sin(tau[2] - lep[2]))
    a, b = np.sin(met_phi - lep[2]) * sign, np.sin(tau[2] - met_phi) * sign
    # Away from back-to-back tau and lepton, where rounding the angles can flip the sign.
    clear = (np.abs(np.sin(tau[2] - lep[2])) > 0.15) & (a**2 + b**2 > 0.01)
    expected = (a + b)[clear] / np.sqrt(a**2 + b**2)[clear]
    np.testing.assert_allclose(c["DER_met_phi_centrality"][clear], expected, atol=0.02)


def test_synthetic_mass_jet_jet(sample: dict[str, np.ndarray]) -> None:
    """Synthetic jets are massless (the real ones are not, hence a synthetic-only test)."""
    two = sample["PRI_jet_num"] >= 2
    j1, j2 = (
        [sample[f"PRI_jet_{w}_{v}"][two].astype(np.float64) for v in ("pt", "eta", "phi")]
        for w in ("leading", "subleading")
    )
    mass = np.sqrt(2 * j1[0] * j2[0] * (np.cosh(j1[1] - j2[1]) - np.cos(j1[2] - j2[2])))
    np.testing.assert_allclose(sample["DER_mass_jet_jet"][two], mass, rtol=0.01, atol=0.1)


def _readme_quantiles() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not README.is_file():
        pytest.skip(f"{README} is not in this checkout's shared data")
    table = {}
    for line in README.read_text().splitlines():
        if match := re.fullmatch(r"((?:DER|PRI)_\w+) \| ([-\d./e+]+) \| ([-\d./e+]+)", line):
            table[match[1]] = tuple(np.array(match[i].split("/"), float) for i in (2, 3))
    assert len(table) == 30
    return table


def test_shapes_close_to_readme(sample: dict[str, np.ndarray]) -> None:
    """Per class, the quartiles of every feature are within a quarter of the real IQR."""
    far = []
    for name, per_class in _readme_quantiles().items():
        for label, reference in zip((1, 0), per_class, strict=True):
            values = sample[name][(sample["Label"] == label) & (sample[name] != UNDEFINED)]
            quartiles = np.percentile(values, [25, 50, 75])
            tolerance = 0.25 * (reference[3] - reference[1]) + 0.05
            if np.abs(quartiles - reference[1:4]).max() > tolerance:
                far.append(
                    f"{name} ({'signal' if label else 'background'}): {quartiles} vs {reference[1:4]}"
                )
    assert not far, "\n".join(far)


def test_mass_peaks(sample: dict[str, np.ndarray]) -> None:
    mmc, signal = sample["DER_mass_MMC"], sample["Label"] == 1
    assert 115 < np.median(mmc[signal & (mmc > 0)]) < 130
    assert np.median(mmc[~signal & (mmc > 0)]) < 110
    assert 70 < np.median(sample["DER_mass_vis"][signal]) < 90


def test_weights(sample: dict[str, np.ndarray]) -> None:
    weight, signal = sample["Weight"].astype(np.float64), sample["Label"] == 1
    assert weight[signal].sum() == pytest.approx(SIGNAL_TOTAL, rel=1e-6)
    assert weight[~signal].sum() == pytest.approx(BACKGROUND_TOTAL, rel=1e-6)
    assert len(np.unique(weight[signal])) <= 4  # a few discrete values
    assert 0.0013 < weight[signal].min() and weight[signal].max() < 0.021
    assert 0.05 < weight[~signal].min() and weight[~signal].max() < 8.5


def test_kaggle_sets(sample: dict[str, np.ndarray]) -> None:
    sets, n = sample["KaggleSet"], 250_000
    official = {"t": 250_000, "b": 100_000, "v": 450_000, "u": 18_238}
    for letter, count in official.items():
        assert abs((sets == ord(letter)).sum() - n * count / 818_238) <= 1, letter
    assert (sets[: round(n * 250_000 / 818_238)] == ord("t")).all()  # training first, as officially
    kaggle_weight = sample["KaggleWeight"].astype(np.float64)
    for letter in official:
        for label, total in ((1, SIGNAL_TOTAL), (0, BACKGROUND_TOTAL)):
            chosen = (sets == ord(letter)) & (sample["Label"] == label)
            assert kaggle_weight[chosen].sum() == pytest.approx(total, rel=1e-6), (letter, label)
    ratio = kaggle_weight / sample["Weight"]  # one renormalisation per set and class
    for letter in official:
        for label in (0, 1):
            chosen = ratio[(sets == ord(letter)) & (sample["Label"] == label)]
            np.testing.assert_allclose(chosen, chosen[0], rtol=1e-5)


def test_not_trivially_separable() -> None:
    """XGBoost must find the synthetic classes about as hard to separate as the real ones."""
    xgboost = pytest.importorskip("xgboost")
    metrics = pytest.importorskip("sklearn.metrics")
    columns = synthesize(60_000, seed=11)
    x = np.column_stack([columns[name] for name in FEATURES])
    y = columns["Label"]
    train = xgboost.DMatrix(x[:40_000], label=y[:40_000], missing=UNDEFINED)
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 6, "eta": 0.1}
    booster = xgboost.train(params, train, num_boost_round=200)
    score = booster.predict(xgboost.DMatrix(x[40_000:], missing=UNDEFINED))
    auc = metrics.roc_auc_score(y[40_000:], score)
    assert 0.85 <= auc <= 0.93, f"test AUC {auc:.4f}"


# --- read_csv ---------------------------------------------------------------------------------


def test_read_csv(real: dict[str, np.ndarray]) -> None:
    assert list(real) == list(COLUMNS)
    assert len(real["EventId"]) == 1000 and real["Label"].sum() == 349
    np.testing.assert_array_equal(real["EventId"], np.arange(100_000, 101_000))
    assert real["EventId"].dtype == np.int64 and real["PRI_jet_num"].dtype == np.int32
    assert real["Label"].dtype == np.int8 and real["KaggleSet"].dtype == np.uint8
    assert all(
        real[name].dtype == np.float32
        for name in (*FEATURES, "Weight", "KaggleWeight")
        if name != "PRI_jet_num"
    )
    assert (real["KaggleSet"] == ord("t")).all()
    text = FIRST1000.read_text().splitlines()
    assert sum(line.count("-999.0") for line in text[1:]) == sum(
        (real[n] == UNDEFINED).sum() for n in FEATURES
    )
    first = dict(zip(text[0].split(","), text[1].split(","), strict=True))
    for name in FEATURES:
        assert real[name][0] == np.float32(first[name]), name
    assert real["Label"][0] == (first["Label"] == "s")
    assert real["KaggleWeight"][0] == np.float32(first["KaggleWeight"])


def test_read_csv_gzip(real: dict[str, np.ndarray], tmp_path: Path) -> None:
    packed = tmp_path / "higgs.csv.gz"
    with FIRST1000.open("rb") as source, gzip.open(packed, "wb") as target:
        shutil.copyfileobj(source, target)
    again = read_csv(packed)
    for name in COLUMNS:
        np.testing.assert_array_equal(again[name], real[name], err_msg=name)
        assert again[name].dtype == real[name].dtype


def test_read_csv_missing_column(real: dict[str, np.ndarray], tmp_path: Path) -> None:
    lines = FIRST1000.read_text().splitlines()
    drop = lines[0].split(",").index("KaggleWeight")
    path = tmp_path / "short.csv"
    path.write_text(
        "\n".join(
            ",".join(v for i, v in enumerate(line.split(",")) if i != drop) for line in lines[:20]
        )
        + "\n"
    )
    with pytest.raises(HepdaskError, match="KaggleWeight") as caught:
        read_csv(path)
    assert str(path) in str(caught.value)


def test_read_csv_bad_input(real: dict[str, np.ndarray], tmp_path: Path) -> None:
    with pytest.raises(HepdaskError, match="does not exist"):
        read_csv(tmp_path / "absent.csv.gz")
    lines = FIRST1000.read_text().splitlines()
    relabelled = tmp_path / "relabelled.csv"
    relabelled.write_text(
        "\n".join([lines[0], lines[1].replace(",s,t,", ",x,t,"), *lines[2:5]]) + "\n"
    )
    with pytest.raises(HepdaskError, match=r"Label value.*'x'"):
        read_csv(relabelled)
    garbled = tmp_path / "garbled.csv"
    garbled.write_text("\n".join([lines[0], lines[1].replace("138.47", "abc"), *lines[2:5]]) + "\n")
    with pytest.raises(HepdaskError, match="cannot be parsed"):
        read_csv(garbled)
    truncated = tmp_path / "truncated.csv.gz"
    truncated.write_bytes(gzip.compress(FIRST1000.read_bytes())[:5000])
    with pytest.raises(HepdaskError, match="truncated"):
        read_csv(truncated)


# --- write_root -------------------------------------------------------------------------------


def _read_back(paths: list[Path], tree: str) -> dict[str, np.ndarray]:
    parts = []
    for path in paths:
        with uproot.open(path) as file:
            ttree = file[tree]
            assert ttree.classname == "TTree"
            parts.append((ttree.num_entries, ttree.arrays(library="np")))
    return {name: np.concatenate([arrays[name] for _, arrays in parts]) for name in parts[0][1]}


def test_write_root_round_trip(tmp_path: Path) -> None:
    columns = synthesize(2_500, seed=5)
    files = write_root(columns, tmp_path, events_per_file=400, tree="higgs")
    signal = columns["Label"] == 1
    for name, mask in (("signal", signal), ("background", ~signal)):
        count = int(mask.sum())
        assert [p.name for p in files[name]] == [
            f"{name}_{i:03d}.root" for i in range(-(-count // 400))
        ]
        entries = []
        for path in files[name]:
            with uproot.open(path) as file:
                assert file["higgs"].classname == "TTree"
                entries.append(file["higgs"].num_entries)
        assert entries[:-1] == [400] * (len(entries) - 1) and 0 < entries[-1] <= 400
        back = _read_back(files[name], "higgs")
        assert set(back) == set(COLUMNS) - {"Label"}
        for column in back:
            np.testing.assert_array_equal(back[column], columns[column][mask], err_msg=column)
            assert back[column].dtype == columns[column].dtype, column
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for ps in files.values() for p in ps
    )


def test_write_root_replaces_longer_series(tmp_path: Path) -> None:
    columns = synthesize(1_000, seed=2)
    first = write_root(columns, tmp_path, events_per_file=100)
    assert len(first["background"]) > 2
    second = write_root(columns, tmp_path, events_per_file=10_000)
    assert [p.name for p in second["background"]] == ["background_000.root"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["background_000.root", "signal_000.root"]


def test_write_root_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while writing leaves neither a file with the final name nor a temporary one."""
    calls = []

    def failing_extend(self: object, data: object) -> None:
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(uproot.writing.writable.WritableTree, "extend", failing_extend)
    with pytest.raises(KeyboardInterrupt):
        write_root(synthesize(500, seed=1), tmp_path)
    assert calls and list(tmp_path.iterdir()) == []


def test_write_root_bad_input(tmp_path: Path) -> None:
    columns = synthesize(100)
    with pytest.raises(HepdaskError, match="Label"):  # without Label: a test series, not this
        write_root({k: v for k, v in columns.items() if k != "Label"}, tmp_path, leaderboard=True)
    with pytest.raises(HepdaskError, match="KaggleSet"):
        write_root({k: v for k, v in columns.items() if k != "KaggleSet"}, tmp_path,
                   leaderboard=True)
    with pytest.raises(HepdaskError, match="Label"):
        write_root({**columns, "Label": columns["Label"] * 2}, tmp_path)
    with pytest.raises(HepdaskError, match="EventId"):
        write_root({**columns, "EventId": columns["EventId"][:5]}, tmp_path)
    with pytest.raises(HepdaskError, match="events_per_file"):
        write_root(columns, tmp_path, events_per_file=0)


# --- prepare ----------------------------------------------------------------------------------


def _mtimes(prepared: PreparedData) -> dict[Path, int]:
    paths = [*prepared.files["signal"], *prepared.files["background"]]
    return {
        path: path.stat().st_mtime_ns for path in [*paths, prepared.directory / "MANIFEST.json"]
    }


def test_prepare_from_csv_then_reuse(
    real: dict[str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = prepare(tmp_path, csv=FIRST1000, download=False, events_per_file=300)
    assert prepared.source == "csv" and prepared.tree == "events"
    assert prepared.n_events == {"signal": 349, "background": 651}
    assert [len(prepared.files[c]) for c in ("signal", "background")] == [2, 3]
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert manifest == prepared.manifest
    assert manifest["source"] == "csv" and manifest["csv"] == str(FIRST1000.resolve())
    assert manifest["files"]["signal"] == ["signal_000.root", "signal_001.root"]
    signal = real["Label"] == 1
    assert manifest["weight_sums"]["signal"] == pytest.approx(
        real["Weight"][signal].sum(dtype=np.float64)
    )
    back = _read_back(prepared.files["background"], "events")
    np.testing.assert_array_equal(back["DER_mass_MMC"], real["DER_mass_MMC"][~signal])

    before = _mtimes(prepared)
    monkeypatch.setattr(higgsml, "read_csv", lambda path: pytest.fail("prepare did work again"))
    again = prepare(tmp_path, csv=FIRST1000, download=False, events_per_file=300)
    assert again == prepared and _mtimes(again) == before
    assert PreparedData.load(tmp_path) == prepared


def test_prepare_synthetic(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with caplog.at_level(logging.WARNING, logger="hepdask"):
        prepared = prepare(tmp_path, download=False, synthetic_events=3_000, seed=4)
    assert prepared.source == "synthetic" and sum(prepared.n_events.values()) == 3_000
    banner = caplog.text
    assert "SYNTHETIC" in banner and "NOT" in banner and "record 328" in banner
    assert str(tmp_path / "atlas-higgs-challenge-2014-v2.csv.gz") in banner and "--csv" in banner
    assert prepared.manifest["seed"] == 4 and prepared.manifest["synthetic_events"] == 3_000

    before = _mtimes(prepared)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hepdask"):
        assert prepare(tmp_path, download=False, synthetic_events=3_000, seed=4) == prepared
    assert _mtimes(prepared) == before and "SYNTHETIC" in caplog.text  # reused, still flagged

    assert (
        prepare(tmp_path, download=False, synthetic_events=2_000, seed=4).n_events
        != prepared.n_events
    )

    if FIRST1000.is_file():  # the banner's promise: a CSV put in place replaces synthetic data
        shutil.copy(FIRST1000, tmp_path / "atlas-higgs-challenge-2014-v2.csv")
        real = prepare(tmp_path, download=False, synthetic_events=2_000, seed=4)
        assert real.source == "csv" and real.n_events == {"signal": 349, "background": 651}


def test_prepare_download(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(url: str, timeout: float) -> object:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(higgsml.preparation.urllib.request, "urlopen", offline)
    with caplog.at_level(logging.WARNING, logger="hepdask"):
        fallback = prepare(tmp_path / "offline", synthetic_events=500)
    assert fallback.source == "synthetic" and "could not download" in caplog.text
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "offline").iterdir())

    if not FIRST1000.is_file():
        pytest.skip(f"{FIRST1000} is absent")
    payload = gzip.compress(FIRST1000.read_bytes())
    monkeypatch.setattr(higgsml.preparation.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    fetched = prepare(tmp_path / "online")
    assert fetched.source == "download" and fetched.manifest["url"].startswith(
        "https://opendata.cern.ch/"
    )
    assert (tmp_path / "online" / "atlas-higgs-challenge-2014-v2.csv.gz").read_bytes() == payload


def test_prepare_repairs_damage(tmp_path: Path) -> None:
    prepared = prepare(tmp_path, download=False, synthetic_events=800)
    prepared.files["signal"][0].unlink()
    with pytest.raises(HepdaskError, match="do not exist"):
        PreparedData.load(tmp_path)
    repaired = prepare(tmp_path, download=False, synthetic_events=800)
    assert all(p.is_file() for p in repaired.files["signal"])
    with pytest.raises(HepdaskError, match="does not exist"):
        prepare(tmp_path, csv=tmp_path / "absent.csv")
    assert PreparedData.load(tmp_path).n_events == repaired.n_events  # a bad csv= destroys nothing
    (tmp_path / "MANIFEST.json").write_text("{not json")
    with pytest.raises(HepdaskError, match="damaged"):
        PreparedData.load(tmp_path)
    # Without a manifest the files may be real data: refused (tests/test_higgsml_data.py), until
    # they are gone.
    with pytest.raises(HepdaskError, match="will not overwrite"):
        prepare(tmp_path, download=False, synthetic_events=800)
    for path in tmp_path.glob("*.root"):
        path.unlink()
    assert prepare(tmp_path, download=False, synthetic_events=800).n_events == repaired.n_events
