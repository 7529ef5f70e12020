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

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import KerasConfig, StreamConfig
from ..errors import HepdaskError
from ..features import Features
from ..outputs import atomic_path
from ..specs import Specs
from ..stream import BatchStream, StreamedModel, Transform
from ..usercode import call_function, load_function
from ._network import EpochState, end_epoch, open_checkpoints, open_streams, split_history

__all__ = ["KerasModel", "train_keras"]

log = logging.getLogger("hepdask")


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
                stream: StreamConfig, run_dir: str | Path, *, device: str = "cpu",
                resume: bool = False,
                on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
                ) -> KerasModel:
    """Train on ``features.train`` streamed from ``client``'s workers, on ``device`` ("cpu" or
    "cuda", see :mod:`hepdask.devices`); see the module docstring.

    ``on_epoch(epoch, epochs, logs)`` is called after each epoch (1-based), e.g. to publish
    the curves.
    """
    keras = import_keras()
    transform, names, train, valid = open_streams(client, features, specs, stream, "keras")

    checkpoints, state = open_checkpoints(run_dir, resume=resume, epochs=config.epochs)
    with _device_scope(keras, device):
        if state is not None:
            model = keras.saving.load_model(checkpoints / state.last)
        else:
            keras.utils.set_random_seed(stream.seed)  # the same initial weights run after run
            model = _build_model(keras, config, len(names), specs.n_classes)
            state = EpochState()
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
        log.info("Training Keras on %s: %d events in %d batches of about %d, %d features, "
                 "%d epochs", device, train.n_events, len(train), stream.batch_size, len(names),
                 config.epochs)
        with _device_scope(keras, device):
            model.fit(
                batches,
                validation_data=_batches(keras, valid, 0, target) if len(valid) else None,
                epochs=config.epochs, initial_epoch=state.epoch + 1, callbacks=[saver],
                shuffle=False,  # the stream shuffles, per epoch; Keras would reorder its batches
                verbose=0,
            )
    train.release()
    valid.release()
    if (checkpoints / "best.keras").exists():
        with _device_scope(keras, device):
            model = keras.saving.load_model(checkpoints / "best.keras")
    return KerasModel(model, names, transform, stream, split_history(state.history),
                      state.best_epoch)


def _device_scope(keras, device: str):
    """Keras on the CPU when told so; TensorFlow takes a visible GPU by itself otherwise."""
    return keras.device("cpu:0") if device == "cpu" else contextlib.nullcontext()


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


def _epoch_callback(keras, directory: Path, state: EpochState, patience: int | None, batches,
                    on_epoch: Callable | None, epochs: int):
    """Checkpoint, history and early stopping after each epoch (see :mod:`._network`)."""

    class EpochCallback(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            batches.epoch = epoch

        def on_epoch_end(self, epoch, logs=None):
            end_epoch(directory, state, epoch, logs or {}, patience=patience, suffix=".keras",
                      save=self.model.save, on_epoch=on_epoch, epochs=epochs)
            if state.stopped:
                self.model.stop_training = True

    return EpochCallback()
