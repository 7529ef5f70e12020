"""A Keras model trained in this process on mini-batches streamed from the cluster.

The workers read and flatten the partitions; this process only holds the few
blocks the current batches need (see :mod:`hepdask.stream`). Each epoch is a
true pass over the whole training split, reshuffled; validation loss (and AUC
when the model computes it) is measured on the validation split every epoch.
Every epoch also leaves a checkpoint in ``checkpoints/`` of the directory the
run is built in (its staging directory, see :mod:`hepdask.outputs`), so an
interrupted run continues with ``--resume`` where it stopped, on the same
batches it would have seen.

TensorFlow is imported only when this engine runs.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import KerasConfig, StreamConfig
from ..errors import HepdaskError
from ..features import Features
from ..outputs import atomic_path, write_json
from ..specs import Specs
from ..stream import BatchStream, StreamedModel, Transform, make_transform
from ..usercode import call_function, load_function

__all__ = ["KerasModel", "train_keras"]

log = logging.getLogger("hepdask")

CHECKPOINTS = "checkpoints"


def import_keras():
    """Keras 3 (TensorFlow backend), or a clear message on how to install it."""
    try:
        import keras
    except ImportError:
        raise HepdaskError(
            "The keras engine needs TensorFlow and Keras 3, which are not installed. Install "
            "them with: pip install 'hepdask[keras]'   (tensorflow-cpu; use tensorflow on a GPU "
            "machine)."
        ) from None
    return keras


@dataclass
class KerasModel(StreamedModel):
    """A trained Keras model with the transform its inputs need."""

    model: object  # keras.Model
    feature_names: tuple[str, ...]
    transform: Transform
    stream: StreamConfig
    history: dict = field(default_factory=dict)
    best_iteration: int | None = None  # the best epoch (0-based), whose weights the model has

    filename = "model.keras"

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The signal probability for two classes (one or two outputs), else one per class."""
        scores = np.asarray(self.model.predict_on_batch(X)).reshape(len(X), -1)
        return scores[:, -1] if scores.shape[1] <= 2 else scores

    def importance(self) -> dict[str, float]:
        return {}  # no model-agnostic importance is computed for networks

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / self.filename
        with atomic_path(path) as tmp:
            self.model.save(tmp)
        return path

    @classmethod
    def load(cls, directory: str | Path, info: dict, feature_names: tuple[str, ...]
             ) -> KerasModel:
        """The saved network, ready to score (not to train on: the optimizer is not loaded)."""
        model = import_keras().saving.load_model(Path(directory) / cls.filename, compile=False)
        return cls._loaded(model, feature_names, info)


def train_keras(client, features: Features, specs: Specs, config: KerasConfig,
                stream: StreamConfig, run_dir: str | Path, *, resume: bool = False,
                on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
                ) -> KerasModel:
    """Train on ``features.train`` streamed from ``client``'s workers; see the module docstring.

    ``on_epoch(epoch, epochs, logs)`` is called after each epoch (1-based), e.g. to publish
    the curves.
    """
    if client is None:
        raise HepdaskError("The keras engine needs a distributed Client to compute the batches.")
    keras = import_keras()
    transform = make_transform(features.layout, specs, stream)
    names = transform.names(features.layout)
    train = BatchStream(client, features, "train", transform, batch_size=stream.batch_size,
                        prefetch=stream.prefetch, seed=stream.seed, shuffle=stream.shuffle)
    valid = BatchStream(client, features, "validation", transform, batch_size=stream.batch_size,
                        prefetch=stream.prefetch, shuffle=False)
    if not len(train):
        raise HepdaskError("The training split is empty: check split.train and the samples.")

    checkpoints = Path(run_dir) / CHECKPOINTS
    state = _State.load(checkpoints) if resume else None
    if resume and state is None:
        log.info("No checkpoint in %s: starting from the first epoch", checkpoints)
    if state is not None:
        model = keras.saving.load_model(checkpoints / state.last)
        log.info("Resuming after epoch %d of %d from %s", state.epoch + 1, config.epochs,
                 checkpoints)
    else:
        if not resume and (checkpoints / "state.json").exists():
            log.info("Starting from the first epoch: removed the checkpoints in %s (--resume "
                     "continues from them)", checkpoints)
        shutil.rmtree(checkpoints, ignore_errors=True)
        keras.utils.set_random_seed(stream.seed)  # the same initial weights run after run
        model = _build_model(keras, config, len(names), specs.n_classes)
        state = _State()
    if model.inputs and model.inputs[0].shape[-1] != len(names):
        raise HepdaskError(
            f"The Keras model takes {model.inputs[0].shape[-1]} inputs but the features have "
            f"{len(names)} columns; build the input layer from the number passed to the function."
        )
    target = _target_encoding(model, specs.n_classes, config.model)

    batches = _batches(keras, train, state.epoch + 1, target)
    saver = _epoch_callback(keras, checkpoints, state, config.patience, batches,
                            on_epoch, config.epochs)
    if state.stopped:
        log.info("The checkpointed run had already stopped early; not training further")
    elif state.epoch + 1 < config.epochs:
        log.info("Training Keras: %d events in %d batches of about %d, %d features, %d epochs",
                 train.n_events, len(train), stream.batch_size, len(names), config.epochs)
        model.fit(
            batches, validation_data=_batches(keras, valid, 0, target) if len(valid) else None,
            epochs=config.epochs, initial_epoch=state.epoch + 1, callbacks=[saver],
            shuffle=False,  # the stream shuffles, per epoch; Keras would reorder its batches
            verbose=0,
        )
    train.release()
    valid.release()
    if (checkpoints / "best.keras").exists():
        model = keras.saving.load_model(checkpoints / "best.keras")
    return KerasModel(model, names, transform, stream, _history(state.history), state.best_epoch)


