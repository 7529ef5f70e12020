"""The torch engine: the Keras engine's stream, checkpoints and resume, with a PyTorch network;
its bundle scores as the evaluation did. And train.device on this machine's CPUs."""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
import uproot
from conftest import toy_config
from test_inference import assert_same_scores, higgs_overrides, train
from test_mlaas4hep import workflow
from test_multiclass import THREE_CLASSES
from test_pipeline import HIGGS

from hepdask import HepdaskError, Pipeline, higgsml, load_config
from hepdask.bundle import Bundle
from hepdask.config import from_dict
from hepdask.mlaas4hep import convert
from hepdask.predict import predict
from hepdask.stream import BatchStream

torch = pytest.importorskip("torch")

STREAM = ["train.stream.batch_size=256", "train.stream.prefetch=2", "data.step_size=3000",
          "train.engine='torch'"]


def pipeline(tmp_path, toy_data, *overrides: str) -> Pipeline:
    config = load_config(toy_config(tmp_path, toy_data["dir"]), [*STREAM, *overrides])
    return Pipeline(config, output=tmp_path / "run", progress=False)


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory, client):
    data = tmp_path_factory.mktemp("higgs") / "data"
    higgsml.prepare(data, download=False, synthetic_events=20_000, events_per_file=5000)
    return train(HIGGS.with_name("higgs-torch.toml"),
                 higgs_overrides(data, "train.torch.epochs=4", "train.stream.batch_size=128",
                                 "train.torch.learning_rate=3e-3"),
                 tmp_path_factory.mktemp("torch") / "higgs-torch", client)


