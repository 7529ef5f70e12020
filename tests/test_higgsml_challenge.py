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
    assert "validation split" in lines[1] and "public" in lines[2] and "private" in lines[3]
    assert f"AMS {block['private']['ams']:.4f}" in lines[3]
    assert "winner 3.80581" in lines[4] and "TMVA BDT baseline 3.19956" in lines[4]
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
    assert "of validation" not in summary_lines(block)[0]


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


# --- end to end: an official file with leaderboard sets, a real run, a submission ---------------

FIRST1000 = ("higgsml", "atlas-higgs-challenge-2014-v2-first1000.csv")
# The shared sample is all KaggleSet t: reassigned, its last 400 events become leaderboard sets.
KAGGLE_SETS = np.array([ord("t")] * 600 + [ord("b")] * 150 + [ord("v")] * 250, np.uint8)


def _run(base: Path, csv: Path, client):
    """A real Pipeline.run of configs/higgs.toml (shrunk) on ``csv``, prepared in base/higgs."""
    import tomllib

    from test_pipeline import HIGGS

    from hepdask import Pipeline
    from hepdask.config import apply_overrides, from_dict

    data = base / "higgs"
    config = from_dict(apply_overrides(tomllib.loads(HIGGS.read_text()), [
        f"prepare.directory='{data}'", f"prepare.csv='{csv}'",
        "prepare.download=false", "prepare.events_per_file=5000",
        f"samples.0.files=['{data}/signal_*.root']",
        f"samples.1.files=['{data}/background_*.root']", f"output='{base / 'runs'}'",
        "data.step_size=200", "train.xgboost.num_boost_round=30",
        'cluster.dashboard_address="127.0.0.1:0"']))
    pipe = Pipeline(config, client=client, progress=False)
    return pipe, pipe.run()


@pytest.fixture(scope="module")
def official_run(tmp_path_factory, client):
    """A real Pipeline.run on the official-format file with t/b/v events: (pipe, metrics, the
    CSV's columns, the prepared data)."""
    from conftest import shared_file

    from hepdask.higgsml import read_csv
    from hepdask.higgsml.convert import write_csv

    base = tmp_path_factory.mktemp("official")
    columns = read_csv(shared_file(*FIRST1000))
    columns["KaggleSet"] = KAGGLE_SETS
    write_csv(columns, base / "official.csv")
    pipe, metrics = _run(base, base / "official.csv", client)
    return pipe, metrics, columns, pipe.prepared


def _scores_here(run_dir: Path, columns: dict) -> np.ndarray:
    """The model's scores of ``columns``, computed in this process (not through score_files)."""
    from hepdask.bundle import Bundle, records

    bundle = Bundle.load(run_dir)
    n = len(columns["EventId"])
    return np.asarray(bundle.score(records({k: columns[k] for k in bundle.inputs}, n))["score"])


def test_public_and_private_ams_of_a_real_run_are_numpys_on_the_kaggle_sets(official_run):
    import json

    import uproot

    from hepdask.bundle import Bundle
    from hepdask.evaluate import summary
    from hepdask.predict import score_files

    pipe, metrics, columns, prepared = official_run
    assert sorted(prepared.files) >= ["background", "private", "public", "signal"]
    assert metrics["n_test"] + metrics["n_train"] + metrics["n_validation"] == 600  # t only
    block = metrics["higgsml"]
    assert json.loads((pipe.run_dir / "metrics.json").read_text())["higgsml"] == block
    assert block["format"] == metrics["data"]["format"] == "official"
    assert block["source"] == "csv" and block["comparable"] is False
    assert "150 of 100,000 public and 250 of 450,000 private" in block["note"]
    assert block["threshold"] == metrics["ams"]["best"]["threshold"]
    assert block["selected_fraction_validation"] == \
        metrics["ams"]["best"]["selected_fraction_validation"]
    assert "higgsml" in metrics["timings_s"]
    scores = _scores_here(pipe.run_dir, columns)
    for name, letter, n in (("public", "b", 150), ("private", "v", 250)):
        rows = KAGGLE_SETS == ord(letter)
        label, weight = columns["Label"][rows], columns["KaggleWeight"][rows].astype(np.float64)
        got = block[name]
        assert (got["n_events"], got["n_signal"]) == (n, int(label.sum()))
        expected = direct_ams(scores[rows], label, weight, block["threshold"])
        assert got["ams"] == pytest.approx(expected, rel=1e-9)
        assert got["selected_fraction"] == pytest.approx((scores[rows] >= block["threshold"]).mean())
        # score_files: every event of the series, in order, the scores of this process
        with uproot.open(prepared.files[name][0]) as file:
            ids = file[prepared.tree]["EventId"].array(library="np")
        np.testing.assert_array_equal(ids, columns["EventId"][rows])
    scored = score_files(Bundle.load(pipe.run_dir), [str(p) for p in prepared.files["private"]],
                         client=pipe.client, passthrough=["EventId"], step_size=70)
    np.testing.assert_array_equal(scored["EventId"], columns["EventId"][KAGGLE_SETS == ord("v")])
    np.testing.assert_array_equal(scored["score"], scores[KAGGLE_SETS == ord("v")])
    text = summary(metrics, pipe.run_dir)
    assert "HiggsML (official, csv)" in text and "published private AMS" not in text
    assert f"public  AMS {block['public']['ams']:.4f}" in text and "150 of 100,000" in text
    assert max(map(len, summary_lines(block))) <= 100


