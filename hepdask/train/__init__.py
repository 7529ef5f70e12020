"""Trainers: each turns the features of the train/validation splits into a fitted model.

``xgboost`` trains on features persisted on the workers; ``keras``, ``torch`` and ``sklearn``
train in this process on batches streamed from them (:mod:`hepdask.stream`). Their models
share one interface: ``scores(client, features, split)``, ``importance()``, ``save(directory)``,
``history``, ``best_iteration`` and ``feature_names``. The keras, torch and sklearn modules
are imported only when used, so TensorFlow and torch are loaded only for their runs.
"""

from __future__ import annotations

from .xgboost import XGBoostModel, train_xgboost

__all__ = ["XGBoostModel", "train_xgboost"]
