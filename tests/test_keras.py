"""The streaming engines: Keras (central trainer, checkpoints, resume) and scikit-learn."""

from __future__ import annotations

import json
import textwrap

import joblib
import pytest
from conftest import toy_config
from test_pipeline import HIGGS, SMALL, hepdask

from hepdask import HepdaskError, Pipeline, load_config
from hepdask.stream import BatchStream

keras = pytest.importorskip("keras")

STREAM = ["train.stream.batch_size=256", "train.stream.prefetch=2", "data.step_size=1000"]


def pipeline(tmp_path, toy_data, *overrides: str) -> Pipeline:
    config = load_config(toy_config(tmp_path, toy_data["dir"]), [*STREAM, *overrides])
    return Pipeline(config, output=tmp_path / "run")


def test_higgs_keras_config_trains_end_to_end(tmp_path):
    config = HIGGS.with_name("higgs-keras.toml")
    sets = [a for s in [*SMALL, "train.keras.epochs=3", "train.stream.batch_size=500"]
            for a in ("--set", s)]
    result = hepdask(tmp_path, "run", str(config), *sets)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "higgs-keras"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["engine"] == "keras" and metrics["auc"] > 0.75
    history = json.loads((run / "history.json").read_text())
    assert len(history["train"]["loss"]) == 3 and len(history["validation"]["auc"]) == 3
    for name in ("model.keras", "history.png", "roc.png", "checkpoints/state.json"):
        assert (run / name).is_file(), name
    model = keras.saving.load_model(run / "model.keras")
    assert model.inputs[0].shape[-1] == metrics["features"]


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
    earlier = tmp_path / "run"  # an earlier run, which the interrupted one must leave alone
    earlier.mkdir()
    (earlier / "config.resolved.json").write_text("{}")
    with pytest.raises(BaseException) as crash:  # TensorFlow wraps it when raised in its reader

        pipeline(tmp_path, toy_data, "train.engine='keras'", "train.keras.epochs=3",
                 "train.keras.patience=10").run(client=client)
    assert "KeyboardInterrupt" in f"{crash.type.__name__} {crash.value}"
    staging = tmp_path / ".run.staging"
    state = json.loads((staging / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 0 and not (staging / "model.keras").exists()
    assert [p.name for p in earlier.iterdir()] == ["config.resolved.json"]

    epochs_seen.clear()
    pipe = pipeline(tmp_path, toy_data, "train.engine='keras'", "train.keras.epochs=3",
                    "train.keras.patience=10")
    metrics = pipe.run(client=client, resume=True)
    assert set(epochs_seen) == {1, 2}  # epoch 0 was not trained again
    assert len(pipe._model.history["train"]["loss"]) == 3
    assert (tmp_path / "run" / "model.keras").is_file() and metrics["auc"] > 0.75
    assert (tmp_path / "run" / "checkpoints" / "state.json").is_file() and not staging.exists()
    assert "Resuming after epoch 1" in (tmp_path / "run" / "run.log").read_text()


def test_sklearn_engine_trains_and_saves(tmp_path, toy_data, client):
    pipe = pipeline(tmp_path, toy_data, "train.engine='sklearn'", "train.sklearn.epochs=3",
                    "train.stream.missing_indicators=true")
    metrics = pipe.run(client=client)
    assert metrics["engine"] == "sklearn" and metrics["auc"] > 0.75
    estimator = joblib.load(tmp_path / "run" / "model.joblib")
    assert estimator.coef_.shape[1] == metrics["features"]
    assert len(pipe._model.history["validation"]["auc"]) == 3


@pytest.mark.parametrize(("source", "spec", "message"), [
    (None, "missing.py:build", "does not exist"),
    ("def other(n):\n    pass\n", "model.py:build", "no function 'build'; it defines other"),
    ("def build():\n    pass\n", "model.py:build", "exactly one argument"),
    ("def build(n):\n    raise ValueError('boom')\n", "model.py:build", "raised ValueError: boom"),
    ("def build(n):\n    return 3\n", "model.py:build", "returned int, not a keras.Model"),
    ("import keras\ndef build(n):\n    return keras.Sequential([keras.Input((n,)), "
     "keras.layers.Dense(1)])\n", "model.py:build", "is not compiled"),
    ("import nonexistent_module\ndef build(n):\n    pass\n", "model.py:build",
     "importing .* failed"),
])
def test_a_wrong_model_file_gives_a_clear_error(tmp_path, toy_data, client, source, spec, message):
    if source is not None:
        (tmp_path / "model.py").write_text(textwrap.dedent(source))
    with pytest.raises(HepdaskError, match=message):  # a missing file or function: at load
        pipe = pipeline(tmp_path, toy_data, "train.engine='keras'",
                        f"train.keras.model='{tmp_path / spec}'")
        pipe.train(client=client)
