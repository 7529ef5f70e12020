"""Trainers: each turns the features of the train/validation splits into a fitted model."""

from __future__ import annotations

from .xgboost import XGBoostModel, train_xgboost

__all__ = ["XGBoostModel", "train_xgboost"]
