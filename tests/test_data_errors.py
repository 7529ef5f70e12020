"""Bad data give one paragraph naming the sample, file, branch or config key, never a traceback:
empty trees, RNTuples, bad weights, features without a finite value, labels that leak into
the features through a collection's columns, split objects' sub-branches."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import shared_file, toy_config, write_sample

from hepdask import HepdaskError, Pipeline
from hepdask.bundle import Bundle
from hepdask.config import from_dict, load_config
from hepdask.dataset import open_dataset
from hepdask.features import build_features, make_layout
from hepdask.predict import predict
from hepdask.specs import compute_specs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Small toy files: signal, background, one with an empty tree, one RNTuple."""
    base = tmp_path_factory.mktemp("dataerr")
    write_sample(base / "sig_0.root", 1500, signal=True, seed=1)
    arrays = write_sample(base / "bkg_0.root", 2000, signal=False, seed=3)
    write_sample(base / "empty.root", 0, signal=False, seed=4)
    with uproot.recreate(base / "rntuple.root") as f:  # uproot writes a dict as an RNTuple
        f["events"] = arrays
    return base


def config_text(data, tmp_path, *, background: str = '["{d}/bkg_0.root"]', extra: str = "",
                weight: str = "weight") -> str:
    """The toy config with the background sample's files (and weight) replaced."""
    text = toy_config(tmp_path, data, extra).read_text()
    text = text.replace(f'files = ["{data}/bkg_0.root"]', "files = " + background.format(d=data))
    text = text.replace('label = 0\nweight = "weight"', f"label = 0\nweight = {weight!r}")
    text = text.replace("n_workers = 2", "n_workers = 1").replace("num_boost_round = 40",
                                                                  "num_boost_round = 5")
    return text.replace("sig_*.root", "sig_0.root")


def run_cli(tmp_path, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "hepdask", "run", str(path), "-q"],
                          capture_output=True, text=True, timeout=300)


