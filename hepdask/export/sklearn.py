"""scikit-learn estimators to ONNX with skl2onnx.

The sklearn engine scores with ``predict_proba`` where the estimator has it and with
``decision_function`` otherwise (``SGDClassifier(loss="hinge")``, ``Perceptron``): the graph
gives the same, class probabilities or (``raw_scores``) the decision function, as a plain
[N, classes] tensor (no ZipMap of labels to probabilities).
"""

from __future__ import annotations

from ..errors import HepdaskError, first_line
from ._require import require

__all__ = ["convert"]


def convert(model, n_inputs: int, *, opset: int):
    """The ONNX classifier of a :class:`~hepdask.train.sklearn.SklearnModel`: input
    [N, n_inputs] without NaN, output ``probabilities``."""
    skl2onnx = require("skl2onnx", "a scikit-learn model")
    from skl2onnx.common.data_types import FloatTensorType

    estimator = model.estimator
    options = {"zipmap": False}
    if not hasattr(estimator, "predict_proba"):
        options["raw_scores"] = True
    try:
        return skl2onnx.convert_sklearn(
            estimator, initial_types=[("input", FloatTensorType([None, n_inputs]))],
            target_opset=opset, options={id(estimator): options})
    except Exception as err:  # MissingShapeCalculator, RuntimeError, NotImplementedError, ...
        raise HepdaskError(
            f"skl2onnx cannot convert the {type(estimator).__name__} of this run: "
            f"{first_line(err)}. The estimators skl2onnx supports are listed at "
            "https://onnx.ai/sklearn-onnx/supported.html (SGDClassifier, MLPClassifier, "
            "Perceptron, the naive Bayes classifiers, ...)."
        ) from err
