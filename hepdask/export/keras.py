"""Keras 3 models to ONNX with Keras' own exporter (``model.export(format="onnx")``, which
runs tf2onnx on the model's traced TensorFlow function).

tf2onnx's ``from_keras`` does not read Keras 3 models (it looks for Keras 2's tensor
names); the exporter of Keras 3 traces the model's ``call`` instead, so the built-in dense
network and user models alike convert when every layer has an ONNX equivalent.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

from ..errors import HepdaskError, first_line
from ._require import require

__all__ = ["convert"]


def convert(model, n_inputs: int, *, opset: int):
    """The ONNX graph of a :class:`~hepdask.train.keras.KerasModel`: input [N, n_inputs]
    without NaN, one output ([N, 1] sigmoid or [N, K] softmax)."""
    onnx = require("onnx", "a Keras model")
    require("tf2onnx", "a Keras model")
    import keras

    network = model.model
    signature = [keras.InputSpec(shape=(None, n_inputs), dtype="float32")]
    quiet = logging.getLogger("tf2onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            path = Path(tmp) / "keras.onnx"
            network.export(path, format="onnx", verbose=False, input_signature=signature,
                           opset_version=opset)
            return onnx.load(path)
    except Exception as err:  # tf2onnx raises whatever its op handlers raise
        raise HepdaskError(
            f"Keras could not export the model {network.name!r} to ONNX: {first_line(err)}. "
            "Every layer needs an ONNX equivalent (the built-in network's Dense and Dropout "
            "have; custom layers and Lambda layers may not): rewrite such layers with standard "
            "Keras layers, or train with the xgboost or torch engine to export."
        ) from err
    finally:
        quiet.setLevel(level)
