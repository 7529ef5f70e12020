"""Distributed gradient-boosted trees with :mod:`xgboost.dask`.

The train and validation matrices stay on the workers: each worker builds its
share of a ``DaskQuantileDMatrix`` from the partitions it holds, and the trees
are grown collectively (Rabit/collective allreduce), so no process ever holds
the whole training set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xgboost
import xgboost.dask as dxgb

from ..config import XGBoostConfig
from ..errors import HepdaskError
from ..features import Features
from ..outputs import atomic_path

__all__ = ["XGBoostModel", "train_xgboost"]

log = logging.getLogger("hepdask")


@dataclass
class XGBoostModel:
    """A trained booster with what is needed to use and describe it."""

    booster: xgboost.Booster
    feature_names: tuple[str, ...]
    params: dict
    history: dict = field(default_factory=dict)  # {"train": {"auc": [...]}, "validation": ...}
    best_iteration: int | None = None

    filename = "model.ubj"

    def predict(self, client, X: da.Array) -> da.Array:
        """Scores for the rows of ``X``, computed on the workers, lazily."""
        return dxgb.predict(client, self.booster, X, iteration_range=self._iteration_range(),
                            validate_features=False)

    def scores(self, client, features: Features, split: str = "test"):
        """(scores, labels, weights) of ``split`` as NumPy arrays, in the split's row order."""
        arrays = features[split]
        scores, y, w = client.compute([self.predict(client, arrays.X), arrays.y, arrays.w],
                                      sync=True)
        return np.asarray(scores), np.asarray(y), np.asarray(w)

    def _iteration_range(self) -> tuple[int, int]:
        return (0, self.best_iteration + 1) if self.best_iteration is not None else (0, 0)

    def importance(self) -> dict[str, float]:
        """Total gain per feature (features never used in a split are absent)."""
        gain = self.booster.get_score(importance_type="total_gain")
        return {name: gain[_xgb_name(name)] for name in self.feature_names if _xgb_name(name) in gain}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / self.filename
        with atomic_path(path) as tmp:
            self.booster.save_model(tmp)
        return path


def train_xgboost(client, features: Features, config: XGBoostConfig) -> XGBoostModel:
    """Train on ``features.train``, early-stopping on ``features.validation`` when it has events."""
    if client is None:
        raise HepdaskError(
            "The xgboost engine needs a distributed Client: pass client=... or create one "
            "(e.g. with hepdask.cluster.connect) before training."
        )
    params = dict(config.params)
    params.setdefault("tree_method", "hist")
    train, valid = features.train, features.validation
    if config.scale_pos_weight == "auto":
        params["scale_pos_weight"] = _auto_scale_pos_weight(client, train, config.use_weights)
    elif config.scale_pos_weight is not None:
        params["scale_pos_weight"] = float(config.scale_pos_weight)
    names = [_xgb_name(n) for n in features.names]
    dtrain = dxgb.DaskQuantileDMatrix(
        client, train.X, train.y, weight=train.w if config.use_weights else None,
        feature_names=names,
    )
    evals = [(dtrain, "train")]
    early = None
    if len(valid):
        dvalid = dxgb.DaskQuantileDMatrix(
            client, valid.X, valid.y, weight=valid.w if config.use_weights else None,
            feature_names=names, ref=dtrain,
        )
        evals.append((dvalid, "validation"))
        early = config.early_stopping_rounds
    log.info("Training XGBoost: %d events, %d features, up to %d rounds",
             len(train), len(names), config.num_boost_round)
    try:
        output = dxgb.train(
            client, params, dtrain, num_boost_round=config.num_boost_round, evals=evals,
            early_stopping_rounds=early, verbose_eval=False,
        )
    except xgboost.core.XGBoostError as err:
        raise HepdaskError(
            f"XGBoost refused the training parameters in train.xgboost.params: "
            f"{str(err).splitlines()[0]}. Check the names and values against the XGBoost "
            "parameter documentation."
        ) from None
    booster = output["booster"]
    best = booster.best_iteration if early else None
    history = {name: {m: [float(v) for v in vals] for m, vals in metrics.items()}
               for name, metrics in output["history"].items()}
    return XGBoostModel(booster, features.names, params, history, best)


def _auto_scale_pos_weight(client, train, use_weights: bool) -> float:
    """Sum of background weights over sum of signal weights in the training split."""
    w = train.w if use_weights else da.ones_like(train.y)
    signal, background = dask.compute(
        (w * (train.y == 1)).sum(dtype="f8"), (w * (train.y == 0)).sum(dtype="f8"),
        scheduler=client,
    )
    if signal <= 0 or background <= 0:
        raise HepdaskError(
            "train.xgboost.scale_pos_weight = \"auto\" needs signal (label 1) and background "
            "(label 0) events with positive weights in the training split; set it to a number."
        )
    return float(background / signal)


def _xgb_name(name: str) -> str:
    """XGBoost forbids '[', ']' and '<' in feature names; keep them readable."""
    return name.replace("[", "(").replace("]", ")").replace("<", "lt")