def _assert_ranks_follow_scores(path: Path, scores: np.ndarray, threshold: float) -> None:
    import pandas as pd

    table = pd.read_csv(path)
    ranks, classes = table["RankOrder"].to_numpy(), table["Class"].to_numpy()
    order = np.argsort(scores, kind="stable")
    assert (np.diff(ranks[order]) > 0).all(), "RankOrder is not monotone in the score"
    assert ranks[order[0]] == 1 and ranks[order[-1]] == len(scores)  # N: the most signal-like
    np.testing.assert_array_equal(classes == "s", scores >= threshold)


def test_submission_of_the_shared_sample_is_valid_and_ranked_by_score(official_run, tmp_path,
                                                                      monkeypatch):
    from conftest import shared_file

    from hepdask.higgsml import read_csv, submission
    from hepdask.higgsml.convert import write_csv

    pipe, metrics, columns, _ = official_run
    test_csv = write_csv(read_csv(shared_file(*FIRST1000)), tmp_path / "test.csv",
                         format="kaggle-test")
    out = tmp_path / "submission.csv"
    done = submission.write_submission(pipe.run_dir, test_csv, out)
    threshold = metrics["higgsml"]["threshold"]
    scores = _scores_here(pipe.run_dir, columns)
    assert done["N"] == 1000 and done["path"] == out and done["threshold"] == threshold
    assert done["n_signal"] == int((scores >= threshold).sum()) > 0
    assert "higgsml.threshold" in done["threshold_from"]
    assert check_submission(out, event_ids=columns["EventId"])["N"] == 1000
    assert out.read_text().splitlines()[0] == "EventId,RankOrder,Class"
    _assert_ranks_follow_scores(out, scores, threshold)
    # the ancestor's ranks (plain argsort) make a valid file whose ranks do not follow the score
    monkeypatch.setattr(submission, "rank_order",
                        lambda score: np.argsort(score, kind="stable") + 1)
    submission.write_submission(pipe.run_dir, test_csv, tmp_path / "argsort.csv")
    with pytest.raises(AssertionError, match="not monotone"):
        _assert_ranks_follow_scores(tmp_path / "argsort.csv", scores, threshold)