def one_paragraph(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = result.stderr.split("error:", 1)[1]
    for word in words:
        assert word in message, message
    return message


def test_a_sample_of_empty_trees_stops_with_one_paragraph(data, tmp_path):
    result = run_cli(tmp_path, config_text(data, tmp_path, background='["{d}/empty.root"]'))
    one_paragraph(result, "'background'", str(data / "empty.root"), "no entries", "cannot train")


def test_empty_files_of_a_sample_are_skipped_with_a_note(data, tmp_path, caplog):
    path = tmp_path / "run.toml"
    path.write_text(config_text(data, tmp_path, background='["{d}/empty.root", "{d}/bkg_0.root"]'))
    with caplog.at_level(logging.INFO, logger="hepdask"):
        dataset = open_dataset(load_config(path))
    background = dataset.samples[1]
    assert [f.path for f in background.files] == [str(data / "bkg_0.root")]
    assert background.n_events == 2000
    assert any(str(data / "empty.root") in r.message and "no entries" in r.message
               for r in caplog.records)


def test_an_rntuple_sample_trains_and_is_scored(data, tmp_path, client):
    path = tmp_path / "run.toml"
    path.write_text(config_text(data, tmp_path, background='["{d}/rntuple.root"]'))
    pipe = Pipeline.from_config(path, client=client, progress=False)
    assert isinstance(uproot.open(data / "rntuple.root")["events"], uproot.behaviors.RNTuple.RNTuple)
    metrics = pipe.run()
    assert pipe.specs().samples["background"].events == 2000 and metrics["auc"] > 0.8
    assert "Jet.n" in pipe.features().names
    done = predict(Bundle.load(pipe.run_dir), [str(data / "rntuple.root")], tmp_path / "scored",
                   client=client)
    scores = uproot.open(done[0].output)["toy"]["score"].array(library="np")
    assert len(scores) == 2000 and np.isfinite(scores).all()


def test_nan_weights_name_the_sample_and_expression(data, tmp_path):
    result = run_cli(tmp_path, config_text(data, tmp_path, weight="log(met - 30)"))
    message = one_paragraph(result, "samples.background.weight", "'log(met - 30)'", "of the 2000",
                            "selection.events")
    assert "train.xgboost.params" not in message


def test_negative_weights_stop_with_advice(data, tmp_path, client):
    path = tmp_path / "run.toml"
    path.write_text(config_text(data, tmp_path, weight="met - 30",
                                extra='\n[train]\nengine = "sklearn"\n'))
    met = uproot.open(data / "bkg_0.root")["events"]["met"].array(library="np")
    with pytest.raises(HepdaskError) as err:
        Pipeline.from_config(path, progress=False).features(client=client)
    message = str(err.value)
    for word in ("samples.background.weight", "'met - 30'", f"{(met < 30).sum()} of the 2000",
                 "negative", "XGBoost", "ROC AUC", "selection.events", "abs("):
        assert word in message, message


def test_features_without_a_finite_value_are_left_out(data, tmp_path, client):
    path = tmp_path / "run.toml"
    path.write_text(config_text(data, tmp_path, extra='\n[derived]\ndead = "log(mass - 1e6)"\n'
                                                      'lost = "mmc * 0 - 999"\n')
                    .replace('branches = ["mass", "met", "mmc", "njet", "Jet_*"]',
                             'branches = ["mass", "met", "dead", "lost"]'))
    pipe = Pipeline.from_config(path, client=client, progress=False)
    pipe.run()
    features = json.loads((pipe.run_dir / "features.json").read_text())
    assert features["names"] == ["mass", "met"]
    notes = " ".join(features["notes"])
    assert "'dead'" in notes and "'lost'" in notes and "no finite value" in notes
    # a zero-entry input still gets its (empty) friend tree
    done = predict(Bundle.load(pipe.run_dir), [str(data / "empty.root")], tmp_path / "scored",
                   client=client)
    assert done[0].entries == 0
    assert uproot.open(done[0].output)["toy"].num_entries == 0


def test_no_feature_with_a_finite_value_is_one_paragraph(data, tmp_path, client):
    path = tmp_path / "run.toml"
    path.write_text(config_text(data, tmp_path, extra='\n[derived]\ndead = "log(mass - 1e6)"\n')
                    .replace('branches = ["mass", "met", "mmc", "njet", "Jet_*"]',
                             'branches = ["dead"]'))
    with pytest.raises(HepdaskError, match=r"No feature is left.*'dead'.*no finite value"):
        Pipeline.from_config(path, client=client, progress=False).features(client=client)


def test_a_label_leaves_out_its_collection_columns(tmp_path, client):
    hzz = str(shared_file("root", "uproot-HZZ.root"))
    config = from_dict({
        "name": "leak", "output": str(tmp_path / "runs"),
        "samples": [{"name": "hzz", "files": [hzz], "label": "NMuon >= 2"}],
        "data": {"step_size": 1000},
        "features": {"branches": ["Muon_*", "MET_px", "MET_py", "NJet", "Jet_Px", "nlep"],
                     "pad": 2},
        "derived": {"nlep": "NMuon + NElectron"},
        "train": {"xgboost": {"num_boost_round": 10}},
    })
    pipe = Pipeline(config, client=client, progress=False)
    metrics = pipe.run()
    features = json.loads((pipe.run_dir / "features.json").read_text())
    names = features["names"]
    assert not [n for n in names if n.startswith("Muon")], names
    assert "Jet.n" in names and "MET_px" in names and "nlep" not in names
    assert any("'Muon'" in n and "NMuon >= 2" in n for n in features["notes"]), features["notes"]
    assert metrics["auc"] < 0.9


def test_the_sub_branches_of_split_objects_are_features_by_their_full_name(client, tmp_path):
    path = Path(__file__).with_name("data") / "split_objects.root"
    config = from_dict({
        "name": "split", "output": str(tmp_path / "runs"),
        "samples": [{"name": "split", "files": [str(path)], "label": "mass > 110"}],
        "data": {"step_size": 100},
        "features": {"branches": ["*"], "pad": 2, "normalize": "none"},
        "train": {"xgboost": {"num_boost_round": 3}},
    })
    dataset = open_dataset(config)
    assert [b.name for b in dataset.branches] == ["Info/pfMET", "Info/evtNum", "Lep/Lep.pt",
                                                  "Lep/Lep.eta"]
    assert any("'Info'" in n and "Info/pfMET" in n for n in dataset.notes), dataset.notes
    specs = compute_specs(dataset, client=client)
    layout = make_layout(dataset, specs, config.features)
    assert layout.names == ("Info/pfMET", "Info/evtNum", "Lep.n", "Lep.mask[0]", "Lep.mask[1]",
                            "Lep/Lep.pt[0]", "Lep/Lep.pt[1]", "Lep/Lep.eta[0]", "Lep/Lep.eta[1]")
    features = build_features(dataset, layout, specs)
    X = np.concatenate([features[s].X.compute() for s in ("train", "validation", "test")])
    tree = uproot.open(path)["events"]
    met, pt = tree["Info/pfMET"].array(library="np"), tree["Lep/Lep.pt"].array()
    assert specs["Info/pfMET"].sum == pytest.approx(met.astype(np.float64).sum())
    assert specs["Lep/Lep.pt"].count == len(ak.flatten(pt))
    assert sorted(X[:, 0]) == sorted(met) and sorted(X[:, 2]) == sorted(ak.num(pt).tolist())
    # trained on them, the model scores files of split objects
    pipe = Pipeline(config, client=client, progress=False)
    pipe.run()
    done = predict(Bundle.load(pipe.run_dir), [str(path)], tmp_path / "scored", client=client)
    scores = uproot.open(done[0].output)["split"]["score"].array(library="np")
    assert len(scores) == 300 and np.isfinite(scores).all()
