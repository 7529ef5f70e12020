"""ONNX export: one graph per run that scores the raw padded features as hepdask does."""

from __future__ import annotations

import json
import sys

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import toy_config
from test_pipeline import hepdask

from hepdask import HepdaskError, Pipeline, load_config
from hepdask.bundle import Bundle
from hepdask.cli import main
from hepdask.export import export_onnx
from hepdask.predict import predict

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

STREAM = ["train.stream.batch_size=256", "train.stream.prefetch=2", "data.step_size=1000"]
THREE_CLASSES = ['samples.0.label="where(njet >= 2, 2, 1)"', "features.pad=4"]
# A derived feature, an object selection, an ordering and an event selection: all before the
# matrix, so the graph must not care, and model.json must say so.
RECIPE = ['derived.ratio="met / mass"', 'features.branches=["mass", "met", "mmc", "njet", '
          '"ratio", "Jet_*"]', 'selection.objects.Jet="Jet_pt > 40"',
          'features.collections.Jet.sort_by="Jet_eta"', 'selection.events="mass > 60"']
RUNS = {
    "xgboost": ["train.engine='xgboost'", "train.xgboost.num_boost_round=15", *RECIPE],
    "xgboost-3": ["train.engine='xgboost'", "train.xgboost.num_boost_round=15", *THREE_CLASSES],
    "keras": ["train.engine='keras'", "train.keras.epochs=1", "train.keras.hidden=[16, 8]",
              "train.stream.missing_indicators=true", *RECIPE],
    "keras-3": ["train.engine='keras'", "train.keras.epochs=1", "train.keras.hidden=[16]",
                *THREE_CLASSES],
    # hinge loss: no probabilities, hepdask scores with the decision function
    "sklearn": ["train.engine='sklearn'", "train.sklearn.epochs=1",
                "train.sklearn.params.loss='hinge'", "train.stream.missing_indicators=true"],
    "sklearn-3": ["train.engine='sklearn'", "train.sklearn.epochs=1", *THREE_CLASSES],
    "torch": ["train.engine='torch'", "train.torch.epochs=1", "train.torch.hidden=[16, 8]",
              "train.stream.missing_indicators=true", *RECIPE],
    # a user network that gives probabilities itself (its last layer is a softmax)
    "torch-3": ["train.engine='torch'", "train.torch.epochs=1",
                "train.torch.model='{dir}/network.py:network'", *THREE_CLASSES],
}
NETWORK = """
import torch

def network(n_features):
    return torch.nn.Sequential(torch.nn.Linear(n_features, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3), torch.nn.Softmax(dim=1))
"""
NEEDS = {"keras": "keras", "torch": "torch"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_data, client):
    """Train each run of RUNS once, when a test first asks for it."""
    base = tmp_path_factory.mktemp("export")
    done = {}

    def run(name: str):
        if name not in done:
            pytest.importorskip(NEEDS.get(name.split("-")[0], "sklearn"))
            where = base / name
            where.mkdir()
            (where / "network.py").write_text(NETWORK)
            overrides = [item.format(dir=where) for item in RUNS[name]]
            config = load_config(toy_config(where, toy_data["dir"]), [*STREAM, *overrides])
            Pipeline(config, output=where / "run", client=client).run()
            done[name] = where / "run"
        return done[name]

    return run


def events_of(bundle: Bundle, toy_data, name: str):
    with uproot.open(toy_data["dir"] / f"{name}.root") as f:
        return f["events"].arrays(bundle.inputs)


@pytest.mark.parametrize("name", list(RUNS))
def test_onnxruntime_scores_equal_hepdask_scores(trained, toy_data, tmp_path, name):
    run_dir = trained(name)
    path = export_onnx(run_dir, tmp_path / "model.onnx")
    bundle = Bundle.load(run_dir)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (feature,), (score,) = session.get_inputs(), session.get_outputs()
    assert (feature.name, feature.type, feature.shape) == ("features", "tensor(float)",
                                                           ["N", bundle.layout.width])
    assert score.name == "score" and score.type == "tensor(float)"
    for sample in ("sig_0", "bkg_0"):
        events = events_of(bundle, toy_data, sample)
        raw, _ = bundle.feature_matrix(events, raw=True)
        got = session.run(["score"], {"features": raw})[0]
        want = bundle.score(events)["score"]
        assert got.dtype == np.float32
        assert got.shape == ((len(events),) if bundle.n_classes == 2 else (len(events), 3))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        # missing values given as NaN rather than the sentinel score the same
        column = bundle.layout.names.index("mmc")
        assert (raw[:, column] == -999).any()
        raw[raw[:, column] == -999, column] = np.nan
        np.testing.assert_allclose(session.run(["score"], {"features": raw})[0], got, atol=1e-6)

    sidecar = json.loads(path.with_suffix(".json").read_text())
    features = json.loads((run_dir / "features.json").read_text())
    assert [c["name"] for c in sidecar["columns"]] == features["names"]
    assert sidecar["engine"] == bundle.engine and sidecar["sentinel"] == -999.0
    assert sidecar["tree"] == "events" and sidecar["classes"]["0"] == ["background"]
    assert sidecar["output"]["shape"] == (["N"] if bundle.n_classes == 2 else ["N", 3])


