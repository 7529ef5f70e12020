"""MLaaS4HEP workflows run as they are, and converted to TOML."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hepdask.config import from_dict, load_config
from hepdask.errors import HepdaskError
from hepdask.mlaas4hep import convert, to_toml
from hepdask.pipeline import Pipeline

KERAS_MODEL = """
import keras


def model(idim):
    "A small MLaaS4HEP-style Keras model"
    ml_model = keras.Sequential([keras.Input((idim,)),
                                 keras.layers.Dense(32, activation="relu"),
                                 keras.layers.Dense(1, activation="sigmoid")])
    ml_model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return ml_model
"""


def workflow(directory: Path, data: Path) -> dict[str, str]:
    """files.txt, labels.txt, params.json, preproc.json and model.py as MLaaS4HEP users write them."""
    (directory / "files.txt").write_text(
        f"# signal\n{data}/sig_0.root\n{data}/sig_1.root\n# background\n{data}/bkg_0.root\n")
    (directory / "labels.txt").write_text("1\n1\n0\n")
    (directory / "params.json").write_text(json.dumps({
        "nevts": -1, "chunk_size": 2000, "epochs": 6, "batch_size": 256, "shuffle": True,
        "branch": "events", "identifier": "", "selected_branches": "",
        "exclude_branches": ["weight"], "redirector": "", "verbose": 1,
        "metrics": ["accuracy", "auc"], "hist": "pdfs",
    }))
    (directory / "preproc.json").write_text(json.dumps({
        "new_branch": {"log_mass": {"def": "log(mass)", "type": "flat", "cut": "log_mass > 3.5",
                                    "remove": "False", "keys_to_remove": ["mass"]}},
        "flat_cut": {"met": {"cut": "met < 300", "remove": "False"}},
        "jagged_cut": {"Jet_pt": {"cut": ["Jet_pt < 2000", "all"], "remove": "False"}},
    }))
    (directory / "model.py").write_text(KERAS_MODEL)
    return {k: str(directory / f) for k, f in (("files", "files.txt"), ("labels", "labels.txt"),
                                               ("params", "params.json"),
                                               ("preproc", "preproc.json"), ("model", "model.py"))}


@pytest.mark.slow
def test_mlaas4hep_workflow_runs_as_it_is(toy_data, tmp_path):
    args = workflow(tmp_path, toy_data["dir"])
    command = [sys.executable, "-m", "hepdask", "run", "--mlaas4hep",
               *(x for k, v in args.items() for x in (f"--{k}", v)),
               "--output", str(tmp_path / "run"), "--set", "cluster.dashboard_address='127.0.0.1:0'"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "params.hist is not used" in result.stderr
    run = tmp_path / "run"
    assert "params.hist is not used" in (run / "run.log").read_text()  # the notes, also there
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["engine"] == "keras" and metrics["auc"] > 0.7 and 0.5 < metrics["accuracy"] <= 1
    read = sum(s["read"] for s in metrics["selection"].values())
    selected = sum(s["selected"] for s in metrics["selection"].values())
    assert read == 11000 and 10000 < selected < read
    layout = json.loads((run / "features.json").read_text())
    names = layout["names"]
    assert layout["preprocess"]["derived"] == {"log_mass": "log(mass)"}
    assert "log_mass" in names and "mass" not in names and "weight" not in names
    assert (run / "model.keras").exists()
    config = load_config(run / "config.toml")
    assert config.train.keras.epochs == 6 and config.data.step_size == 2000
    assert config.selection.events == "(log_mass > 3.5) and (met < 300) and (all(Jet_pt < 2000))"


def test_convert_writes_the_equivalent_toml(toy_data, tmp_path):
    args = workflow(tmp_path, toy_data["dir"])
    out = tmp_path / "converted.toml"
    command = [sys.executable, "-m", "hepdask", "convert-mlaas4hep",
               *(x for k, v in args.items() for x in (f"--{k}", v)), "-o", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    config = load_config(out)
    assert [(s.name, s.label) for s in config.samples] == [("sig_0", 1), ("sig_1", 1), ("bkg_0", 0)]
    assert config.data.tree == "events" and config.features.normalize == "minmax"
    assert config.derived == {"log_mass": "log(mass)"}
    assert set(config.features.exclude) == {"weight", "mass"}
    assert config.train.engine == "keras" and config.train.keras.model.endswith("model.py:model")
    assert config.train.stream.batch_size == 256 and config.evaluate.metrics == ("accuracy",)
    text = out.read_text()
    assert "# Note: params.hist is not used" in text and "# Note: params.verbose" in text


@pytest.mark.parametrize(("body", "engine"), [
    ("from sklearn.linear_model import SGDClassifier\n\ndef model():\n"
     "    return SGDClassifier(loss='log_loss')\n", "sklearn"),
    ("import xgboost\n\ndef model():\n    return xgboost.XGBClassifier(n_estimators=30, "
     "max_depth=3, learning_rate=0.3)\n", "xgboost"),
])
def test_estimator_models_train_end_to_end(toy_data, tmp_path, client, body, engine):
    args = workflow(tmp_path, toy_data["dir"])
    Path(args["model"]).write_text(body)
    raw, notes = convert(**{k: v for k, v in args.items()})
    assert raw["train"]["engine"] == engine
    metrics = Pipeline(from_dict(raw), output=tmp_path / "run", client=client).run()
    assert metrics["auc"] > 0.75
    if engine == "xgboost":
        assert metrics["best_iteration"] is None or metrics["best_iteration"] < 30
        assert any("epochs is not used" in n for n in notes)


def test_labels_from_a_branch_and_bad_inputs(tmp_path):
    (tmp_path / "model.py").write_text(KERAS_MODEL)
    raw, _ = convert(files="a.root,b.root", labels="isSignal", model=str(tmp_path / "model.py"))
    assert raw["samples"] == [{"name": "events", "files": ["a.root", "b.root"], "label": "isSignal"}]
    assert "[[samples]]" in to_toml(raw)
    with pytest.raises(HepdaskError, match="2 labels for 3 files"):
        convert(files="a.root,b.root,c.root", labels="1,0", model=str(tmp_path / "model.py"))
    (tmp_path / "rf.py").write_text(textwrap.dedent("""
        from sklearn.ensemble import RandomForestClassifier
        def model():
            return RandomForestClassifier()
    """))
    with pytest.raises(HepdaskError, match="RandomForestClassifier, which has no partial_fit"):
        convert(files="a.root", labels="1", model=str(tmp_path / "rf.py"))
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(HepdaskError, match=r"p\.json is not valid JSON"):
        convert(files="a.root", labels="1", model=str(tmp_path / "model.py"),
                params=str(tmp_path / "p.json"))


def test_the_xgboost_workflow_runs_as_mlaas4hep_wrote_it(toy_data, tmp_path, client):
    """chunk_size -1 (required by MLaaS4HEP for XGBoost), every n_estimators round trained, and
    "metrics": true as MLaaS4HEP's switch: before, -1 was refused as data.step_size, early
    stopping cut the rounds short, and true became a metric named "True"."""
    args = workflow(tmp_path, toy_data["dir"])
    params = json.loads(Path(args["params"]).read_text())
    Path(args["params"]).write_text(json.dumps({**params, "chunk_size": -1, "metrics": True}))
    Path(args["model"]).write_text(
        "import xgboost\n\ndef model():\n    return xgboost.XGBClassifier(n_estimators=60, "
        "max_depth=6, learning_rate=0.5)\n")
    raw, notes = convert(**args)
    config = from_dict(raw)
    assert config.data.step_size == from_dict({**raw, "data": {}}).data.step_size
    assert any("chunk_size = -1" in note for note in notes)
    assert config.evaluate.metrics == ("accuracy", "precision", "recall", "f1")
    assert "params.metrics" not in " ".join(notes)
    assert "step_size" not in to_toml(raw)
    metrics = Pipeline(config, output=tmp_path / "run", client=client).run()
    xgboost = pytest.importorskip("xgboost")
    booster = xgboost.Booster(model_file=str(tmp_path / "run" / "model.ubj"))
    assert booster.num_boosted_rounds() == 60  # learning rate 0.5 overfits well before
    assert metrics["best_iteration"] is None
    assert {"accuracy", "precision", "recall", "f1"} <= set(metrics)


@pytest.mark.parametrize("size", [0, -2, "many"])
def test_a_bad_chunk_size_is_named_as_the_params_key(tmp_path, toy_data, size):
    args = workflow(tmp_path, toy_data["dir"])
    Path(args["params"]).write_text(json.dumps({"chunk_size": size}))
    with pytest.raises(HepdaskError, match=r"params\.chunk_size is .*-1 to read each file"):
        convert(**args)
