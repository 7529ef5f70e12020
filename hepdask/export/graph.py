"""The ONNX nodes hepdask adds around a converted model: the feature transformation before it,
the score after it.

Before: the raw padded matrix ``features`` becomes what the model was trained on, exactly as
:func:`hepdask.features.normalize` and :class:`hepdask.stream.Transform` compute it: the
sentinel (in every column but counts and masks) becomes NaN, each column is normalised in
float32 (``(x - shift) * scale``), ±inf becomes NaN; for the streamed engines, the "was
missing" indicator columns are appended and NaN becomes 0. After: the signal's column for two
classes (the last one, as every engine's ``predict`` takes it), all of them otherwise.
"""

from __future__ import annotations

import numpy as np

from ..features import Layout

__all__ = ["INPUT", "OUTPUT", "compose", "probe_matrix", "scores_output"]

INPUT = "features"
OUTPUT = "score"
_PREFIX = "model/"


def _helpers():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    return onnx, TensorProto, helper, numpy_helper


def _per_column(layout: Layout) -> dict[str, np.ndarray]:
    """Per output column: shift and scale (float32) and whether it is normalised at all and
    whether the sentinel applies, as :func:`~hepdask.features.normalize` decides."""
    shift, scale, normalised, sentinel = [], [], [], []
    for column in layout.columns:
        mask = column.kind == "mask"
        shift += [np.float32(0.0 if mask else column.shift)] * column.width
        scale += [np.float32(1.0 if mask else column.scale)] * column.width
        normalised += [not mask] * column.width
        sentinel += [column.kind not in ("mask", "count")] * column.width
    return {"shift": np.array(shift, np.float32)[None], "scale": np.array(scale, np.float32)[None],
            "normalised": np.array(normalised)[None], "sentinel": np.array(sentinel)[None]}


def _prepare(layout: Layout, indicators: tuple[int, ...] | None, model_input: str):
    """Nodes and initializers from ``features`` to ``model_input``; ``indicators`` None: the
    model takes NaN (XGBoost), else the streamed engines' inputs."""
    _, TensorProto, helper, numpy_helper = _helpers()
    columns = _per_column(layout)
    constants = {"shift": columns["shift"], "scale": columns["scale"],
                 "normalised": columns["normalised"], "nan": np.array(np.nan, np.float32)}
    nodes = [helper.make_node("Sub", [INPUT, "shift"], ["shifted"]),
             helper.make_node("Mul", ["shifted", "scale"], ["scaled"])]
    last = "scaled"
    if layout.sentinel is not None:
        constants["sentinel"] = np.array(layout.sentinel, np.float32)
        constants["sentinel_columns"] = columns["sentinel"]
        nodes += [helper.make_node("Equal", [INPUT, "sentinel"], ["is_sentinel_value"]),
                  helper.make_node("And", ["is_sentinel_value", "sentinel_columns"],
                                   ["is_sentinel"]),
                  helper.make_node("Where", ["is_sentinel", "nan", last], ["unsentinelled"])]
        last = "unsentinelled"
    nodes += [helper.make_node("IsInf", [last], ["is_inf_value"]),
              helper.make_node("And", ["is_inf_value", "normalised"], ["is_inf"]),
              helper.make_node("Where", ["is_inf", "nan", last],
                               ["normalized" if indicators is not None else model_input])]
    if indicators is not None:
        last = "normalized"
        if indicators:
            constants["indicator_columns"] = np.array(indicators, np.int64)
            nodes += [helper.make_node("Gather", [last, "indicator_columns"], ["indicated"],
                                       axis=1),
                      helper.make_node("IsNaN", ["indicated"], ["was_missing"]),
                      helper.make_node("Cast", ["was_missing"], ["indicators"],
                                       to=TensorProto.FLOAT),
                      helper.make_node("Concat", [last, "indicators"], ["with_indicators"],
                                       axis=1)]
            last = "with_indicators"
        constants["zero"] = np.array(0.0, np.float32)
        nodes += [helper.make_node("IsNaN", [last], ["is_nan"]),
                  helper.make_node("Where", ["is_nan", "zero", last], [model_input])]
    width = layout.width + len(indicators or ())
    initializers = [numpy_helper.from_array(value, name) for name, value in constants.items()]
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", layout.width])]
    outputs = [helper.make_tensor_value_info(model_input, TensorProto.FLOAT, ["N", width])]
    return helper.make_graph(nodes, "hepdask_features", inputs, outputs, initializers)


