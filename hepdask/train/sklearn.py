"""Any scikit-learn estimator with ``partial_fit``, trained on batches streamed from the cluster.

The same stream as the Keras engine (mixed-class batches, true epochs, a few
partitions in flight); validation log-loss and AUC are recorded after every
epoch. The model is saved with joblib.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from ..config import SklearnConfig, StreamConfig
from ..errors import HepdaskError
from ..features import Features
from ..outputs import atomic_path
from ..specs import Specs
from ..stream import BatchStream, StreamedModel, Transform, make_transform
from ..usercode import call_function, import_class, load_function

__all__ = ["SklearnModel", "train_sklearn"]

log = logging.getLogger("hepdask")


@dataclass
class SklearnModel(StreamedModel):
    """A fitted estimator with the transform its inputs need."""

    estimator: object
    feature_names: tuple[str, ...]
    transform: Transform
    stream: StreamConfig
    history: dict = field(default_factory=dict)
    best_iteration: int | None = None

    filename = "model.joblib"

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities when the estimator gives them, else its decision function;
        for two classes, only the signal's."""
        scores = None
        if hasattr(self.estimator, "predict_proba"):
            try:
                scores = self.estimator.predict_proba(X)
            except AttributeError:  # e.g. SGDClassifier with a loss without probabilities
                pass
        if scores is None:
            scores = self.estimator.decision_function(X)
        scores = np.asarray(scores).reshape(len(X), -1)
        return scores[:, -1] if scores.shape[1] <= 2 else scores

    def importance(self) -> dict[str, float]:
        """|coefficient| per feature for linear models (the inputs are normalised)."""
        coef = getattr(self.estimator, "coef_", None)
        if coef is None:
            return {}
        return dict(zip(self.feature_names, np.abs(np.ravel(coef)).tolist(), strict=False))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / self.filename
        with atomic_path(path) as tmp:
            joblib.dump(self.estimator, tmp)
        return path

    @classmethod
    def load(cls, directory: str | Path, info: dict, feature_names: tuple[str, ...]
             ) -> SklearnModel:
        return cls._loaded(joblib.load(Path(directory) / cls.filename), feature_names, info)


def make_estimator(config: SklearnConfig):
    """Instantiate ``config.estimator``: a class path with ``config.params``, or the estimator
    returned by a ``"file.py:function"`` (as MLaaS4HEP's ``model()``)."""
    if ":" in config.estimator:
        build = load_function(config.estimator, "train.sklearn.estimator")
        estimator = call_function(build, config.estimator, "train.sklearn.estimator",
                                  returns="a scikit-learn estimator")
        _check_partial_fit(type(estimator), config.estimator)
        return estimator
    cls = import_class(config.estimator, "train.sklearn.estimator")
    _check_partial_fit(cls, config.estimator)
    try:
        return cls(**config.params)
    except TypeError as err:
        raise HepdaskError(f"train.sklearn.params: {config.estimator} refused them: {err}.") from None


def _check_partial_fit(cls: type, source: str) -> None:
    if not hasattr(cls, "partial_fit"):
        raise HepdaskError(
            f"train.sklearn.estimator: {cls.__name__} (from {source}) has no partial_fit, so it "
            "cannot learn from streamed batches. Use one that has (SGDClassifier, "
            "MLPClassifier, Perceptron, PassiveAggressiveClassifier, BernoulliNB, ...), or the "
            "xgboost engine."
        )


def train_sklearn(client, features: Features, specs: Specs, config: SklearnConfig,
                  stream: StreamConfig, *,
                  on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
                  ) -> SklearnModel:
    """Train ``config.estimator`` for ``config.epochs`` passes over the streamed training split;
    ``on_epoch(epoch, epochs, metrics)`` is called after each (1-based)."""
    if client is None:
        raise HepdaskError("The sklearn engine needs a distributed Client to compute the batches.")
    estimator = make_estimator(config)
    if estimator.get_params().get("random_state", 0) is None:
        estimator.set_params(random_state=stream.seed)  # the same model run after run
    transform = make_transform(features.layout, specs, stream)
    names = transform.names(features.layout)
    train = BatchStream(client, features, "train", transform, batch_size=stream.batch_size,
                        prefetch=stream.prefetch, seed=stream.seed, shuffle=stream.shuffle)
    if not len(train):
        raise HepdaskError("The training split is empty: check split.train and the samples.")
    weighted = "sample_weight" in inspect.signature(estimator.partial_fit).parameters
    if not weighted:
        log.info("%s.partial_fit takes no sample weights: training unweighted",
                 type(estimator).__name__)
    classes = np.arange(specs.n_classes, dtype=np.float32)
    model = SklearnModel(estimator, names, transform, stream)
    history: dict[str, dict[str, list[float]]] = {"validation": {"logloss": [], "auc": []}}
    log.info("Training %s: %d events in %d batches, %d features, %d epochs",
             type(estimator).__name__, train.n_events, len(train), len(names), config.epochs)
    for epoch in range(config.epochs):
        for X, y, w in train.epoch(epoch):
            kwargs = {"sample_weight": w} if weighted else {}
            estimator.partial_fit(X, y, classes=classes, **kwargs)
        scores, y, w = model.scores(client, features, "validation")
        if len(y) and len(np.unique(y)) == len(classes):
            auc = float(roc_auc_score(y, scores, multi_class="ovr") if scores.ndim > 1
                        else roc_auc_score(y, scores))
            history["validation"]["auc"].append(auc)
            if hasattr(estimator, "predict_proba") and scores.min() >= 0 and scores.max() <= 1:
                history["validation"]["logloss"].append(float(log_loss(y, scores, labels=classes)))
            log.info("Epoch %d: validation AUC %.4f", epoch + 1, auc)
        if on_epoch is not None:
            on_epoch(epoch + 1, config.epochs,
                     {f"val_{k}": v[-1] for k, v in history["validation"].items() if v})
    train.release()
    model.history = {k: {m: v for m, v in h.items() if v} for k, h in history.items()}
    return model
