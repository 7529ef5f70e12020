"""A trained run as one ONNX file, for C++ frameworks (CMSSW, Athena) and inference servers.

``model.onnx`` takes the padded feature matrix before normalisation: input ``features``,
float32 [N, n_columns], one row per event, missing values (empty slots of a collection, absent
values) as NaN. The graph normalises it and handles missing values exactly as hepdask does
(see :mod:`hepdask.export.graph`), runs the converted model (one module per engine) and gives
``score``: float32 [N], the signal probability, for two classes; [N, K], one probability per
class, for K classes. ``model.json`` beside it describes each input column (its branch, slot,
pad and the ordering of its collection) and the rest of the recipe that fills the matrix.

Every export is checked before it is written: onnxruntime's scores of a probe matrix must
equal the model's own (:meth:`~hepdask.bundle.Bundle.feature_matrix` with ``raw=True`` gives
the matrix of real events).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from pathlib import Path

import numpy as np

from ..bundle import Bundle
from ..config import EXPORT_FORMATS
from ..errors import HepdaskError
from ..features import normalize
from ..outputs import atomic_path, write_json
from ._require import require
from .graph import INPUT, OUTPUT, compose, probe_matrix

__all__ = ["FORMATS", "OPSET", "export_onnx", "sidecar"]

FORMATS = EXPORT_FORMATS
#: The ONNX operator set of the exported graphs: the newest that every converter writes
#: (onnxmltools' limit), read by ONNX Runtime 1.10 and later.
OPSET = 15
#: The largest difference allowed between onnxruntime's scores and the model's.
TOLERANCE = 1e-5
SIDECAR_FORMAT = 1


def export_onnx(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the model of ``run_dir`` (a finished run) as ONNX, and ``model.json`` beside it.

    Parameters
    ----------
    run_dir
        The run directory.
    output
        The ``.onnx`` file to write (a directory: ``model.onnx`` in it); by default
        ``<run_dir>/model.onnx``. The sidecar gets the same name with ``.json``.

    Returns
    -------
    The path of the ONNX file. Both files appear whole or not at all.
    """
    run_dir = Path(run_dir)
    path = _output_path(run_dir, output)
    onnx = require("onnx", "a model")
    require("onnxruntime", "a model")
    bundle = Bundle.load(run_dir)
    model = bundle.model
    streamed = hasattr(model, "transform")  # the central trainers' inputs: no NaN, indicators
    indicators = tuple(model.transform.indicators) if streamed else None
    n_inputs = bundle.layout.width + len(indicators or ())
    converter = importlib.import_module(f".{bundle.engine}", __package__)
    with warnings.catch_warnings():  # converters warn about their own dependencies' changes
        warnings.simplefilter("ignore")
        converted = converter.convert(model, n_inputs, opset=OPSET)
    graph = compose(converted, bundle.layout, indicators=indicators, n_classes=bundle.n_classes,
                    opset=OPSET, doc=_doc(bundle), metadata=_metadata(bundle))
    _verify(graph, bundle, path)
    with atomic_path(path) as tmp:
        onnx.save(graph, tmp)
    write_json(path.with_suffix(".json"), sidecar(bundle, path.name))
    return path


def _output_path(run_dir: Path, output: str | Path | None) -> Path:
    if output is None:
        return run_dir / "model.onnx"
    path = Path(output)
    if path.is_dir():
        return path / "model.onnx"
    if path.suffix != ".onnx":
        raise HepdaskError(
            f"The ONNX output {path} does not end in .onnx: give a file name such as "
            f"{path.with_suffix('.onnx')} (its model.json-like sidecar gets the same name with "
            ".json) or an existing directory."
        )
    return path


def _verify(graph, bundle: Bundle, path: Path) -> None:
    """onnxruntime's scores of a probe matrix against the model's own, before writing."""
    ort = require("onnxruntime", "a model")
    raw = probe_matrix(bundle.layout)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT], {INPUT: raw})[0]
    want = np.asarray(bundle.model.score_matrix(normalize(raw.copy(), bundle.layout)))
    if got.shape != want.shape or not np.allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE):
        difference = (np.abs(got - want).max() if got.shape == want.shape
                      else f"shape {got.shape} instead of {want.shape}")
        raise HepdaskError(
            f"The ONNX graph converted from the {bundle.engine} model of {bundle.path} does not "
            f"reproduce its scores (largest difference {difference} on a probe matrix, "
            f"allowed {TOLERANCE}), so {path} was not written. The converter does not handle "
            "this model faithfully; please report it with the run's bundle.json."
        )


def sidecar(bundle: Bundle, onnx_name: str) -> dict:
    """``model.json``: what fills the ``features`` matrix, column by column, and what
    ``score`` means."""
    recipe = bundle.preprocess.describe()
    return {
        "format": SIDECAR_FORMAT,
        "name": bundle.name,
        "engine": bundle.engine,
        "onnx": onnx_name,
        "input": {"name": INPUT, "dtype": "float32", "shape": ["N", bundle.layout.width],
                  "missing": "NaN"},
        "output": {"name": OUTPUT, "dtype": "float32",
                   "shape": ["N"] if bundle.n_classes == 2 else ["N", bundle.n_classes]},
        "columns": _columns(bundle),
        "tree": bundle.tree,
        "sentinel": bundle.layout.sentinel,
        "classes": {str(k): v for k, v in bundle.classes.items()},
        "label_expressions": bundle.info.get("label_expressions", {}),
        "derived": {name: recipe["derived"][name] for name in bundle.preprocess.derived},
        "selection": {"objects": recipe["objects"], "events": recipe["cut"]},
    }


def _columns(bundle: Bundle) -> list[dict]:
    """One entry per input column, in order: ``branch`` (for a collection's count and mask
    columns, its first feature branch), ``slot`` (the object's index after the selection and
    ordering; null for one value per event), ``pad`` (the collection's slots) and ``sort_by``
    (the collection's ordering), with the column's ``kind`` and ``collection``."""
    order = bundle.preprocess.order
    out = []
    for column in bundle.layout.columns:
        slotted = column.kind in ("jagged", "mask")
        key, descending = order.get(column.collection, (None, True)) if slotted else (None, True)
        for slot, name in enumerate(column.names()):
            out.append({
                "name": name, "branch": column.branch, "slot": slot if slotted else None,
                "pad": column.width if slotted else None,
                "sort_by": key.text if key is not None else None,
                "descending": descending if key is not None else None,
                "kind": column.kind, "collection": column.collection or None,
            })
    return out


def _doc(bundle: Bundle) -> str:
    kinds = ("the signal probability, [N]" if bundle.n_classes == 2
             else f"one probability per class, [N, {bundle.n_classes}]")
    return (f"hepdask model {bundle.name!r} ({bundle.engine}). Input {INPUT!r}: float32 "
            f"[N, {bundle.layout.width}], the padded features before normalisation, missing "
            f"values as NaN, columns as in the sidecar .json. Output {OUTPUT!r}: {kinds}.")


def _metadata(bundle: Bundle) -> dict[str, str]:
    return {"hepdask.name": bundle.name, "hepdask.engine": bundle.engine,
            "hepdask.version": importlib.metadata.version("hepdask"),
            "hepdask.columns": ",".join(bundle.layout.names),
            "hepdask.classes": ",".join(str(k) for k in sorted(bundle.classes))}

