"""The run configuration: one TOML file, validated up front.

The dataclasses below are the schema *and* the defaults: every key a user may
write is a field here, so an unknown key, a wrong type or a bad value is
reported before any data is read, with the closest valid name suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import glob
import importlib.util
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from .errors import HepdaskError
from .usercode import check_function_file, import_class

__all__ = [
    "ClusterConfig",
    "CollectionConfig",
    "Config",
    "DataConfig",
    "EvaluateConfig",
    "FeaturesConfig",
    "KerasConfig",
    "PrepareConfig",
    "SampleConfig",
    "SelectionConfig",
    "SklearnConfig",
    "SplitConfig",
    "StreamConfig",
    "TorchConfig",
    "TrainConfig",
    "XGBoostConfig",
    "apply_overrides",
    "from_dict",
    "from_table",
    "load_config",
]

NORMALIZATIONS = ("standard", "minmax", "none")
ENGINES = ("xgboost", "keras", "torch", "sklearn")
DEVICES = ("auto", "cpu", "cuda")
EXTRA_METRICS = ("accuracy", "auc", "precision", "recall", "f1", "logloss")


@dataclass(frozen=True)
class SampleConfig:
    """One physics sample: files of one tree, all sharing one class label."""

    name: str
    files: tuple[str, ...]
    label: int | str  # a class number, or an expression giving one per event
    tree: str | None = None  # defaults to [data] tree
    weight: str | None = None  # per-event weight: a branch or an expression; 1 when absent

    def __post_init__(self) -> None:
        if not self.files:
            raise HepdaskError(
                f"Config key samples.{self.name}.files is empty: list at least one ROOT file, "
                "glob (e.g. 'data/*.root') or text file of paths ending in .txt."
            )
        if isinstance(self.label, int) and self.label < 0:
            raise HepdaskError(
                f"Config key samples.{self.name}.label is {self.label}: labels are class "
                "numbers 0, 1, ... (0 = background and 1 = signal for a binary classifier)."
            )
        if isinstance(self.label, str) and not self.label.strip():
            raise HepdaskError(
                f"Config key samples.{self.name}.label is empty: give a class number or an "
                "expression such as \"genMatched == 1\"."
            )


READ_ERROR_MODES = ("fail", "skip")


@dataclass(frozen=True)
class DataConfig:
    tree: str = "events"
    step_size: int = 100_000  # entries per partition
    sentinel: float | None = None  # value meaning "undefined" (HiggsML: -999.0)
    max_events: int | None = None  # use at most this many entries, taken from every file in proportion
    redirector: str | None = None  # XRootD prefix for logical file names (/store/...)
    on_read_error: str = "fail"  # fail, or skip (and report) what cannot be read
    timeout: int = 60  # seconds for a remote file to answer (XRootD takes whole seconds)
    retries: int = 2  # more tries of a partition that could not be read, before giving up

    def __post_init__(self) -> None:
        _check_choice("data.on_read_error", self.on_read_error, READ_ERROR_MODES)
        if self.timeout <= 0 or self.retries < 0:
            raise HepdaskError(
                f"Config keys data.timeout ({self.timeout}) and data.retries ({self.retries}) "
                "must be a positive number of seconds and a number of tries (0 or more)."
            )
        if self.step_size <= 0:
            raise HepdaskError(
                f"Config key data.step_size is {self.step_size}: it is the number of entries "
                "per partition and must be positive (100000 is a good start)."
            )
        if self.max_events is not None and self.max_events < 1:
            raise HepdaskError(
                f"Config key data.max_events is {self.max_events}: give a positive number of "
                "entries, or leave it out to use every entry."
            )


@dataclass(frozen=True)
class PrepareConfig:
    """Create a known data set before the run when its files are missing."""

    dataset: str | None = None  # "higgs": the HiggsML challenge data
    directory: str = "data/higgs"
    csv: str | None = None  # the official challenge CSV, if you have it
    download: bool = True
    synthetic_events: int = 250_000
    seed: int = 0
    events_per_file: int = 250_000

    def __post_init__(self) -> None:
        if self.dataset not in (None, "higgs"):
            raise HepdaskError(
                f"Config key prepare.dataset is {self.dataset!r}: the only data set hepdask "
                "can prepare is 'higgs'; remove the [prepare] table for your own files."
            )

    def check_read_by(self, samples: Sequence[SampleConfig], redirector: str | None) -> None:
        """The samples must read the directory that [prepare] fills: a run over other files
        would train on data other than those prepared, and describe the wrong ones."""
        if self.dataset is None:
            return
        directory = os.path.realpath(self.directory)
        if not any(_may_read(redirector + pattern
                             if redirector and pattern.startswith("/store/") else pattern,
                             directory)
                   for s in samples for pattern in s.files):
            raise prepare_not_read(self.directory, {s.name: list(s.files) for s in samples})


def _may_read(pattern: str, directory: str) -> bool:
    """Whether a sample's file pattern can name files directly in ``directory`` (a ``.txt`` list
    may: it is read with the files; so may a URL, from a server that serves the directory)."""
    if "://" in pattern or pattern.endswith(".txt"):
        return True
    parent = os.path.dirname(os.path.realpath(pattern))
    return PurePath(directory).match(parent) if glob.has_magic(parent) else parent == directory


def prepare_not_read(directory: str, files: Mapping[str, Sequence[str]]) -> HepdaskError:
    """The error for a [prepare] directory that the samples do not read (``files``: per sample,
    its patterns or the files it opened)."""
    listing = "; ".join(f"{name}: {', '.join(paths)}" for name, paths in files.items())
    return HepdaskError(
        f"Config key prepare.directory is {directory!r}, but the samples read no file prepared "
        f"there ({listing}): the run would train on other files than those [prepare] makes. "
        f"Point the samples' files at it (e.g. files = [\"{directory}/signal_*.root\"]) or "
        "prepare.directory at the directory the samples read, or remove the [prepare] table."
    )


@dataclass(frozen=True)
class CollectionConfig:
    """How one jagged collection (``Jet`` for ``Jet_*``, or a lone jagged branch) is flattened."""

    pad: int | str | None = None  # slots kept; features.pad when unset
    sort_by: str | None = None  # an expression over the collection, e.g. "Jet_pt"
    descending: bool = True  # with sort_by: the largest first
    multiplicity: bool = True  # a column with the number of objects (after the selection)
    mask: bool = True  # one 0/1 column per slot: is there an object

    def check(self, where: str) -> None:
        if self.pad is not None:
            check_pad(f"{where}.pad", self.pad)


@dataclass(frozen=True)
class FeaturesConfig:
    branches: tuple[str, ...] = ("*",)  # names or globs, of tree branches and [derived] ones
    exclude: tuple[str, ...] = ()
    pad: int | str = "max"  # slots per collection: an int, "max" or a quantile "q99" (specs)
    normalize: str = "standard"
    collections: dict[str, CollectionConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice("features.normalize", self.normalize, NORMALIZATIONS)
        check_pad("features.pad", self.pad)
        for name, collection in self.collections.items():
            collection.check(f"features.collections.{name}")


@dataclass(frozen=True)
class SelectionConfig:
    """Cuts, as expressions: on events, and on the objects of each collection before padding."""

    events: str | None = None  # e.g. "count(Muon_pt) >= 2 and MET_pt > 20"
    objects: dict[str, str] = field(default_factory=dict)  # collection -> e.g. "Jet_pt > 30"


def check_pad(key: str, pad: int | str) -> None:
    """A pad is an int >= 1, "max", or "qNN" (the NN-th percentile of the multiplicity)."""
    ok = (isinstance(pad, int) and pad >= 1) or pad == "max" or pad_quantile(pad) is not None
    if not ok:
        raise HepdaskError(
            f"Config key {key} is {pad!r}: give the number of slots kept per event (e.g. 4), "
            "\"max\" for the largest multiplicity in the data, or a percentile such as \"q99\" "
            "(the multiplicity that 99% of the events do not exceed)."
        )


def pad_quantile(pad: int | str) -> float | None:
    """The fraction q/100 of a "qNN" pad, else None."""
    if isinstance(pad, str) and pad.startswith("q"):
        try:
            q = float(pad[1:])
        except ValueError:
            return None
        if 0 < q <= 100:
            return q / 100
    return None


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.6
    validation: float = 0.2
    test: float = 0.2
    seed: int = 2014

    def __post_init__(self) -> None:
        fractions = (self.train, self.validation, self.test)
        if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9 or self.train == 0 or self.test == 0:
            raise HepdaskError(
                f"Config keys split.train/validation/test are {fractions}: they are fractions "
                "of the events, must be non-negative, sum to 1, and train and test must be > 0."
            )


XGBOOST_WORKERS = ("per-host", "all")


@dataclass(frozen=True)
class XGBoostConfig:
    model: str | None = None  # "file.py:function" returning an XGBClassifier: its parameters are used
    num_boost_round: int = 200
    early_stopping_rounds: int | None = 20  # 0: no early stopping, every round is trained
    scale_pos_weight: float | str = "auto"  # "auto": background/signal weight ratio
    use_weights: bool = True
    workers: str = "per-host"  # "per-host": one training worker per host, with its threads; "all"
    check_params: bool = True  # params names and objective/metric/method values, against XGBoost's
    params: dict[str, Any] = field(
        default_factory=lambda: {
            "objective": "binary:logistic",
            "tree_method": "hist",
            "eta": 0.1,
            "max_depth": 6,
            "eval_metric": ["logloss"],  # a distributed "auc" each round doubles training time
        }
    )

    def __post_init__(self) -> None:
        if isinstance(self.scale_pos_weight, str) and self.scale_pos_weight != "auto":
            raise HepdaskError(
                f"Config key train.xgboost.scale_pos_weight is {self.scale_pos_weight!r}: give a "
                "number or \"auto\" (sum of background weights / sum of signal weights)."
            )
        if not isinstance(self.scale_pos_weight, str):
            check_range("train.xgboost.scale_pos_weight", self.scale_pos_weight, low=0,
                        low_open=True)
        if self.workers not in XGBOOST_WORKERS:
            raise HepdaskError(
                f"Config key train.xgboost.workers is {self.workers!r}: give \"per-host\" (one "
                "worker per host trains, with all of its threads: no exchange between processes "
                "of one machine) or \"all\" (every worker trains)."
            )
        check_range("train.xgboost.num_boost_round", self.num_boost_round, low=1)
        if self.early_stopping_rounds is not None:
            check_range("train.xgboost.early_stopping_rounds", self.early_stopping_rounds, low=0)
        check_function_spec("train.xgboost.model", self.model, "an xgboost.XGBClassifier")


@dataclass(frozen=True)
class StreamConfig:
    """How the streaming engines (keras, sklearn) get their batches from the cluster."""

    batch_size: int = 1000
    prefetch: int = 4  # partitions computed ahead on the workers
    shuffle: bool = True  # reshuffle partitions and events every epoch
    use_weights: bool = True
    balance_classes: bool = True  # scale weights so each class has the same total weight
    missing_indicators: bool = False  # one 0/1 column per feature that has missing values
    seed: int = 0  # shuffling of partitions and events, per epoch

    def __post_init__(self) -> None:
        for key in ("batch_size", "prefetch"):
            if getattr(self, key) < 1:
                raise HepdaskError(
                    f"Config key train.stream.{key} is {getattr(self, key)}: it must be a "
                    "positive integer."
                )


@dataclass(frozen=True)
class KerasConfig:
    """A user model file, or the built-in dense network described by the other keys."""

    model: str | None = None  # "path/to/file.py:function", function(n_features) -> compiled model
    hidden: tuple[int, ...] = (128, 64, 32)
    activation: str = "relu"
    dropout: float = 0.1
    learning_rate: float = 1e-3
    epochs: int = 10
    patience: int | None = 3  # epochs without val_loss improvement before stopping

    def __post_init__(self) -> None:
        check_function_spec("train.keras.model", self.model,
                            "a compiled keras.Model, given the number of input features")
        _check_network(self, "train.keras")


#: [train.torch] activation and optimizer names -> their torch.nn / torch.optim classes
TORCH_ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "elu": "ELU",
                     "selu": "SELU", "gelu": "GELU", "silu": "SiLU", "leaky_relu": "LeakyReLU"}
TORCH_OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop"}


@dataclass(frozen=True)
class TorchConfig:
    """A user model file, or the built-in dense network: the keys of [train.keras], plus the
    optimizer and the trainer's threads."""

    model: str | None = None  # "path/to/file.py:function", function(n_features) -> torch.nn.Module
    hidden: tuple[int, ...] = (128, 64, 32)
    activation: str = "relu"
    dropout: float = 0.1
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # adam, adamw, sgd or rmsprop (a user file's optimizer() wins)
    epochs: int = 10
    patience: int | None = 3  # epochs without val_loss improvement before stopping
    threads: int | None = None  # torch's CPU threads in the trainer; unset: the CPUs no local worker uses

    def __post_init__(self) -> None:
        check_function_spec("train.torch.model", self.model,
                            "a torch.nn.Module, given the number of input features")
        _check_network(self, "train.torch")
        _check_choice("train.torch.activation", self.activation, tuple(TORCH_ACTIVATIONS))
        _check_choice("train.torch.optimizer", self.optimizer, tuple(TORCH_OPTIMIZERS))
        if self.threads is not None:
            check_range("train.torch.threads", self.threads, low=1)


