"""Evaluation: the AMS with tied scores and thresholds chosen on the validation split, the
detection of a model that learned nothing, and training weights of any scale."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_file, toy_config, write_sample
from sklearn.metrics import roc_auc_score

from hepdask import evaluate as ev
from hepdask.config import XGBoostConfig, from_dict, load_config
from hepdask.errors import HepdaskError
from hepdask.pipeline import Pipeline
from hepdask.train.xgboost import xgboost_params
from hepdask.weights import class_factors

TOTALS = {0: 500.0, 1: 3.0}


def tied_split(n: int, seed: int, levels: int = 5, signal_shift: float = 0.15):
    """Scores on a few levels only (many ties), signal a little higher, random weights."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    scores = np.clip(np.round((rng.random(n) + signal_shift * y) * (levels - 1)) / (levels - 1),
                     0, 1)
    return scores, y, rng.uniform(0.5, 2.0, n)


def brute_force(scores, y, w, totals=TOTALS, b_reg=10.0):
    """threshold -> (AMS, selected fraction), selecting score >= t for every distinct score."""
    norm = w.astype(np.float64).copy()
    for label in (0, 1):
        norm[y == label] *= totals[label] / norm[y == label].sum()
    out = {}
    for t in np.unique(scores):
        sel = scores >= t
        s, b = norm[sel & (y == 1)].sum(), norm[sel & (y == 0)].sum() + b_reg
        out[float(t)] = (np.sqrt(2 * ((s + b) * np.log(1 + s / b) - s)), sel.mean())
    return out


@pytest.mark.parametrize("seed", range(5))
def test_ams_scan_cuts_only_between_distinct_scores(seed):
    scores, y, w = tied_split(60, seed)
    reference = brute_force(scores, y, w)
    thresholds, selected, curve = ev.ams_curve(scores, y, w, TOTALS)
    assert sorted(thresholds.tolist()) == sorted(reference)
    for t, n, value in zip(thresholds, selected, curve, strict=True):
        assert value == pytest.approx(reference[t][0], rel=1e-12)
        assert n / len(y) == pytest.approx(reference[t][1])


def test_all_tied_scores_give_the_ams_of_selecting_everything():
    scores, y, w = tied_split(400, 0)
    scores[:] = 0.37  # e.g. a model without a split
    metrics = ev.evaluate_scores(scores, y, w, class_totals=TOTALS, validation=(scores, y, w))
    everything = brute_force(scores, y, w)[0.37][0]
    for key in ("best", "top_fraction"):
        assert metrics["ams"][key]["value"] == pytest.approx(everything)
        assert metrics["ams"][key]["selected_fraction"] == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_thresholds_are_chosen_on_validation_and_measured_on_test(seed):
    valid, test = tied_split(300, seed, levels=9), tied_split(200, seed + 100, levels=9)
    metrics = ev.evaluate_scores(*test, class_totals=TOTALS, top_fraction=0.2, validation=valid)
    ams = metrics["ams"]
    assert ams["threshold_split"] == "validation"
    on_valid, on_test = brute_force(*valid), brute_force(*test)
    best = max(on_valid, key=lambda t: on_valid[t][0])
    assert ams["best"]["threshold"] == best
    assert ams["best"]["value_validation"] == pytest.approx(on_valid[best][0])
    assert ams["best"]["selected_fraction_validation"] == pytest.approx(on_valid[best][1])
    assert ams["best"]["value"] == pytest.approx(on_test.get(best, _at(test, best))[0])
    assert ams["best"]["selected_fraction"] == pytest.approx((test[0] >= best).mean())
    # the top 20%: the highest threshold selecting at least 20% of the validation events
    top = max(t for t in on_valid if on_valid[t][1] >= 0.2)
    assert ams["top_fraction"]["threshold"] == top
    assert ams["top_fraction"]["selected_fraction_validation"] == pytest.approx(on_valid[top][1])
    assert ams["top_fraction"]["value"] == pytest.approx(_at(test, top)[0])


def _at(split, threshold):
    """The brute-force AMS of a split at a threshold that need not be one of its scores."""
    scores, y, w = split
    return brute_force(np.where(scores >= threshold, 1.0, 0.0), y, w)[1.0]


def test_without_validation_events_the_test_split_chooses_and_says_so():
    test = tied_split(200, 1)
    empty = (np.empty(0), np.empty(0, np.int64), np.empty(0))
    metrics = ev.evaluate_scores(*test, class_totals=TOTALS, validation=empty)
    ams = metrics["ams"]
    assert ams["threshold_split"] == "test" and "optimistic" in ams["note"]
    assert "value_validation" not in ams["best"]
    assert ams["best"]["value"] == pytest.approx(max(v for v, _ in brute_force(*test).values()))
    assert "thresholds from test" in ev.summary({**metrics, "n_test": 200}, "run")


def test_null_auc_spread_matches_label_permutations():
    scores, y, _ = tied_split(600, 3, levels=7)
    rng = np.random.default_rng(0)
    aucs = [roc_auc_score(rng.permutation(y), scores) for _ in range(400)]
    assert ev._null_auc_sigma(scores, y == 1) == pytest.approx(np.std(aucs), rel=0.15)


