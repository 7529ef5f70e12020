"""MLaaS4HEP workflows as they are: ``files.txt``, ``labels.txt``, ``params.json``,
``preproc.json`` and a model file, turned into a hepdask configuration.

``python -m hepdask run --mlaas4hep ...`` runs them; ``python -m hepdask
convert-mlaas4hep ...`` writes the equivalent TOML to keep and edit. Every key
is either translated or reported in the notes: nothing is silently dropped.

The translation keeps MLaaS4HEP's choices where they matter for the result:
min-max normalisation from the specs, jagged branches padded to their largest
multiplicity, missing values set to 0 for networks, and a Keras or PyTorch model built by
``model(idim)``. Two things differ by design and are noted: ``epochs`` are passes
over all training events (MLaaS4HEP trained every chunk for ``epochs``), and the
train/validation/test split is one split of all events, not one per chunk.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import DataConfig
from .errors import HepdaskError
from .usercode import call_function, load_function

__all__ = ["convert", "to_toml"]

PARAMS = ("nevts", "chunk_size", "epochs", "batch_size", "shuffle", "branch", "identifier",
          "selected_branches", "exclude_branches", "redirector", "verbose", "metrics")
_METRICS = {"accuracy": "accuracy", "acc": "accuracy", "auc": "auc", "precision": "precision",
            "recall": "recall", "f1": "f1", "loss": "logloss", "logloss": "logloss",
            "binary_crossentropy": "logloss", "categorical_crossentropy": "logloss"}
_SWITCHED_METRICS = ("accuracy", "precision", "recall", "f1")  # "metrics": true


def convert(*, files: str, labels: str, model: str, params: str | None = None,
            preproc: str | None = None, name: str | None = None) -> tuple[dict, list[str]]:
    """The hepdask config (as a plain mapping) of an MLaaS4HEP workflow, and notes on it.

    Parameters
    ----------
    files
        A text file of ROOT file paths (``#`` comment lines allowed) or a comma-separated list.
    labels
        A text file with one class label per file, a comma-separated list of them, or the
        name of the branch (or an expression) holding each event's label.
    model
        A Python file defining ``model(idim)`` (a compiled Keras model, or a
        ``torch.nn.Module`` when the file imports torch) or ``model()`` (an XGBoost or
        scikit-learn estimator).
    params, preproc
        MLaaS4HEP's ``params.json`` and ``preproc.json``.
    """
    notes: list[str] = []
    paths = _list(files, "--files")
    raw: dict[str, Any] = {"name": name or Path(model).stem, "samples": _samples(paths, labels)}
    data: dict[str, Any] = {"tree": "Events"}
    features: dict[str, Any] = {"normalize": "minmax", "pad": "max", "exclude": []}
    train: dict[str, Any] = {"stream": {}}
    evaluate: dict[str, Any] = {}
    raw.update(data=data, features=features, train=train, evaluate=evaluate)

    settings = _read_json(params, "--params") if params else {}
    engine = _engine(model, train)
    _params(settings, data, features, train, evaluate, engine, notes)
    if preproc:
        derived, cut = _preproc(_read_json(preproc, "--preproc"), features, notes)
        if derived:
            raw["derived"] = derived
        if cut:
            raw["selection"] = {"events": cut}
    if not features["exclude"]:
        del features["exclude"]
    if not train["stream"]:
        del train["stream"]
    if not evaluate:
        del raw["evaluate"]
    return raw, notes


def _list(value: str, option: str) -> list[str]:
    """Lines of a text file (``#`` comments dropped) or a comma-separated list."""
    if os.path.isfile(value):
        lines = (line.split("#", 1)[0].strip() for line in Path(value).read_text().splitlines())
        items = [line for line in lines if line]
    else:
        items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise HepdaskError(f"{option} {value!r} lists nothing: give a file with one entry per "
                           "line or a comma-separated list.")
    return items


def _samples(paths: Sequence[str], labels: str) -> list[dict]:
    """One sample per file with a label per file, or one sample whose labels come from data."""
    per_file = os.path.isfile(labels) or "," in labels or labels.strip().isdigit()
    if not per_file:
        return [{"name": "events", "files": list(paths), "label": labels.strip()}]
    values = _list(labels, "--labels")
    if len(values) != len(paths):
        raise HepdaskError(
            f"--labels {labels} gives {len(values)} labels for {len(paths)} files: write one "
            "class label per file, in the order of --files (or the name of a label branch)."
        )
    samples, names = [], set()
    for path, value in zip(paths, values, strict=True):
        if not value.isdigit():
            raise HepdaskError(
                f"--labels {labels}: {value!r} (for {path}) is not a class number; labels are "
                "0, 1, 2, ... one per file."
            )
        stem = Path(path).name.removesuffix(".root") or "file"
        unique, i = stem, 1
        while unique in names:
            i += 1
            unique = f"{stem}_{i}"
        names.add(unique)
        samples.append({"name": unique, "files": [path], "label": int(value)})
    return samples


def _read_json(path: str, option: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HepdaskError(f"{option} {path}: the file does not exist.") from None
    except json.JSONDecodeError as err:
        raise HepdaskError(f"{option} {path} is not valid JSON: {err}.") from None
    if not isinstance(data, dict):
        raise HepdaskError(f"{option} {path} must hold a JSON object ({{...}}).")
    return data


def _engine(model: str, train: dict) -> str:
    """The engine that fits the model file: ``model(idim)`` is a network, PyTorch when the file
    imports torch (and not Keras or TensorFlow), Keras otherwise; ``model()`` an estimator."""
    spec = f"{model}:model"
    function = load_function(spec, "--model", arguments=None)
    required = [p for p in inspect.signature(function).parameters.values()
                if p.default is inspect.Parameter.empty]
    if len(required) == 1:
        imported = _imports(model)
        engine = "torch" if "torch" in imported and not {"keras", "tensorflow"} & imported \
            else "keras"
        train.update({"engine": engine, engine: {"model": spec}})
        return engine
    if required:
        raise HepdaskError(
            f"--model {model}: model{inspect.signature(function)} must take one argument (idim, "
            "the number of input features) and return a compiled Keras model or a "
            "torch.nn.Module, or none and return an XGBoost or scikit-learn estimator."
        )
    estimator = call_function(function, spec, "--model",
                              returns="an XGBoost or scikit-learn estimator")
    if type(estimator).__module__.split(".")[0] == "xgboost":
        # every one of n_estimators rounds, as MLaaS4HEP trained them: no early stopping
        train.update(engine="xgboost", xgboost={"model": spec, "early_stopping_rounds": 0})
        return "xgboost"
    if hasattr(estimator, "partial_fit"):
        train.update(engine="sklearn", sklearn={"estimator": spec})
        return "sklearn"
    raise HepdaskError(
        f"--model {model}: model() returned {type(estimator).__name__}, which has no "
        "partial_fit and is not an XGBoost estimator, so it cannot learn from data larger than "
        "memory. Return an XGBClassifier, an estimator with partial_fit (SGDClassifier, "
        "MLPClassifier, ...), or define model(idim) returning a compiled Keras model or a "
        "torch.nn.Module."
    )


def _imports(path: str) -> set[str]:
    """The top-level packages a Python file imports (read, not run)."""
    names = set()
    for node in ast.walk(ast.parse(Path(path).read_bytes())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def _params(settings: Mapping[str, Any], data: dict, features: dict, train: dict,
            evaluate: dict, engine: str, notes: list[str]) -> None:
    for key, value in settings.items():
        if key == "nevts":
            if int(value) > 0:
                data["max_events"] = int(value)
        elif key == "chunk_size":
            _chunk_size(value, data, notes)
        elif key == "epochs":
            if engine == "xgboost":
                notes.append("params.epochs is not used: XGBoost trains n_estimators trees.")
            else:
                train.setdefault(engine, {})["epochs"] = int(value)
                if engine in ("keras", "torch"):  # all epochs are trained, as in MLaaS4HEP
                    train[engine]["patience"] = int(value)
                notes.append(f"params.epochs = {value}: hepdask makes {value} passes over all "
                             "training events (MLaaS4HEP trained each chunk that many times).")
        elif key == "batch_size":
            train["stream"]["batch_size"] = int(value)
        elif key == "shuffle":
            train["stream"]["shuffle"] = _truth(value)
        elif key == "branch":
            data["tree"] = str(value)
        elif key in ("identifier", "exclude_branches"):
            features["exclude"] += _names(value)
        elif key == "selected_branches":
            if _names(value):
                features["branches"] = _names(value)
        elif key == "redirector":
            if value:
                data["redirector"] = str(value)
        elif key == "verbose":
            notes.append("params.verbose is not a config setting: hepdask logs its progress; "
                         "use -q to see only warnings.")
        elif key == "metrics" and isinstance(value, bool):
            # MLaaS4HEP's switch for its performance metrics; the AUC is always reported
            evaluate["metrics"] = list(_SWITCHED_METRICS) if value else []
        elif key == "metrics":
            wanted = [_METRICS.get(str(m).lower()) for m in _names(value)]
            unknown = [m for m, w in zip(_names(value), wanted, strict=True) if w is None]
            if unknown:
                notes.append(f"params.metrics {unknown} are not computed; hepdask has "
                             f"{sorted(set(_METRICS.values()))}.")
            evaluate["metrics"] = sorted({w for w in wanted if w and w != "auc"})
        else:
            notes.append(f"params.{key} is not used by hepdask (it reads {', '.join(PARAMS)}).")


def _chunk_size(value: Any, data: dict, notes: list[str]) -> None:
    """``chunk_size``: entries per partition; -1, MLaaS4HEP's "the whole file at once" (which its
    XGBoost workflow requires), keeps hepdask's partitions: XGBoost sees all events either way."""
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size == -1:
        notes.append("params.chunk_size = -1 (the whole file in one chunk): hepdask reads the "
                     f"files in partitions of data.step_size = {DataConfig().step_size} entries "
                     "on the cluster, and every engine still trains on all events.")
    elif size >= 1:
        data["step_size"] = size
    else:
        raise HepdaskError(
            f"params.chunk_size is {value!r}: give the number of entries per chunk (a positive "
            "integer, e.g. 50000), or -1 to read each file as a whole."
        )


def _names(value: Any) -> list[str]:
    """A list of names from a list, a comma-separated string or a file of lines."""
    if isinstance(value, list):
        return [str(v) for v in value if str(v).strip()]
    text = str(value or "")
    if text and os.path.isfile(text):
        return _list(text, "params")
    return [v.strip() for v in text.split(",") if v.strip()]


def _truth(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")


def _preproc(preproc: Mapping[str, Any], features: dict,
             notes: list[str]) -> tuple[dict[str, str], str | None]:
    """``new_branch``, ``flat_cut`` and ``jagged_cut`` as derived branches and one event cut."""
    derived: dict[str, str] = {}
    cuts: list[str] = []
    for section, entries in preproc.items():
        if section not in ("new_branch", "flat_cut", "jagged_cut") or not isinstance(entries, dict):
            notes.append(f"preproc.{section} is not used by hepdask (it reads new_branch, "
                         "flat_cut and jagged_cut).")
            continue
        for branch, spec in entries.items():
            where = f"preproc.{section}.{branch}"
            for key, value in spec.items():
                if key == "def" and section == "new_branch":
                    derived[branch] = str(value)
                elif key == "cut" or (key.startswith("cut_") and key[4:].isdigit()):
                    cuts.append(_cut(value, where))
                elif key == "remove":
                    if _truth(value):
                        features["exclude"].append(branch)
                elif key == "keys_to_remove" and section == "new_branch":
                    features["exclude"] += _names(value)
                elif key == "type" and section == "new_branch":
                    continue  # hepdask infers flat or jagged from the definition
                else:
                    notes.append(f"{where}.{key} is not used by hepdask.")
            if section == "new_branch" and "def" not in spec:
                raise HepdaskError(f"{where} has no 'def': give the new branch's definition, "
                                   "e.g. \"log(Energy)\".")
    return derived, " and ".join(f"({c})" for c in cuts) or None


def _cut(value: Any, where: str) -> str:
    """A flat cut as it is; a jagged ``[condition, "all"|"any"]`` as all(...) / any(...)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 2 and value[1] in ("all", "any"):
        return f"{value[1]}({value[0]})"
    raise HepdaskError(
        f"{where}: the cut {value!r} must be a condition string, or [condition, \"all\"] / "
        "[condition, \"any\"] for a jagged branch."
    )


def to_toml(config: Mapping[str, Any], *, comments: Sequence[str] = ()) -> str:
    """TOML text for a config mapping (scalars, lists of scalars, tables, ``[[samples]]``)."""
    lines = [f"# {c}" for c in comments]
    if comments:
        lines.append("")
    _table(config, [], lines)
    return "\n".join(lines).strip() + "\n"


def _table(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)
               and not (isinstance(v, list) and v and isinstance(v[0], dict))}
    for key, value in scalars.items():
        if value is not None:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in table.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines += ["", f"[[{'.'.join(map(_key, [*path, key]))}]]"]
                _table(item, [*path, key], lines)
    for key, value in table.items():
        if isinstance(value, dict):
            lines += ["", f"[{'.'.join(map(_key, [*path, key]))}]"]
            _table(value, [*path, key], lines)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