def _finish(model_output: str, n_classes: int):
    """Nodes from the model's scores ([N, 1], [N, 2] or [N, K]) to ``score``."""
    _, TensorProto, helper, numpy_helper = _helpers()
    nodes, initializers = [], []
    last = model_output
    if n_classes == 2:
        initializers.append(numpy_helper.from_array(np.array(-1, np.int64), "signal_column"))
        nodes.append(helper.make_node("Gather", [last, "signal_column"], ["signal"], axis=1))
        last = "signal"
    nodes.append(helper.make_node("Cast", [last], [OUTPUT], to=TensorProto.FLOAT))
    shape = ["N"] if n_classes == 2 else ["N", n_classes]
    inputs = [helper.make_tensor_value_info(model_output, TensorProto.FLOAT, None)]
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, shape)]
    return helper.make_graph(nodes, "hepdask_score", inputs, outputs, initializers)


def scores_output(model) -> str:
    """The output of a converted classifier that holds its scores: ``probabilities`` where the
    converter names it so (onnxmltools, skl2onnx; the other output is the label), else the
    first."""
    names = [output.name for output in model.graph.output]
    return "probabilities" if "probabilities" in names else names[0]


def compose(model, layout: Layout, *, indicators: tuple[int, ...] | None, n_classes: int,
            opset: int, doc: str, metadata: dict[str, str]):
    """The whole graph: ``features`` -> transformation -> ``model`` (a converted model with one
    input) -> ``score``, checked by ONNX's checker with shape inference. ``opset``: the standard
    operator set, where ``model`` does not import it."""
    onnx, _, helper, _ = _helpers()
    model_input, model_output = _PREFIX + model.graph.input[0].name, _PREFIX + scores_output(model)
    model = onnx.compose.add_prefix(model, _PREFIX)
    # the standard operator set of the model (a tree ensemble alone imports only ai.onnx.ml)
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    opsets = [helper.make_opsetid("", version)]

    def wrap(graph):
        return helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)

    prepare = wrap(_prepare(layout, indicators, "inputs"))
    combined = onnx.compose.merge_models(prepare, model,
                                         io_map=[("inputs", model_input)],
                                         outputs=[model_output])
    combined = onnx.compose.merge_models(combined, wrap(_finish(model_output, n_classes)),
                                         io_map=[(model_output, model_output)])
    combined.producer_name, combined.doc_string = "hepdask", doc
    helper.set_model_props(combined, metadata)
    onnx.checker.check_model(combined, full_check=True)
    return combined


def probe_matrix(layout: Layout, rows: int = 512, seed: int = 0) -> np.ndarray:
    """A raw feature matrix to compare an exported graph with the model on: values around each
    column's range, counts, 0/1 masks, and some NaN, ±inf and sentinel values."""
    rng = np.random.default_rng(seed)
    out = np.empty((rows, layout.width), np.float32)
    at = 0
    for column in layout.columns:
        block = out[:, at: at + column.width]
        at += column.width
        if column.kind == "mask":
            block[...] = rng.integers(0, 2, block.shape)
            continue
        if column.kind == "count":
            block[...] = rng.integers(0, 6, block.shape)
            continue
        spread = 2.0 / column.scale if column.scale else 2.0
        block[...] = column.shift + spread * rng.standard_normal(block.shape)
        odd = rng.random(block.shape)
        block[odd < 0.1] = np.nan
        block[(odd >= 0.1) & (odd < 0.12)] = np.inf
        if layout.sentinel is not None:
            block[(odd >= 0.12) & (odd < 0.17)] = layout.sentinel
    return out
