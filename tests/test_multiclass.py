"""Labels from data and more than two classes, with XGBoost (multi:softprob) and Keras (softmax)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import uproot
from conftest import toy_config

from hepdask.bundle import Bundle
from hepdask.config import load_config
from hepdask.errors import HepdaskError
from hepdask.pipeline import Pipeline
from hepdask.predict import predict

# Signal events are class 1 or 2 by their number of jets: a label computed from the data.
THREE_CLASSES = ['samples.0.label="where(njet >= 2, 2, 1)"', "features.pad=4"]


@pytest.mark.parametrize("engine", ["xgboost", "keras"])
def test_three_classes_from_a_label_expression(toy_data, tmp_path, client, engine):
    config = load_config(toy_config(tmp_path, toy_data["dir"]),
                         [*THREE_CLASSES, f"train.engine={engine!r}", "train.keras.epochs=3",
                          "evaluate.metrics=['accuracy', 'f1', 'logloss']"])
    pipe = Pipeline(config, output=tmp_path / engine, client=client)
    metrics = pipe.run()
    specs = pipe.specs()
    assert sorted(specs.classes) == [0, 1, 2]
    arrays = toy_data["arrays"]
    two_jets = sum(int((np.asarray(arrays[f]["njet"]) >= 2).sum()) for f in ("sig_0", "sig_1"))
    assert specs.classes[2].events == two_jets and specs.classes[0].events == 6000
    assert "njet" not in pipe.features().names  # it defines the label
    assert metrics["n_classes"] == 3 and len(metrics["auc_per_class"]) == 3
    assert metrics["auc"] > 0.8 and metrics["accuracy"] > 0.6
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["n_test"]
    assert {"f1", "logloss"} <= set(metrics)
    scores, y, _ = pipe._model.scores(client, pipe.features(), "test")
    assert scores.shape == (len(y), 3) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-4)
    assert (tmp_path / engine / "roc.png").exists()
    assert json.loads((tmp_path / engine / "metrics.json").read_text())["n_classes"] == 3
    # predict: one score column per class, for files without the label's input branch too
    bundle = Bundle.load(tmp_path / engine)
    assert bundle.classes == {0: ["background"], 1: [], 2: []}
    assert bundle.info["label_expressions"] == {"signal": "where(njet >= 2, 2, 1)"}
    assert "njet" not in bundle.inputs
    predict(bundle, [str(toy_data["dir"] / "bkg_0.root")], tmp_path / "scored", client=client)
    with uproot.open(tmp_path / "scored" / "bkg_0.root") as f:
        friend = f["toy"].arrays(library="np")
    assert sorted(friend) == ["score_0", "score_1", "score_2"] and len(friend["score_0"]) == 6000
    total = friend["score_0"] + friend["score_1"] + friend["score_2"]
    assert np.allclose(total, 1.0, atol=1e-4)
    if engine == "xgboost":  # 3 epochs leave the network undecided
        assert friend["score_0"].mean() > 0.5
        # what was really trained is recorded, beside the config's default binary objective
        for recorded in (metrics["model"], bundle.info["model"]):
            assert recorded["params"]["objective"] == "multi:softprob"
            assert "binary:logistic" in recorded["notes"][0]
        assert config.train.xgboost.params["objective"] == "binary:logistic"


def test_classes_must_be_numbered_without_gaps(toy_data, tmp_path, client):
    config = load_config(toy_config(tmp_path, toy_data["dir"]), ["samples.0.label=2"])
    with pytest.raises(HepdaskError, match=r"classes \[0, 2\].*without gaps"):
        Pipeline(config, output=tmp_path / "gap", client=client).features()
