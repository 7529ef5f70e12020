"""A run directory as a model bundle: everything needed to score new events the way the
model was trained and evaluated.

Training writes, besides the model file, ``features.json`` (the feature layout with its
normalisation constants, and the per-event recipe: feature branches, derived branches,
object selections and orderings, event selection, the types of the input branches) and
``bundle.json`` (engine, model file, classes, what the model needs to load, versions).
:meth:`Bundle.load` reads them back; :meth:`Bundle.score` runs the same functions as the
training run on new events (:meth:`~hepdask.preprocess.Preprocess.feature_values`,
:func:`~hepdask.features.partition_matrix`, the model's ``score_matrix``), so a score does
not depend on where it is computed: evaluation, ``hepdask predict`` or ``hepdask serve``.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import json
import logging
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from .errors import HepdaskError
from .features import Layout, partition_matrix
from .outputs import recover, write_json
from .preprocess import Preprocess, describe_tree, field, missing_branch

__all__ = ["BUNDLE_FORMAT", "Bundle", "records", "write_bundle"]

log = logging.getLogger("hepdask")

BUNDLE_FORMAT = 1
BUNDLE = "bundle.json"
FEATURES = "features.json"

#: The packages whose versions a bundle records, per engine (besides the common ones).
_PACKAGES = {"xgboost": ["xgboost"], "keras": ["keras", "tensorflow-cpu", "tensorflow"],
             "torch": ["torch"], "sklearn": ["scikit-learn"]}
_COMMON = ["hepdask", "numpy", "awkward", "uproot"]


def write_bundle(run_dir: str | Path, *, name: str, engine: str, model, layout: Layout,
                 preprocess: Preprocess, classes: Mapping[int, Sequence[str]], tree: str,
                 step_size: int) -> None:
    """Write ``features.json`` and ``bundle.json`` for ``model`` (already saved) in ``run_dir``.

    ``classes`` maps each class number to the samples labelled with it (samples whose label is
    an expression are under ``label_expressions``, from the recipe).
    """
    run_dir = Path(run_dir)
    recipe = preprocess.describe()
    write_json(run_dir / FEATURES, {**layout.to_dict(), "preprocess": recipe,
                                    "inputs": preprocess.schema()})
    write_json(run_dir / BUNDLE, {
        "format": BUNDLE_FORMAT,
        "name": name,
        "engine": engine,
        "model": {"file": model.filename, "feature_names": list(model.feature_names),
                  **model.bundle_info()},
        "classes": {str(k): list(v) for k, v in sorted(classes.items())},
        "label_expressions": {k: v for k, v in recipe["labels"].items() if isinstance(v, str)},
        "tree": tree,
        "step_size": step_size,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(),
                     **_versions([*_COMMON, *_PACKAGES[engine]])},
    })


@dataclass
class Bundle:
    """A trained model with its feature transformation, loaded from a run directory.

    Picklable: ``hepdask predict`` sends it to the workers, which score their partitions.
    """

    name: str
    path: Path
    model: Any  # XGBoostModel, KerasModel, TorchModel or SklearnModel
    layout: Layout
    preprocess: Preprocess
    info: dict  # bundle.json as written

    @classmethod
    def load(cls, run_dir: str | Path, *, name: str | None = None) -> Bundle:
        """The bundle in ``run_dir`` (a finished training run); ``name`` replaces the run's."""
        run_dir = Path(run_dir)
        recover(run_dir)  # a run that died while replacing this directory
        info = _read_json(run_dir, BUNDLE)
        if info.get("format") != BUNDLE_FORMAT:
            raise HepdaskError(
                f"{run_dir / BUNDLE} has bundle format {info.get('format')!r}; this hepdask "
                f"reads format {BUNDLE_FORMAT}. Train the model again with this version."
            )
        features = _read_json(run_dir, FEATURES)
        layout = Layout.from_dict(features)
        preprocess = Preprocess.from_description(features["preprocess"], features["inputs"])
        engine, model_info = info["engine"], info["model"]
        _check_versions(run_dir, info["versions"], [*_COMMON[1:], *_PACKAGES[engine]])
        names = tuple(model_info["feature_names"])
        if not (run_dir / model_info["file"]).is_file():
            raise HepdaskError(
                f"The model file {run_dir / model_info['file']} is missing: {run_dir} is not a "
                "complete run directory. Point to the directory of a finished run."
            )
        if engine == "xgboost":
            from .train.xgboost import XGBoostModel as Model
        elif engine == "keras":
            from .train.keras import KerasModel as Model
        elif engine == "torch":
            from .train.torch import TorchModel as Model
        else:
            from .train.sklearn import SklearnModel as Model
        model = Model.load(run_dir, model_info, names)
        return cls(name or info["name"], run_dir.resolve(), model, layout, preprocess, info)

    @property
    def engine(self) -> str:
        return self.info["engine"]

    @property
    def tree(self) -> str:
        """The tree the model was trained on (the default input tree)."""
        return self.info["tree"]

    @property
    def step_size(self) -> int:
        return self.info["step_size"]

    @property
    def classes(self) -> dict[int, list[str]]:
        """Class number -> the samples labelled with it in training."""
        return {int(k): v for k, v in self.info["classes"].items()}

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @functools.cached_property
    def inputs(self) -> list[str]:
        """The branches an event must have to be scored (features, selections and their inputs)."""
        return self.preprocess.inputs()

    def input_types(self) -> dict[str, str]:
        """Each input branch's type as a request gives it: ``float32`` or ``var * float32``."""
        return {n: ("var * " if b.jagged else "") + b.dtype
                for n, b in self.preprocess.branches.items() if n in self.inputs}

    @property
    def outputs(self) -> list[str]:
        """What :meth:`score` returns, besides ``score``: ``selected`` when there is an event
        selection."""
        return ["selected"] if self.preprocess.cut is not None else []

    def score(self, events: ak.Array) -> dict[str, np.ndarray]:
        """Scores of ``events`` (a record array with the :attr:`inputs`): ``score`` (the signal
        probability for two classes, one column per class otherwise) and, when the model was
        trained on an event selection, ``selected`` (whether each event passes it)."""
        matrix, selected = self.feature_matrix(events)
        if len(events):
            scores = np.asarray(self.model.score_matrix(matrix))
        else:  # XGBoost warns about an empty DMatrix; the shape is known
            scores = np.empty((0,) if self.n_classes == 2 else (0, self.n_classes), np.float32)
        out = {"score": scores}
        if self.preprocess.cut is not None:
            out["selected"] = selected
        return out

    def feature_matrix(self, events: ak.Array, *, raw: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
        """The feature matrix of ``events`` (as :meth:`score` takes them) and whether each event
        passes the event selection. ``raw``: before normalisation, missing values as NaN, the
        matrix an exported ONNX model takes (see :mod:`hepdask.export`)."""
        values, selected = self.preprocess.feature_values(self._conform(events))
        if not len(events):
            return np.empty((0, self.layout.width), np.float32), selected
        return partition_matrix(values, self.layout, raw=raw), selected

    def _conform(self, events: ak.Array) -> ak.Array:
        """The input branches as the model saw them in training (same numeric types)."""
        branches = self.preprocess.branches
        wanted = {field(name): np.dtype(branches[name].dtype) for name in self.inputs}
        if all(_dtype(events.layout.content(n)) == dtype for n, dtype in wanted.items()):
            return events
        return records({n: ak.values_astype(events[n], dtype) for n, dtype in wanted.items()},
                       len(events))

    def check_tree(self, ttree, path: str) -> None:
        """A clear error when the tree lacks an input branch or holds it with another shape."""
        branches, other, _ = describe_tree(ttree)
        available = sorted([*branches, *other])
        for name in self.inputs:
            if name not in branches:
                message = missing_branch(name, available, path, f"the model {self.name!r}")
                raise HepdaskError(
                    f"{message} The model {self.name!r} ({self.path}) computes its features "
                    f"from the branches {', '.join(self.inputs)}: every input file needs them."
                )
            trained = self.preprocess.branches[name].jagged
            if branches[name].jagged != trained:
                shape = ("one value per object" if trained else "one value per event",
                         "one value per object" if branches[name].jagged else "one value per event")
                raise HepdaskError(
                    f"The branch {name!r} in {path} holds {shape[1]}, but the model "
                    f"{self.name!r} was trained on {shape[0]}: it is not the same quantity. "
                    "Check that these files have the layout of the training files."
                )


def records(columns: Mapping[str, Any], length: int) -> ak.Array:
    """Branches (NumPy or awkward arrays of ``length`` events) as one record array, the shape
    uproot gives; cheaper than ``ak.zip`` for the small batches of a server."""
    contents = [ak.to_layout(value) for value in columns.values()]
    return ak.Array(ak.contents.RecordArray(contents, list(columns), length=length))


def _dtype(layout) -> np.dtype | None:
    """The numeric type of a flat or jagged layout's values."""
    while hasattr(layout, "content"):
        layout = layout.content
    return getattr(layout, "dtype", None)


def _read_json(run_dir: Path, name: str) -> dict:
    path = run_dir / name
    if not path.is_file():
        what = ("is not a directory" if not run_dir.is_dir() else
                "has no model bundle (a run directory holds one once training finishes; runs "
                "made by an earlier hepdask must be trained again)")
        raise HepdaskError(f"{run_dir} {what}: {name} is missing. Give the run directory of "
                           "a finished `hepdask run` (e.g. runs/higgs).")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HepdaskError(f"{path} is not valid JSON ({err}): the run directory is damaged; "
                           "train the model again.") from None


def _versions(packages: Sequence[str]) -> dict[str, str]:
    found = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _check_versions(run_dir: Path, recorded: Mapping[str, str], packages: Sequence[str]) -> None:
    """Warn when the model is used with other versions than it was trained with."""
    now = _versions(packages)
    for package, version in recorded.items():
        if package in now and now[package] != version:
            log.warning("The model in %s was trained with %s %s; this is %s %s. Scores may "
                        "differ slightly.", run_dir, package, version, package, now[package])