def _check_network(config: KerasConfig | TorchConfig, where: str) -> None:
    """The keys the Keras and torch networks share."""
    check_range(f"{where}.epochs", config.epochs, low=1)
    for i, width in enumerate(config.hidden):
        check_range(f"{where}.hidden.{i}", width, low=1)
    check_range(f"{where}.dropout", config.dropout, low=0, high=1, high_open=True)
    check_range(f"{where}.learning_rate", config.learning_rate, low=0, low_open=True)
    if config.patience is not None:
        check_range(f"{where}.patience", config.patience, low=0)


@dataclass(frozen=True)
class SklearnConfig:
    """Any scikit-learn estimator with ``partial_fit``, trained batch by batch."""

    # a class path, or "file.py:function" returning an estimator (then params are not used)
    estimator: str = "sklearn.linear_model.SGDClassifier"
    params: dict[str, Any] = field(default_factory=lambda: {"loss": "log_loss"})
    epochs: int = 5

    def __post_init__(self) -> None:
        check_range("train.sklearn.epochs", self.epochs, low=1)

    def check_estimator(self) -> None:
        """The file of a ``"file.py:function"``, or the class of an import path (imported)."""
        key = "train.sklearn.estimator"
        if ":" in self.estimator:
            check_function_spec(key, self.estimator, "a scikit-learn estimator")
            check_function_file(self.estimator, key)
        else:
            import_class(self.estimator, key)