def test_the_raw_matrix_holds_the_padded_values_as_read(trained, toy_data, tmp_path):
    """The graph's input is what a C++ user fills: values as read, slots padded with NaN,
    the object selection and ordering applied, counts and 0/1 masks."""
    bundle = Bundle.load(trained("xgboost"))
    events = events_of(bundle, toy_data, "sig_0")
    raw, _ = bundle.feature_matrix(events, raw=True)
    names = bundle.layout.names
    assert np.array_equal(raw[:, names.index("mass")], np.asarray(events["mass"]))
    assert np.allclose(raw[:, names.index("ratio")], events["met"] / events["mass"])
    jets = events["Jet_pt"][events["Jet_pt"] > 40]
    eta = events["Jet_eta"][events["Jet_pt"] > 40]
    jets = jets[ak.argsort(eta, axis=1, ascending=False)]  # sort_by Jet_eta, descending
    n = ak.to_numpy(ak.num(jets))
    assert np.array_equal(raw[:, names.index("Jet.n")], n)
    first = ak.to_numpy(ak.fill_none(ak.firsts(jets), np.nan))
    np.testing.assert_array_equal(raw[:, names.index("Jet_pt[0]")], first)
    assert np.array_equal(raw[:, names.index("Jet.mask[1]")], (n > 1).astype(np.float32))
    assert np.isnan(raw[n < 3, names.index("Jet_eta[2]")]).all()

    path = export_onnx(trained("xgboost"), tmp_path / "model.onnx")
    columns = {c["name"]: c for c in json.loads(path.with_suffix(".json").read_text())["columns"]}
    assert columns["mass"] == {"name": "mass", "branch": "mass", "slot": None, "pad": None,
                               "sort_by": None, "descending": None, "kind": "flat",
                               "collection": None}
    assert columns["Jet_pt[1]"] == {"name": "Jet_pt[1]", "branch": "Jet_pt", "slot": 1,
                                    "pad": 3, "sort_by": "Jet_eta", "descending": True,
                                    "kind": "jagged", "collection": "Jet"}
    assert columns["Jet.n"]["kind"] == "count" and columns["Jet.n"]["slot"] is None


def test_predict_and_the_exported_graph_agree(trained, toy_data, tmp_path, client):
    run_dir = trained("xgboost-3")
    bundle = Bundle.load(run_dir)
    predict(bundle, [str(toy_data["dir"] / "sig_1.root")], tmp_path / "scored", client=client)
    with uproot.open(tmp_path / "scored" / "sig_1.root") as f:
        friend = f["toy"].arrays(library="np")
    predicted = np.stack([friend[f"score_{k}"] for k in range(3)], axis=1)
    session = ort.InferenceSession(str(export_onnx(run_dir, tmp_path / "m.onnx")))
    raw, _ = bundle.feature_matrix(events_of(bundle, toy_data, "sig_1"), raw=True)
    np.testing.assert_allclose(session.run(["score"], {"features": raw})[0], predicted,
                               atol=1e-5)


def test_the_export_command(trained, tmp_path):
    run_dir = trained("sklearn")
    result = hepdask(tmp_path, "export", str(run_dir), "--format", "onnx")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Wrote {run_dir / 'model.onnx'}" in result.stdout
    assert "'features' [N, 14]" in result.stdout and "'score' [N]" in result.stdout
    assert json.loads((run_dir / "model.json").read_text())["onnx"] == "model.onnx"
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # written atomically

    (tmp_path / "out").mkdir()
    assert export_onnx(run_dir, tmp_path / "out") == tmp_path / "out" / "model.onnx"
    assert (tmp_path / "out" / "model.json").is_file()
    with pytest.raises(HepdaskError, match=r"model\.bin does not end in \.onnx"):
        export_onnx(run_dir, tmp_path / "model.bin")


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: None, r"is not a directory: bundle\.json is missing"),
    (lambda d: (d.mkdir(), (d / "config.resolved.json").write_text("{}")),
     r"has no model bundle \(a run directory holds one once training finishes"),
])
def test_a_missing_or_unfinished_run_is_refused(tmp_path, make, message):
    run_dir = tmp_path / "toy"
    make(run_dir)
    with pytest.raises(HepdaskError, match=message):
        export_onnx(run_dir)
    assert not (run_dir / "model.onnx").exists()


def test_the_export_command_explains_a_missing_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hepdask.cli._setup_logging", lambda quiet: None)  # the session's logger
    assert main(["export", "runs/toy"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == ("hepdask: error: runs/toy is not a directory: bundle.json is "
                                 "missing. Give the run directory of a finished `hepdask run` "
                                 "(e.g. runs/higgs).\n")


def test_a_missing_converter_names_the_extra(trained, tmp_path, monkeypatch):
    run_dir = trained("xgboost")
    monkeypatch.setitem(sys.modules, "onnxmltools", None)  # import fails
    with pytest.raises(HepdaskError, match=r"needs the Python package 'onnxmltools'.*"
                                           r"pip install 'hepdask\[onnx\]'"):
        export_onnx(run_dir, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_an_unfaithful_conversion_is_not_written(trained, tmp_path, monkeypatch):
    """The export compares onnxruntime with the model before writing anything."""
    from hepdask.train.xgboost import XGBoostModel

    original = XGBoostModel.score_matrix
    monkeypatch.setattr(XGBoostModel, "score_matrix", lambda self, X: original(self, X) + 1e-3)
    with pytest.raises(HepdaskError, match=r"does not reproduce its scores \(largest difference "
                                           r"0\.001.*model\.onnx was not written"):
        export_onnx(trained("xgboost"), tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []
