"""PyTorch networks to ONNX with ``torch.onnx.export``.

The network gives logits (or probabilities, when its last layer is a sigmoid or softmax, see
:mod:`hepdask.train.torch`); the exported module adds the sigmoid or softmax as the engine's
``predict`` does. It is traced by the TorchScript-based exporter (``dynamo=False``): the
``torch.export`` one needs the onnxscript package, and a dense network traces the same.
"""

from __future__ import annotations

import io
import warnings

from ..errors import HepdaskError, first_line
from ._require import require

__all__ = ["convert"]


def convert(model, n_inputs: int, *, opset: int):
    """The ONNX graph of a :class:`~hepdask.train.torch.TorchModel`: input [N, n_inputs]
    without NaN, output ``probabilities`` ([N, 1] for two classes, [N, K] for K)."""
    onnx = require("onnx", "a torch model")
    import torch

    definition = model.definition
    several, given = definition["n_outputs"] > 1, definition["probabilities"]

    class Scores(torch.nn.Module):
        def __init__(self, network):
            super().__init__()
            self.network = network

        def forward(self, x):
            out = self.network(x).reshape(x.shape[0], -1)
            if given:
                return out
            return torch.softmax(out, dim=1) if several else torch.sigmoid(out)

    network = Scores(model.network.to("cpu").eval()).eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(network, (torch.zeros(2, n_inputs),), buffer, dynamo=False,
                              input_names=["input"], output_names=["probabilities"],
                              dynamic_axes={"input": {0: "N"}, "probabilities": {0: "N"}},
                              opset_version=opset)
    except Exception as err:  # torch.onnx raises many kinds (UnsupportedOperatorError, ...)
        raise HepdaskError(
            f"torch.onnx could not export the network of this run ({type(model.network).__name__}"
            f"): {first_line(err)}. Every operation of its forward() needs an ONNX equivalent "
            "at operator set "
            f"{opset}, and its output must not depend on Python control flow over tensor "
            "values: rewrite such parts with standard torch.nn layers to export."
        ) from err
    return onnx.load_from_string(buffer.getvalue())