def _build_model(keras, config: KerasConfig, n_inputs: int, n_classes: int):
    """The user's model from ``config.model``, or the built-in dense network."""
    if config.model is None:
        model = keras.Sequential([keras.Input((n_inputs,))])
        for units in config.hidden:
            model.add(keras.layers.Dense(units, activation=config.activation))
            if config.dropout:
                model.add(keras.layers.Dropout(config.dropout))
        if n_classes == 2:
            model.add(keras.layers.Dense(1, activation="sigmoid"))
            loss, metric = "binary_crossentropy", keras.metrics.AUC(name="auc")
        else:
            model.add(keras.layers.Dense(n_classes, activation="softmax"))
            loss = "sparse_categorical_crossentropy"
            metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss,
                      weighted_metrics=[metric])
        return model
    build = load_function(config.model, "train.keras.model",
                          arguments=("the number of input features",))
    model = call_function(build, config.model, "train.keras.model", n_inputs,
                          returns="a compiled keras.Model")
    if not isinstance(model, keras.Model):
        raise HepdaskError(
            f"train.keras.model: {config.model} returned {type(model).__name__}, not a "
            "keras.Model. Return the model built from the number of input features."
        )
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise HepdaskError(
            f"train.keras.model: the model from {config.model} is not compiled. Call "
            "model.compile(optimizer=..., loss='binary_crossentropy', "
            "weighted_metrics=[keras.metrics.AUC(name='auc')]) before returning it."
        )
    return model


def _target_encoding(model, n_classes: int, source: str | None):
    """How labels are fed to ``model``: as they are, or one-hot for a categorical loss.

    A sigmoid output takes 0/1; a softmax output of one unit per class takes class numbers
    with a sparse loss and one-hot rows with ``categorical_crossentropy`` (as MLaaS4HEP models
    often use, even for two classes).
    """
    outputs = model.outputs[0].shape[-1] if model.outputs else None
    if outputs not in (1, n_classes) or (outputs == 1 and n_classes > 2):
        raise HepdaskError(
            f"train.keras.model: the model from {source} has {outputs} outputs but the data "
            f"have {n_classes} classes. Give it one sigmoid output for two classes, or "
            f"{n_classes} softmax outputs."
        )
    loss = model.loss if isinstance(model.loss, str) else getattr(model.loss, "name", "")
    if outputs > 1 and loss == "categorical_crossentropy":
        eye = np.eye(n_classes, dtype=np.float32)
        return lambda y: eye[y.astype(np.int64)]
    return None


def _batches(keras, stream: BatchStream, first_epoch: int, target=None):
    """A ``keras.utils.PyDataset`` over ``stream``, serving the batches of epoch ``.epoch``.

    The epoch is set by the training callback at the start of each Keras epoch, so a resumed
    run gets exactly the batches the interrupted one would have had.
    """

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = first_epoch

        def __len__(self):
            return len(stream)

        def __getitem__(self, index):
            X, y, w = stream.batch(self.epoch, index)
            return X, (y if target is None else target(y)), w

    return Batches()


@dataclass
class _State:
    """What a resumed run needs: the last finished epoch, history and early-stopping state."""

    epoch: int = -1
    last: str = ""  # the checkpoint of that epoch
    history: dict = field(default_factory=dict)  # Keras names: loss, val_loss, auc, val_auc
    best: float = math.inf
    best_epoch: int | None = None
    wait: int = 0
    stopped: bool = False

    @classmethod
    def load(cls, directory: Path) -> _State | None:
        path = directory / "state.json"
        if not path.exists():
            return None
        state = cls(**json.loads(path.read_text()))
        return state if (directory / state.last).exists() else None


def _epoch_callback(keras, directory: Path, state: _State, patience: int | None, batches,
                    on_epoch: Callable | None, epochs: int):
    """Checkpoint, history and early stopping after each epoch, restartable from ``state.json``."""

    class EpochCallback(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            batches.epoch = epoch

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            for key, value in logs.items():
                state.history.setdefault(key, []).append(float(value))
            monitored = logs.get("val_loss", logs.get("loss"))
            improved = monitored is not None and monitored < state.best
            if improved:
                state.best, state.best_epoch, state.wait = float(monitored), epoch, 0
            else:
                state.wait += 1
            if patience is not None and state.wait >= patience:
                state.stopped = True
                self.model.stop_training = True
            directory.mkdir(parents=True, exist_ok=True)
            previous, state.epoch, state.last = state.last, epoch, f"epoch-{epoch + 1:04d}.keras"
            with atomic_path(directory / state.last) as tmp:
                self.model.save(tmp)
            if improved:
                with atomic_path(directory / "best.keras") as tmp:
                    self.model.save(tmp)
            write_json(directory / "state.json", state.__dict__)  # the epoch is done once this is
            if previous and previous != state.last:
                (directory / previous).unlink(missing_ok=True)
            if on_epoch is not None:
                on_epoch(epoch + 1, epochs, logs)
            log.info("Epoch %d: %s%s", epoch + 1,
                     ", ".join(f"{k} {v:.4f}" for k, v in logs.items()),
                     " (best)" if improved else "")

    return EpochCallback()


def _history(keras_history: Mapping[str, list]) -> dict:
    """Keras' flat names (loss, val_auc) as {"train": {...}, "validation": {...}}."""
    out: dict[str, dict] = {}
    for key, values in keras_history.items():
        split, metric = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
        out.setdefault(split, {})[metric] = list(values)
    return out