def test_higgs_torch_trains_and_its_bundle_scores_as_the_evaluation(torch_run, client, tmp_path):
    pipe, rows, scores = torch_run
    run = pipe.run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["engine"] == "torch" and metrics["device"] == "cpu" and metrics["auc"] > 0.85
    history = json.loads((run / "history.json").read_text())
    assert len(history["train"]["loss"]) == 4 and len(history["validation"]["auc"]) == 4
    for name in ("model.pt", "history.png", "roc.png", "checkpoints/state.json",
                 "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    info = json.loads((run / "bundle.json").read_text())
    assert info["model"]["network"]["kind"] == "builtin" and "torch" in info["versions"]
    # predict, on the workers (the bundle pickled), and Bundle.score as the server calls it
    bundle = Bundle.load(run)
    files = sorted({f for f, _ in rows})
    predict(bundle, files, tmp_path / "scores", client=client)
    assert_same_scores(torch_run, tmp_path / "scores", pipe.config.name, exact=False)
    file = files[0]
    with uproot.open(file) as f:
        events = f[bundle.tree].arrays(bundle.inputs)
    served = bundle.score(events)["score"]
    entries = [entry for f, entry in rows if f == file]
    expected = scores[[i for i, (f, _) in enumerate(rows) if f == file]]
    assert served.shape == (len(events),)
    np.testing.assert_allclose(served[entries], expected, rtol=0, atol=1e-6)


def test_resume_continues_from_the_last_checkpoint(tmp_path, toy_data, client, monkeypatch):
    original = BatchStream.batch
    epochs_seen, interrupt = [], [True]

    def interrupted(self, epoch, index):
        if self.shuffle:
            epochs_seen.append(epoch)
            if interrupt and epoch == 1 and index == 2:
                interrupt.clear()
                raise KeyboardInterrupt
        return original(self, epoch, index)

    monkeypatch.setattr(BatchStream, "batch", interrupted)
    keys = ["train.torch.epochs=3", "train.torch.patience=10"]
    with pytest.raises(KeyboardInterrupt):
        pipeline(tmp_path, toy_data, *keys).run(client=client)
    staging = tmp_path / ".run.staging"
    state = json.loads((staging / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 0 and not (staging / "model.pt").exists()
    assert (staging / "checkpoints" / "epoch-0001.pt").is_file()

    epochs_seen.clear()
    pipe = pipeline(tmp_path, toy_data, *keys)
    metrics = pipe.run(client=client, resume=True)
    assert set(epochs_seen) == {1, 2}  # epoch 0 was not trained again
    assert len(pipe._model.history["train"]["loss"]) == 3 and metrics["auc"] > 0.75
    assert "Resuming after epoch 1" in (tmp_path / "run" / "run.log").read_text()


MODULE = "import torch\ndef build(n):\n    return torch.nn.Sequential(torch.nn.Linear(n, {}))\n"


@pytest.mark.parametrize(("source", "message"), [
    (None, "does not exist"),
    ("def build(n):\n    return 3\n", "returned int, not a torch.nn.Module"),
    (MODULE.format(4), "gives 4 outputs per event but the data have 2 classes"),
    ("import torch\ndef build(n):\n    return torch.nn.Linear(n + 1, 1)\n",
     "fails on a batch of .* features"),
    (MODULE.format(1) + "def loss():\n    return lambda out, y: (out - y).sum()\n",
     "one number per batch; it must return one loss per event"),
])
def test_a_wrong_model_file_gives_a_clear_error(tmp_path, toy_data, client, source, message):
    if source is not None:
        (tmp_path / "model.py").write_text(source)
    with pytest.raises(HepdaskError, match=message) as error:  # a missing file: at load
        pipe = pipeline(tmp_path, toy_data, f"train.torch.model='{tmp_path}/model.py:build'")
        pipe.train(client=client)
    assert "train.torch.model" in str(error.value) and "\n" not in str(error.value)


def test_three_classes_softmax(tmp_path, toy_data, client):
    pipe = pipeline(tmp_path, toy_data, *THREE_CLASSES, "train.torch.epochs=3")
    metrics = pipe.run(client=client)
    assert metrics["n_classes"] == 3 and metrics["auc"] > 0.8
    scores, y, _ = pipe.scores("test")
    assert scores.shape == (len(y), 3) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    bundle = Bundle.load(tmp_path / "run")
    with uproot.open(toy_data["dir"] / "bkg_0.root") as f:
        events = f["events"].arrays(bundle.inputs, entry_stop=50)
    assert bundle.score(events)["score"].shape == (50, 3)
    assert len(pipe._model.history["validation"]["accuracy"]) == 3


def test_mlaas4hep_torch_model_file_with_its_loss_and_optimizer(tmp_path, toy_data, client):
    args = workflow(tmp_path, toy_data["dir"])
    Path(args["model"]).write_text(textwrap.dedent("""
        import torch

        def model(idim):
            "an MLaaS4HEP PyTorch model: one logit"
            return torch.nn.Sequential(torch.nn.Linear(idim, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 1), torch.nn.Sigmoid())

        def loss():
            return torch.nn.BCELoss()

        def optimizer(parameters):
            return torch.optim.Adam(parameters, lr=1e-2)
    """))
    raw, _ = convert(**args)
    assert raw["train"]["engine"] == "torch" and raw["train"]["torch"]["patience"] == 6
    raw["train"]["torch"]["epochs"] = raw["train"]["torch"]["patience"] = 3
    raw["cluster"] = {"dashboard_address": "127.0.0.1:0"}
    pipe = Pipeline(from_dict(raw), output=tmp_path / "run", client=client, progress=False)
    metrics = pipe.run()
    assert metrics["engine"] == "torch" and metrics["auc"] > 0.75
    run = tmp_path / "run"
    assert (run / "torch_model.py").read_text() == Path(args["model"]).read_text()
    network = json.loads((run / "bundle.json").read_text())["model"]["network"]
    assert network == {"kind": "file", "function": "model", "n_inputs": metrics["features"],
                       "n_outputs": 1, "probabilities": True}
    scores, _, _ = pipe.scores("test")
    assert 0 <= scores.min() and scores.max() <= 1
    Path(args["model"]).unlink()  # the bundle has its own copy
    bundle = Bundle.load(run)
    X = np.random.default_rng(0).random((5, metrics["features"]), np.float32)
    on_a_worker = pickle.loads(pickle.dumps(bundle.model))  # as predict sends it
    for model in (bundle.model, on_a_worker):
        np.testing.assert_array_equal(model.predict(X), pipe._model.predict(X))


def test_devices_on_a_machine_without_gpu(tmp_path, toy_data, client):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(HepdaskError, match=r'train.device is "cuda", but .*torch.*'
                                           r'Set train.device = "cpu"') as error:
        load_config(toy_config(tmp_path, toy_data["dir"]),
                    ["train.engine='torch'", "train.device='cuda'"])
    assert "\n" not in str(error.value)
    pipe = Pipeline(load_config(toy_config(tmp_path, toy_data["dir"]),
                                ["train.device='cuda'"]), output=tmp_path / "x", client=client)
    with pytest.raises(HepdaskError, match="0 of the 2 workers see a GPU"):
        pipe.run()  # XGBoost: the workers are asked, before any data are read
    assert not (tmp_path / ".x.staging" / "specs.json").exists()
    with pytest.raises(HepdaskError, match="sklearn engine trains on the CPU only"):
        load_config(toy_config(tmp_path, toy_data["dir"]),
                    ["train.engine='sklearn'", "train.device='cuda'"])
    auto = Pipeline(load_config(toy_config(tmp_path, toy_data["dir"]), ["train.engine='torch'"]),
                    output=tmp_path / "y", client=client)
    assert auto.device() == "cpu"


def test_torch_trains_after_tensorflow_in_one_process():
    """triton (a torch optimizer imports it) segfaults when first imported after TensorFlow:
    hepdask imports it first, whoever imports TensorFlow."""
    import subprocess
    import sys

    code = ("import hepdask, tensorflow, torch\n"
            "net = torch.nn.Linear(3, 1)\n"
            "torch.optim.Adam(net.parameters()).step()\n"
            "print('trained')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-2000:]