def test_cli_submission_and_a_second_one_over_it(official_run, tmp_path, monkeypatch):
    from conftest import shared_file
    from test_pipeline import hepdask

    from hepdask.higgsml import read_csv, submission
    from hepdask.higgsml.convert import write_csv

    pipe, *_ = official_run
    write_csv(read_csv(shared_file(*FIRST1000)), tmp_path / "test.csv", format="kaggle-test")
    result = hepdask(tmp_path, "higgsml", "submission", str(pipe.run_dir), "test.csv",
                     "-o", "sub.csv", "--threshold", "0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Wrote sub.csv: 1,000 events" in result.stdout
    assert "score >= 0.5 (from --threshold)" in result.stdout
    before = (tmp_path / "sub.csv").read_bytes()

    def broken(*args, **kwargs):
        raise HepdaskError("the check failed")

    monkeypatch.setattr(submission, "check_submission", broken)
    with pytest.raises(HepdaskError, match="the check failed"):
        submission.write_submission(pipe.run_dir, tmp_path / "test.csv", tmp_path / "sub.csv")
    assert (tmp_path / "sub.csv").read_bytes() == before  # the first one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv", "test.csv"]
    monkeypatch.undo()
    submission.write_submission(pipe.run_dir, tmp_path / "test.csv", tmp_path / "sub.csv")
    assert (tmp_path / "sub.csv").read_bytes() != before  # the run's threshold, not 0.5

    result = hepdask(tmp_path, "higgsml", "submission", str(tmp_path / "nope"), "test.csv",
                     "-o", "x.csv")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nope" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    result = hepdask(tmp_path, "higgsml", "check", "sub.csv", "--test", "test.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sub.csv: a valid Kaggle submission, 1,000 events" in result.stdout
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    (tmp_path / "sub.csv").write_text("\n".join([*lines[:-1], lines[1]]) + "\n")  # hand-edited
    result = hepdask(tmp_path, "higgsml", "check", "sub.csv")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "line 1001 repeats the RankOrder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _one_paragraph(caught: pytest.ExceptionInfo, *names: object) -> str:
    message = str(caught.value)
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, (name, message)
    return message


def test_submission_refuses_bad_inputs_with_one_paragraph(official_run, tmp_path):
    import json
    import shutil

    from conftest import shared_file

    from hepdask.higgsml import read_csv
    from hepdask.higgsml.convert import write_csv
    from hepdask.higgsml.submission import write_submission

    pipe, *_ = official_run
    test_csv = write_csv(read_csv(shared_file(*FIRST1000)), tmp_path / "test.csv",
                         format="kaggle-test")
    out = tmp_path / "sub.csv"
    with pytest.raises(HepdaskError) as caught:
        write_submission(tmp_path / "missing-run", test_csv, out)
    _one_paragraph(caught, tmp_path / "missing-run", "bundle.json")
    multi = tmp_path / "multi"
    shutil.copytree(pipe.run_dir, multi)
    info = json.loads((multi / "bundle.json").read_text())
    info["classes"] = {"0": ["background"], "1": ["signal"], "2": ["other"]}
    (multi / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(HepdaskError) as caught:
        write_submission(multi, test_csv, out)
    assert "binary model" in _one_paragraph(caught, multi, "3 classes")
    lacking = tmp_path / "lacking.csv"
    lacking.write_text("EventId,DER_mass_MMC,PRI_tau_pt\n350000,120.0,30.0\n")
    with pytest.raises(HepdaskError) as caught:
        write_submission(pipe.run_dir, lacking, out)
    _one_paragraph(caught, lacking, "DER_mass_transverse_met_lep")
    with pytest.raises(HepdaskError) as caught:
        write_submission(pipe.run_dir, test_csv, tmp_path / "no" / "such" / "sub.csv")
    assert "does not exist" in _one_paragraph(caught, tmp_path / "no" / "such")
    with pytest.raises(HepdaskError) as caught:
        write_submission(pipe.run_dir, test_csv, test_csv)
    assert "would replace the test CSV" in _one_paragraph(caught, test_csv)
    with pytest.raises(HepdaskError) as caught:
        write_submission(pipe.run_dir, test_csv, tmp_path)
    assert "is a directory" in _one_paragraph(caught, tmp_path)
    with pytest.raises(HepdaskError) as caught:
        write_submission(pipe.run_dir, test_csv, out, threshold=float("nan"))
    _one_paragraph(caught, "nan")
    unevaluated = tmp_path / "unevaluated"
    shutil.copytree(pipe.run_dir, unevaluated)
    (unevaluated / "metrics.json").unlink()
    with pytest.raises(HepdaskError) as caught:
        write_submission(unevaluated, test_csv, out)
    assert "--threshold" in _one_paragraph(caught, unevaluated / "metrics.json")
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_submission_of_a_model_that_is_not_higgsml(toy_data, client, tmp_path):
    from conftest import toy_config

    from hepdask import Pipeline
    from hepdask.higgsml import synthesize
    from hepdask.higgsml.convert import write_csv
    from hepdask.higgsml.submission import write_submission

    pipe = Pipeline.from_config(toy_config(tmp_path, toy_data["dir"]),
                                overrides=["train.xgboost.num_boost_round=5"], client=client,
                                progress=False)
    metrics = pipe.run()
    assert "higgsml" not in metrics  # the toy files come from no prepared HiggsML directory
    test_csv = write_csv(synthesize(50, seed=1), tmp_path / "test.csv", format="kaggle-test")
    with pytest.raises(HepdaskError) as caught:
        write_submission(pipe.run_dir, test_csv, tmp_path / "sub.csv")
    assert "not a HiggsML model" in _one_paragraph(caught, pipe.run_dir, test_csv, "mass")


def test_submission_of_a_model_trained_on_synthetic_data_says_so(official_run, tmp_path, caplog):
    import json
    import shutil

    from hepdask.higgsml import synthesize
    from hepdask.higgsml.convert import write_csv
    from hepdask.higgsml.submission import write_submission

    pipe, *_ = official_run
    run = tmp_path / "synthetic-run"
    shutil.copytree(pipe.run_dir, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["data"]["source"] = "synthetic"
    (run / "metrics.json").write_text(json.dumps(metrics))
    test_csv = write_csv(synthesize(50, seed=1), tmp_path / "test.csv", format="kaggle-test")
    with caplog.at_level("WARNING", logger="hepdask"):
        assert write_submission(run, test_csv, tmp_path / "sub.csv")["N"] == 50
    assert "trained on synthetic data" in caplog.text and str(run) in caplog.text


def test_a_run_on_kaggle_training_csv_says_its_ams_is_not_the_leaderboards(tmp_path, client):
    from conftest import shared_file

    from hepdask.evaluate import summary
    from hepdask.higgsml import read_csv
    from hepdask.higgsml.convert import write_csv

    csv = write_csv(read_csv(shared_file(*FIRST1000)), tmp_path / "training.csv",
                    format="kaggle-training")
    pipe, metrics = _run(tmp_path, csv, client)
    block = metrics["higgsml"]
    assert block["format"] == "kaggle-training" and block["comparable"] is False
    assert not {"public", "private"} & set(block)
    assert block["threshold"] == metrics["ams"]["best"]["threshold"]
    assert "higgsml" not in metrics["timings_s"]  # nothing to score
    text = " ".join(summary(metrics, pipe.run_dir).split())
    assert "Kaggle training.csv has no leaderboard sets" in text
