"""The HiggsML challenge's own scoring (public and private leaderboard AMS at the run's
validation-chosen threshold) and the Kaggle submission, as the challenge scored and checked it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hepdask.errors import HepdaskError
from hepdask.higgsml import ANCHORS, BACKGROUND_TOTAL, SIGNAL_TOTAL
from hepdask.higgsml.challenge import leaderboard_block, score_set, summary_lines
from hepdask.higgsml.submission import HEADER, check_submission, rank_order

AMS = {"best": {"threshold": 0.6, "selected_fraction_validation": 0.17},
       "threshold_split": "validation"}


def direct_ams(score, label, weight, threshold, selected=None, b_reg=10.0) -> float:
    """The README's formula on the selected events, weights of each class scaled to the totals."""
    chosen = score >= threshold if selected is None else (score >= threshold) & selected
    s = weight[chosen & (label == 1)].sum() * SIGNAL_TOTAL / weight[label == 1].sum()
    b = weight[chosen & (label == 0)].sum() * BACKGROUND_TOTAL / weight[label == 0].sum()
    return math.sqrt(2 * ((s + b + b_reg) * math.log(1 + s / (b + b_reg)) - s))


def leaderboard_set(n: int, seed: int, *, complete: bool = False) -> dict[str, np.ndarray]:
    """A labelled set with scores and KaggleWeights (summing to the totals when ``complete``)."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.34).astype(np.int8)
    score = np.clip(rng.normal(np.where(label == 1, 0.7, 0.35), 0.2), 0, 1).astype(np.float32)
    weight = np.where(label == 1, rng.uniform(0.001, 0.02, n), rng.uniform(0.06, 7.6, n))
    if complete:
        for k, total in ((1, SIGNAL_TOTAL), (0, BACKGROUND_TOTAL)):
            weight[label == k] *= total / weight[label == k].sum()
    return {"score": score, "Label": label, "KaggleWeight": weight.astype(np.float32)}


# --- the AMS of a leaderboard set -------------------------------------------------------------


def test_set_ams_is_the_readme_formula_on_the_same_selection():
    columns = leaderboard_set(5000, 1)
    got = score_set(columns, 0.6)
    w = columns["KaggleWeight"].astype(np.float64)
    assert got["ams"] == pytest.approx(direct_ams(columns["score"], columns["Label"], w, 0.6),
                                       rel=1e-9)
    assert got["selected_fraction"] == pytest.approx((columns["score"] >= 0.6).mean())
    assert got["n_events"] == 5000
    assert got["n_signal"] + got["n_background"] == 5000
    assert 0.8 < got["auc"] < 1 and 0.8 < got["auc_weighted"] < 1
    # the threshold is inclusive: an event exactly at it is selected
    at = dict(columns, score=np.full(5000, 0.6, np.float32))
    assert score_set(at, float(np.float32(0.6)))["selected_fraction"] == 1.0


def test_set_ams_honours_the_models_event_selection():
    columns = leaderboard_set(4000, 2)
    passed = np.random.default_rng(3).random(4000) < 0.7
    got = score_set({**columns, "selected": passed}, 0.5)
    w = columns["KaggleWeight"].astype(np.float64)
    expected = direct_ams(columns["score"], columns["Label"], w, 0.5, selected=passed)
    assert got["ams"] == pytest.approx(expected, rel=1e-9)
    assert got["ams"] != pytest.approx(score_set(columns, 0.5)["ams"])
    assert got["selected_fraction"] == pytest.approx(((columns["score"] >= 0.5) & passed).mean())


def test_a_complete_set_keeps_its_kaggle_weights_and_a_set_without_a_class_has_no_ams():
    columns = leaderboard_set(20_000, 4, complete=True)
    got = score_set(columns, 0.6)
    w = columns["KaggleWeight"].astype(np.float64)
    chosen = columns["score"] >= 0.6
    s, b = w[chosen & (columns["Label"] == 1)].sum(), w[chosen & (columns["Label"] == 0)].sum()
    unscaled = math.sqrt(2 * ((s + b + 10) * math.log(1 + s / (b + 10)) - s))
    assert got["ams"] == pytest.approx(unscaled, rel=1e-5)  # float32 weights: factor 1 +- 1e-7
    one_class = {k: v[columns["Label"] == 0] for k, v in columns.items()}
    got = score_set(one_class, 0.6)
    assert got["ams"] is None and got["auc"] is None and got["n_signal"] == 0


# --- the block and whether it is comparable -----------------------------------------------------


def test_block_of_complete_official_sets_is_comparable_with_the_anchors():
    sets = {"public": leaderboard_set(100_000, 5, complete=True),
            "private": leaderboard_set(450_000, 6, complete=True)}
    block = leaderboard_block(format="official", source="csv", ams=AMS, sets=sets)
    assert block["comparable"] is True and "comparable to the leaderboard" in block["note"]
    assert block["threshold"] == 0.6 and block["selected_fraction_validation"] == 0.17
    assert block["threshold_from"] == "the best AMS on the validation split"
    assert block["anchors"] == ANCHORS == {"winner": 3.80581, "best single XGBoost": 3.72370,
                                           "TMVA BDT baseline": 3.19956}
    assert block["private"]["n_events"] == 450_000
    lines = summary_lines(block)
    assert "public" in lines[1] and "private" in lines[2]
    assert f"AMS {block['private']['ams']:.4f}" in lines[2]
    assert "winner 3.80581" in lines[3] and "TMVA BDT baseline 3.19956" in lines[3]
    assert not leaderboard_block(format="official", source="csv", ams=AMS, sets=sets,
                                 b_reg=1.0)["comparable"]


@pytest.mark.parametrize(("format", "source", "sets", "says"), [
    ("synthetic", "synthetic", {}, "Synthetic data"),
    ("official", "synthetic", {"public": 300}, "Synthetic data"),
    ("kaggle-training", "csv", {}, "Kaggle training.csv has no leaderboard sets"),
    ("official", "csv", {}, "hold no leaderboard events"),
    ("official", "csv", {"public": 150, "private": 250},
     "150 of 100,000 public and 250 of 450,000 private"),
])
def test_block_says_why_it_is_not_comparable(format, source, sets, says):
    scored = {name: leaderboard_set(n, 7) for name, n in sets.items()}
    block = leaderboard_block(format=format, source=source, ams=AMS, sets=scored)
    assert block["comparable"] is False and says in block["note"]
    assert block["format"] == format and block["source"] == source
    assert {"public", "private"} & set(block) == set(sets)
    text = "\n".join(summary_lines(block))
    assert says in text and "published private AMS" not in text


def test_block_says_when_the_test_split_chose_the_threshold():
    block = leaderboard_block(format="synthetic", source="synthetic", sets={},
                              ams={"best": {"threshold": 0.5}, "threshold_split": "test"})
    assert "test split" in block["threshold_from"] and "optimistic" in block["threshold_from"]
    assert block["selected_fraction_validation"] is None
    assert "of validation selected" not in summary_lines(block)[0]


# --- ranks ---------------------------------------------------------------------------------------


def test_rank_order_is_the_rank_not_the_sorting_permutation():
    score = np.array([0.9, 0.1, 0.5, 0.3])
    assert rank_order(score).tolist() == [4, 1, 3, 2]
    assert (np.argsort(score) + 1).tolist() != [4, 1, 3, 2]  # the ancestor's notebook's ranks
    ties = np.array([0.2, 0.7, 0.2, 0.7])
    assert rank_order(ties).tolist() == [1, 3, 2, 4]


# --- check_submission on hand-broken files ------------------------------------------------------


def _good(tmp_path: Path) -> tuple[Path, list[str]]:
    rows = [f"{100000 + i},{r},{'s' if r > 3 else 'b'}" for i, r in enumerate([2, 5, 1, 4, 3])]
    path = tmp_path / "submission.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path, rows


def test_check_submission_accepts_a_valid_file(tmp_path):
    path, _ = _good(tmp_path)
    assert check_submission(path, event_ids=range(100000, 100005)) == {
        "N": 5, "n_signal": 2, "path": path}


@pytest.mark.parametrize(("edit", "says"), [
    (lambda h, r: ["EventId,RankOrder", *r], "line 1 must be the header"),
    (lambda h, r: ["eventid,rankorder,class", *r], "line 1 must be the header"),
    (lambda h, r: [], "the file is empty"),
    (lambda h, r: [h], "no row"),
    (lambda h, r: [h, *r[:2], "100002,1", *r[3:]], "line 4"),
    (lambda h, r: [h, *r[:2], "100002,x,b", *r[3:]], "line 4"),
    (lambda h, r: [h, *r[:2], "100002,1.0,b", *r[3:]], "whole numbers"),
    (lambda h, r: [h, *r[:4], "100004,3,S"], "Class must be s or b"),
    (lambda h, r: [h, *r[:4], "100004,6,b"], "line 6 has RankOrder 6, outside 1..5"),
    (lambda h, r: [h, *r[:4], "100004,2,b"], "line 6 repeats the RankOrder 2 of line 2"),
    (lambda h, r: [h, *r[:4], "100000,3,b"], "line 6 repeats the EventId 100000 of line 2"),
    (lambda h, r: [h, *r[:4], "999999,3,b"], "999999, which is not an event of the test set"),
    (lambda h, r: [h, *r[:3], "100004,3,b"], "it has 4 rows, and the test set has 5 events"),
    (lambda h, r: [h, *r[:2], "", *r[2:]], "line 4"),
])
def test_check_submission_names_the_file_and_line_of_a_broken_submission(tmp_path, edit, says):
    path, rows = _good(tmp_path)
    lines = edit(HEADER, rows)
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    with pytest.raises(HepdaskError) as caught:
        check_submission(path, event_ids=range(100000, 100005))
    message = str(caught.value)
    assert says in message and str(path) in message and "\n" not in message
    assert "hepdask higgsml submission" in message


def test_check_submission_of_a_missing_or_binary_file(tmp_path):
    with pytest.raises(HepdaskError, match="does not exist"):
        check_submission(tmp_path / "nope.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(HepdaskError, match="cannot be read as ASCII"):
        check_submission(tmp_path / "bin.csv")