def test_learned_nothing_flags_constant_and_chance_scores_but_not_a_weak_signal():
    rng = np.random.default_rng(5)
    y = (rng.random(20000) < 0.4).astype(np.int64)
    assert "same score" in ev.learned_nothing(np.full(len(y), 0.5), y)
    assert "NaN" in ev.learned_nothing(np.where(y == 1, np.nan, 0.2), y)
    chance = rng.random(len(y))
    assert "within 3 x" in ev.learned_nothing(chance, y)
    weak = rng.normal(0.0, 1.0, len(y)) + 0.08 * y  # AUC about 0.52: small but real
    assert 0.51 < roc_auc_score(y, weak) < 0.53
    assert ev.learned_nothing(weak, y) is None
    # the same weak separation on few events cannot be told from chance
    assert ev.learned_nothing(weak[:300], y[:300]) is not None
    three = np.eye(3)[rng.integers(0, 3, len(y))] * 0.5 + 0.25
    assert ev.learned_nothing(np.full((len(y), 3), 1 / 3), rng.integers(0, 3, len(y)))
    assert ev.learned_nothing(three, three.argmax(axis=1)) is None


def test_class_factors_average_one_and_keep_scale_pos_weight_meaningful():
    sums, events = {0: 6.0, 1: 0.02}, {0: 800, 1: 200}
    balanced = class_factors(sums, events, balance=True, key="k")
    assert balanced[0] * sums[0] == pytest.approx(balanced[1] * sums[1])
    assert sum(balanced[c] * sums[c] for c in sums) == pytest.approx(1000)
    scaled = class_factors(sums, events, balance=False, key="k", signal_scale=3.0)
    assert scaled[1] / scaled[0] == pytest.approx(3.0)
    assert sum(scaled[c] * sums[c] for c in sums) == pytest.approx(1000)
    with pytest.raises(HepdaskError, match=r"classes \[1\].*no positive total weight"):
        class_factors({0: 1.0, 1: 0.0}, events, balance=True, key="k")


def test_an_explicit_binary_objective_with_three_classes_is_refused():
    explicit = XGBoostConfig(params={"objective": "binary:logistic", "max_depth": 3})
    with pytest.raises(HepdaskError, match=r"binary:logistic.*3 classes.*multi:softprob"):
        xgboost_params(explicit, 3)
    params, _, notes = xgboost_params(XGBoostConfig(), 3)
    assert params["objective"] == "multi:softprob" and params["num_class"] == 3
    assert "binary:logistic" in notes[0]
    assert xgboost_params(XGBoostConfig(), 2)[0]["objective"] == "binary:logistic"


def hzz_config(tmp_path, **train) -> object:
    """Two classes of the real HZZ sample, whose event weights are about 0.007. The label's
    muon inputs are left out of the features (no leak); MET and NJet still carry a real,
    modest separation (AUC about 0.64), which the tiny weights hid entirely (AUC 0.5)."""
    return from_dict({
        "name": "hzz", "output": str(tmp_path),
        "samples": [{"name": "hzz", "label": "where(NMuon >= 2, 1, 0)", "weight": "EventWeight",
                     "files": [str(shared_file("root", "uproot-HZZ.root"))]}],
        "data": {"step_size": 700},
        "features": {"branches": ["MET_px", "MET_py", "Muon_Px", "Muon_Py", "Muon_Pz", "NJet"],
                     "pad": 1},
        "cluster": {"n_workers": 2},
        "train": {"xgboost": {"num_boost_round": 20, "early_stopping_rounds": 5}, **train},
    })


def test_hzz_with_tiny_weights_learns_and_records_the_weight_factors(tmp_path, client):
    metrics = Pipeline(hzz_config(tmp_path), client=client, progress=False).run()
    assert metrics["auc"] > 0.6 and metrics["best_iteration"] > 0  # 0.5 and 0 before
    recorded = json.loads((tmp_path / "hzz" / "metrics.json").read_text())
    factors = recorded["training_weights"]["class_factors"]
    assert set(factors) == {"0", "1"} and min(factors.values()) > 50  # weights ~ 0.007 -> ~ 1
    assert recorded["ams"]["threshold_split"] == "validation"


@pytest.fixture(scope="module")
def unrelated_data(tmp_path_factory):
    """Signal and background files drawn from the same distributions: nothing to learn."""
    base = tmp_path_factory.mktemp("unrelated")
    write_sample(base / "sig_0.root", 2000, signal=False, seed=11)
    write_sample(base / "bkg_0.root", 3000, signal=False, seed=12)
    return base


@pytest.mark.parametrize("engine", ["xgboost", "sklearn", "keras"])
def test_a_model_that_learned_nothing_stops_the_run(tmp_path, unrelated_data, client, engine):
    if engine == "keras":
        pytest.importorskip("keras")
    config = load_config(toy_config(tmp_path, unrelated_data), [
        f"train.engine={engine!r}", "train.keras.epochs=1", "train.sklearn.epochs=1",
        "train.stream.batch_size=500"])
    pipe = Pipeline(config, output=tmp_path / "run", client=client, progress=False)
    with pytest.raises(HepdaskError, match=rf"{engine} model learned nothing: on the "
                                           r"validation split, AUC .* within 3 x"):
        pipe.run()
    assert not list((tmp_path / "run").glob("model.*"))


def test_no_split_at_all_stops_the_run(tmp_path, toy_data, client):
    config = load_config(toy_config(tmp_path, toy_data["dir"]),
                         ["train.xgboost.params={min_child_weight=1e9}"])
    with pytest.raises(HepdaskError, match=r"same score.*min_child_weight"):
        Pipeline(config, output=tmp_path / "run", client=client, progress=False).run()