@dataclass(frozen=True)
class TrainConfig:
    engine: str = "xgboost"
    xgboost: XGBoostConfig = field(default_factory=XGBoostConfig)
    keras: KerasConfig = field(default_factory=KerasConfig)
    torch: TorchConfig = field(default_factory=TorchConfig)
    sklearn: SklearnConfig = field(default_factory=SklearnConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    retries: int = 2  # xgboost: restarts from the last booster copy after losing a worker
    timeout: float = 600.0  # xgboost: seconds without a boosting round before a worker is lost
    device: str = "auto"  # auto (a GPU when one is visible), cpu or cuda; not for sklearn

    def __post_init__(self) -> None:
        """The engine's own model file, class or parameters, and the packages it needs; not
        those of the engines not used. ``device = "cuda"`` is checked here for the engines
        that train in this process (the xgboost workers are asked when training starts)."""
        _check_choice("train.engine", self.engine, ENGINES)
        _check_choice("train.device", self.device, DEVICES)
        check_range("train.retries", self.retries, low=0)
        check_range("train.timeout", self.timeout, low=0, low_open=True)
        if self.engine == "xgboost":
            if self.xgboost.model is not None:
                check_function_file(self.xgboost.model, "train.xgboost.model")
            elif self.xgboost.check_params:
                check_xgboost_params(self.xgboost.params, "train.xgboost.params")
        elif self.engine == "keras":
            require(("tensorflow", "keras"), 'train.engine = "keras" needs TensorFlow and '
                    "Keras 3 (modules tensorflow and keras), which are not installed. Install "
                    "them with: pip install 'hepdask[keras]' (tensorflow-cpu; use tensorflow on "
                    "a GPU machine).")
            if self.keras.model is not None:
                check_function_file(self.keras.model, "train.keras.model")
        elif self.engine == "torch":
            require(("torch",), 'train.engine = "torch" needs PyTorch (module torch), which is '
                    "not installed. Install it with: pip install 'hepdask[torch]' (for a GPU, "
                    "the CUDA build from https://pytorch.org).")
            if self.torch.model is not None:
                check_function_file(self.torch.model, "train.torch.model")
        else:
            self.sklearn.check_estimator()
            if self.device == "cuda":
                raise HepdaskError(
                    'Config key train.device is "cuda", but the sklearn engine trains on the '
                    'CPU only. Set train.device = "cpu" (or "auto"), or use the torch, keras or '
                    "xgboost engine on a GPU."
                )
        if self.device == "cuda" and self.engine in ("keras", "torch"):
            from .devices import check_cuda

            check_cuda(self.engine)


CLUSTER_KINDS = ("local", "address", "gateway")
PREDICT_FORMATS = ("root", "parquet")  # what `hepdask predict` writes
EXPORT_FORMATS = ("onnx",)  # what `hepdask export` writes
GATEWAY_AUTH = ("basic", "jupyterhub", "kerberos")


@dataclass(frozen=True)
class GatewayConfig:
    """A cluster from a dask-gateway server (e.g. a JupyterHub's). Keys left unset fall back on
    the ``gateway.*`` Dask config that JupyterHub deployments ship (address, auth, ...)."""

    address: str | None = None  # e.g. "https://hub.example.org/services/dask-gateway"
    proxy_address: str | None = None  # the scheduler proxy, e.g. "tls://hub.example.org:8786"
    public_address: str | None = None  # where dashboards are reached from a browser
    auth: str | None = None  # basic, jupyterhub or kerberos
    username: str | None = None  # basic auth; this machine's user by default
    password_env: str = "DASK_GATEWAY_PASSWORD"  # basic auth: the variable holding the password
    cluster_name: str | None = None  # join this running cluster instead of starting one
    workers: int = 2  # scale a new cluster to this many workers ...
    adapt_minimum: int | None = None  # ... or let it adapt between these bounds
    adapt_maximum: int | None = None
    worker_cores: float | None = None  # cluster options, when the gateway offers them
    worker_memory: float | None = None  # GiB
    image: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # any other cluster option
    shutdown: bool = True  # shut down the cluster hepdask started when the run ends
    timeout: float = 300.0  # seconds to wait for the first workers

    def __post_init__(self) -> None:
        if self.auth is not None:
            _check_choice("cluster.gateway.auth", self.auth, GATEWAY_AUTH)
        if (self.adapt_minimum is None) != (self.adapt_maximum is None):
            raise HepdaskError(
                "Set both cluster.gateway.adapt_minimum and adapt_maximum to let the cluster "
                "adapt, or neither to scale it to cluster.gateway.workers."
            )
        if self.adapt_minimum is not None and not 0 <= self.adapt_minimum <= self.adapt_maximum:
            raise HepdaskError(
                f"cluster.gateway.adapt_minimum ({self.adapt_minimum}) must be between 0 and "
                f"adapt_maximum ({self.adapt_maximum})."
            )
        if self.adapt_maximum is not None:
            check_range("cluster.gateway.adapt_maximum", self.adapt_maximum, low=1)
        check_range("cluster.gateway.workers", self.workers, low=1)
        for key in ("worker_cores", "worker_memory", "timeout"):
            if getattr(self, key) is not None:
                check_range(f"cluster.gateway.{key}", getattr(self, key), low=0, low_open=True)


@dataclass(frozen=True)
class ClusterConfig:
    kind: str | None = None  # local, address or gateway; address when `address` is set
    address: str | None = None  # an existing scheduler, e.g. "tcp://10.0.0.1:8786"
    n_workers: int | None = None  # local cluster: one per core when unset
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    dashboard_address: str = "127.0.0.1:8787"
    check_versions: bool = True  # refuse workers whose hepdask, dask, awkward, ... differ
    gateway: GatewayConfig = field(default_factory=GatewayConfig)

    def __post_init__(self) -> None:
        if self.kind is None:
            object.__setattr__(self, "kind", "address" if self.address else "local")
        _check_choice("cluster.kind", self.kind, CLUSTER_KINDS)
        if self.kind == "address" and not self.address:
            raise HepdaskError(
                'cluster.kind = "address" needs cluster.address (e.g. "tcp://10.0.0.1:8786") '
                "or --scheduler ADDRESS."
            )
        if self.kind == "gateway":
            require(("dask_gateway",), 'cluster.kind = "gateway" needs the dask-gateway '
                    "client, which is not installed: pip install 'hepdask[gateway]' (the same "
                    "version as the gateway server, if you can).")
        if self.n_workers is not None:
            check_range("cluster.n_workers", self.n_workers, low=1)
        check_range("cluster.threads_per_worker", self.threads_per_worker, low=1)
        _check_memory("cluster.memory_limit", self.memory_limit)
        _check_port("cluster.dashboard_address", self.dashboard_address, low=0)
        if self.address:
            _check_port("cluster.address", self.address, low=1)


@dataclass(frozen=True)
class EvaluateConfig:
    ams_breg: float = 10.0
    top_fraction: float = 0.15  # AMS at the threshold keeping this fraction of events
    bins: int | str = "auto"  # histogram bins; "auto": from the number of events (Rice rule)
    metrics: tuple[str, ...] = ()  # more test metrics: accuracy, precision, recall, f1, logloss

    def __post_init__(self) -> None:
        for metric in self.metrics:
            _check_choice("evaluate.metrics", metric, EXTRA_METRICS)
        check_range("evaluate.ams_breg", self.ams_breg, low=0)
        check_range("evaluate.top_fraction", self.top_fraction, low=0, high=1, low_open=True)
        if isinstance(self.bins, str):
            _check_choice("evaluate.bins", self.bins, ("auto",))
        else:
            check_range("evaluate.bins", self.bins, low=1)


def check_function_spec(key: str, spec: str | None, returns: str) -> None:
    """``"path/to/file.py:function"``, the way user code is named in a config."""
    if spec is not None and (":" not in spec or not spec.rpartition(":")[0].endswith(".py")):
        raise HepdaskError(
            f"Config key {key} is {spec!r}: write it as \"path/to/file.py:function\", a "
            f"function returning {returns}."
        )


def check_range(key: str, value: float, *, low: float, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """``value`` within [low, high] (an open end excludes its bound), else a message naming the
    key, the value and the range."""
    ok = (value > low if low_open else value >= low) and (
        high is None or (value < high if high_open else value <= high))
    if ok:
        return
    if high is None:
        wanted = f"greater than {low}" if low_open else f"at least {low}"
    elif low_open:
        wanted = f"greater than {low} and {'below' if high_open else 'at most'} {high}"
    else:
        wanted = f"from {low} to {'below ' if high_open else ''}{high}"
    raise HepdaskError(f"Config key {key} is {value!r}: it must be {wanted}.")


def require(modules: Sequence[str], message: str) -> None:
    """Raise ``message`` unless every module can be imported: found (``find_spec``), not
    imported, so checking costs nothing."""
    if any(importlib.util.find_spec(module) is None for module in modules):
        raise HepdaskError(message)


def _check_protocol(url: str, key: str) -> None:
    """The packages reading a ``root://`` or ``http(s)://`` file are installed."""
    if url.startswith("root://"):
        modules = ("fsspec_xrootd", "XRootD")
    elif url.startswith(("http://", "https://")):
        modules = ("aiohttp",)
    else:
        return
    from .dataset import _missing_protocol

    require(modules, _missing_protocol(url, key))


def _check_memory(key: str, value: str) -> None:
    """"auto", or an amount of memory Dask reads (e.g. "4GiB")."""
    if value == "auto":
        return
    from dask.utils import parse_bytes

    try:
        ok = parse_bytes(value) > 0
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise HepdaskError(
            f"Config key {key} is {value!r}: give the memory of each worker, e.g. \"4GiB\" or "
            "\"1500MB\", or \"auto\" (the machine's memory shared among the workers)."
        )


def _check_port(key: str, address: str, *, low: int) -> None:
    """The port of ``"host:port"`` or ``"tcp://host:port"``, when there is one."""
    port = address.rpartition(":")[2]
    if address.count(":") > address.count("://") and port.isdigit() and not low <= int(port) <= 65535:
        raise HepdaskError(
            f"Config key {key} is {address!r}: its port {port} must be from {low} to 65535."
        )


XGBOOST_SHAPE = ("booster", "objective", "tree_method", "eval_metric", "num_class")


def check_xgboost_params(params: Mapping[str, Any], where: str) -> None:
    """Every name of ``params`` is one XGBoost knows for this booster and objective, and the
    values of the keys that decide them (booster, objective, tree method, metrics) are valid,
    so that a misspelt parameter does not train with XGBoost's default and a mere warning.

    The names come from XGBoost itself: the configuration of a booster built with those keys
    (:func:`_xgboost_names`, 30 ms once xgboost is imported, which training does anyway)."""
    shape = {k: params[k] for k in XGBOOST_SHAPE if k in params}
    if str(shape.get("objective", "")).startswith("multi:"):
        shape.setdefault("num_class", 2)  # as training does for two classes
    known = _xgboost_names(json.dumps(shape, sort_keys=True))
    if isinstance(known, str):  # XGBoost refused one of the shaping values: find which
        for key, value in shape.items():
            error = _xgboost_names(json.dumps({key: value} | (
                {"num_class": shape["num_class"]} if key == "objective" and "num_class" in shape
                else {})))
            if isinstance(error, str):
                break
        else:
            key, value, error = "", shape, known
        candidates = re.findall(r"candidate: (\S+)", error)
        close = difflib.get_close_matches(str(value), candidates, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise HepdaskError(
            f"Config key {_join(where, key)} is {value!r}, which XGBoost refuses: "
            f"{error.splitlines()[0]}.{hint}"
        )
    for key in params:
        if key not in known:
            raise HepdaskError(
                f"{_unknown_key(key, where, sorted(known))} If XGBoost takes it (a newer "
                "parameter, or one hepdask cannot see), set train.xgboost.check_params = false."
            )


@functools.lru_cache(maxsize=16)
def _xgboost_names(shape: str) -> frozenset[str] | str:
    """The parameter names of an XGBoost booster configured with the JSON ``shape``, or
    XGBoost's error (first line, without its log prefix) when it refuses them."""
    import numpy as np
    import xgboost

    data = xgboost.DMatrix(np.zeros((2, 1), dtype=np.float32), label=[0, 1])
    try:
        config = json.loads(xgboost.Booster(json.loads(shape), [data]).save_config())
    except (xgboost.core.XGBoostError, TypeError, ValueError) as err:
        lines = [re.sub(r"^\[[\d:]+\] \S+: ", "", line) for line in str(err).splitlines()]
        return "\n".join(line for line in lines if line.strip() and "[bt]" not in line)
    names = {"eval_metric", "verbosity"}  # not part of a booster's configuration

    def walk(node: Any) -> None:
        for key, value in (node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(value, dict | list):
                walk(value)
            elif isinstance(value, str) and key != "name":
                names.add(key)

    walk(config["learner"])
    return frozenset(names)


@dataclass(frozen=True)
class Config:
    """A whole run. Build it with :func:`load_config`."""

    samples: tuple[SampleConfig, ...]
    name: str = "run"
    output: str = "runs"  # the run directory is <output>/<name>
    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    derived: dict[str, str] = field(default_factory=dict)  # new branches: name -> expression
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    source: str | None = None  # the file this was read from

    def __post_init__(self) -> None:
        if not self.samples:
            raise HepdaskError(
                "The config has no [[samples]]: add at least one table with name, files and "
                "label (see configs/higgs.toml)."
            )
        names = [s.name for s in self.samples]
        if len(set(names)) != len(names):
            raise HepdaskError(f"Sample names must be unique; the config has {names}.")
        self.prepare.check_read_by(self.samples, self.data.redirector)
        for sample in self.samples:
            for pattern in sample.files:
                if pattern.startswith("/store/") and self.data.redirector:
                    _check_protocol(self.data.redirector, "data.redirector")
                else:
                    _check_protocol(pattern, f"samples.{sample.name}.files")

    @property
    def run_dir(self) -> Path:
        return Path(self.output) / self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain data for writing back as TOML or JSON (``None`` values dropped)."""
        return _drop_none(dataclasses.asdict(self))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read, override and validate a run configuration.

    Parameters
    ----------
    path
        The TOML file.
    overrides
        ``"key.sub=value"`` strings (as given to ``--set``); the value is read
        as TOML, or as a plain string when it is not valid TOML.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise HepdaskError(f"The config file {path} does not exist: check the path.") from None
    except tomllib.TOMLDecodeError as err:
        raise HepdaskError(f"The config file {path} is not valid TOML: {err}.") from None
    raw = apply_overrides(raw, overrides)
    raw.setdefault("source", str(path))
    return from_dict(raw)


def from_dict(raw: Mapping[str, Any]) -> Config:
    """Validate a plain mapping (as parsed from TOML) into a :class:`Config`."""
    return _build(Config, raw, "")


def from_table(cls: type, table: Mapping[str, Any], where: str) -> Any:
    """Validate one table of a config on its own, e.g. ``from_table(ClusterConfig, raw["cluster"],
    "cluster")``: for commands that take only part of a run's config."""
    return _build(cls, table, where)


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set ``key.sub=value`` entries in a parsed config; list items by index (``samples.0.files``)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise HepdaskError(
                f"The override {item!r} is not of the form key.sub=value (e.g. "
                "--set train.xgboost.num_boost_round=50)."
            )
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        *parents, leaf = key.strip().split(".")
        node: Any = raw
        for part in parents:
            if isinstance(node, list):
                node = node[_list_index(node, part, key)]
            else:
                node = node.setdefault(part, {})
        if isinstance(node, list):
            node[_list_index(node, leaf, key)] = value
        else:
            node[leaf] = value
    return raw


def _list_index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise HepdaskError(
            f"The override key {key!r} indexes a list with {part!r}: use a number from 0 to "
            f"{len(node) - 1}, e.g. samples.0.files."
        )
    return int(part)


def _build(cls: type, table: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``table``, checking names and types recursively."""
    if not isinstance(table, Mapping):
        raise HepdaskError(
            f"Config key {where or 'top level'} must be a table, not {_kind(table)}."
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            raise HepdaskError(_unknown_key(key, where, fields))
        kwargs[key] = _convert(hints[key], value, _join(where, key))
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise HepdaskError(
            f"Config table {where or 'top level'} lacks the required key(s) "
            f"{', '.join(repr(m) for m in missing)}."
        )
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except HepdaskError:
                continue
        wanted = " or ".join(_hint_name(o) for o in options if o is not type(None))
        raise HepdaskError(f"Config key {where} must be {wanted}, not {_kind(value)} {value!r}.")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        if item is SampleConfig:
            if not isinstance(value, list):
                raise HepdaskError(
                    "Config key samples must be an array of tables: write each sample as "
                    "[[samples]] with name, files and label."
                )
            return tuple(
                _build(SampleConfig, v, f"samples.{v.get('name', i) if isinstance(v, Mapping) else i}")
                for i, v in enumerate(value)
            )
        if item is int:
            if not isinstance(value, list):
                raise HepdaskError(
                    f"Config key {where} must be a list of integers, not {_kind(value)}."
                )
            return tuple(_convert(int, v, f"{where}.{i}") for i, v in enumerate(value))
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise HepdaskError(
                f"Config key {where} must be a string or a list of strings, not {_kind(value)}."
            )
        return tuple(values)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise HepdaskError(f"Config key {where} must be a table, not {_kind(value)}.")
        item = typing.get_args(hint)[1]
        if item is Any:
            return dict(value)
        return {k: _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise HepdaskError(
            f"Config key {where} must be {_hint_name(hint)}, not {_kind(value)} {value!r}."
        )
    return value


def _check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise HepdaskError(
            f"Config key {key} is {value!r}; it must be one of {', '.join(map(repr, choices))}.{hint}"
        )


def _unknown_key(key: str, where: str, fields: Mapping[str, Any]) -> str:
    valid = [name for name in fields if name != "source"]
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {_join(where, close[0])!r}?" if close else ""
    return (
        f"Unknown config key {_join(where, key)!r}.{hint} Valid keys in "
        f"{where or 'the top level'}: {', '.join(valid)}."
    )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _hint_name(hint: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_drop_none(v) for v in value]
    return value
