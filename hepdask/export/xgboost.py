"""XGBoost boosters to ONNX with onnxmltools (a ``TreeEnsembleClassifier`` node).

The booster is cut to the rounds hepdask scores with (up to the best iteration when training
stopped early) and loses its feature names: onnxmltools reads each split's feature index from
XGBoost's default names ``f0 .. fn``. The intercept (``base_score``, one per class in XGBoost
3) and the objective are read by onnxmltools from the booster's own configuration.
"""

from __future__ import annotations

from ..errors import HepdaskError, first_line
from ._require import require

__all__ = ["convert"]


def convert(model, n_inputs: int, *, opset: int):
    """The ONNX classifier of an :class:`~hepdask.train.xgboost.XGBoostModel`: input
    [N, n_inputs] with NaN as missing, output ``probabilities``."""
    onnxmltools = require("onnxmltools", "an XGBoost model")
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = model.booster
    rounds = (model.best_iteration + 1 if model.best_iteration is not None
              else booster.num_boosted_rounds())
    trees = booster[:rounds]
    trees.feature_names = None
    trees.feature_types = None
    try:
        return onnxmltools.convert_xgboost(
            trees, initial_types=[("input", FloatTensorType([None, n_inputs]))],
            target_opset=opset)
    except Exception as err:  # the converter's own errors are RuntimeError, KeyError, ...
        objective = model.params.get("objective", "binary:logistic")
        raise HepdaskError(
            f"onnxmltools cannot convert this XGBoost model (objective {objective!r}): "
            f"{first_line(err)}. Classifiers trained with binary:logistic or multi:softprob "
            "(hepdask's defaults) convert; train with one of them to export to ONNX."
        ) from err
