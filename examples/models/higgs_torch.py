"""A user-defined network for `[train.torch] model = "examples/models/higgs_torch.py:build_model"`.

hepdask calls ``build_model(n_features)`` and trains the module it returns on batches streamed
from the cluster. The module gives one logit per event (hepdask applies the sigmoid); the
optional ``loss()`` and ``optimizer(parameters)`` below replace the defaults (binary
cross-entropy on the logits, and [train.torch] optimizer and learning_rate). The file is
copied into the run's bundle, so it must import only installed packages.
"""

import torch


def build_model(n_features: int) -> torch.nn.Module:
    layers, width = [], n_features
    for units in (256, 128, 64):
        layers += [torch.nn.Linear(width, units), torch.nn.BatchNorm1d(units), torch.nn.ReLU(),
                   torch.nn.Dropout(0.2)]
        width = units
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))


def loss() -> torch.nn.Module:
    return torch.nn.BCEWithLogitsLoss()  # hepdask sets reduction="none" and weights each event


def optimizer(parameters) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=1e-3, weight_decay=1e-4)
