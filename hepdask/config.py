"""The run configuration: one TOML file, validated up front.

The dataclasses below are the schema *and* the defaults: every key a user may
write is a field here, so an unknown key, a wrong type or a bad value is
reported before any data is read, with the closest valid name suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import HepdaskError

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
    "TrainConfig",
    "XGBoostConfig",
    "apply_overrides",
    "from_dict",
    "from_table",
    "load_config",
]

NORMALIZATIONS = ("standard", "minmax", "none")
ENGINES = ("xgboost", "keras", "sklearn")
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


@dataclass(frozen=True)
class XGBoostConfig:
    model: str | None = None  # "file.py:function" returning an XGBClassifier: its parameters are used
    num_boost_round: int = 200
    early_stopping_rounds: int | None = 20
    scale_pos_weight: float | str = "auto"  # "auto": background/signal weight ratio
    use_weights: bool = True
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
        if self.epochs < 1:
            raise HepdaskError(f"Config key train.keras.epochs is {self.epochs}: it must be >= 1.")


@dataclass(frozen=True)
class SklearnConfig:
    """Any scikit-learn estimator with ``partial_fit``, trained batch by batch."""

    # a class path, or "file.py:function" returning an estimator (then params are not used)
    estimator: str = "sklearn.linear_model.SGDClassifier"
    params: dict[str, Any] = field(default_factory=lambda: {"loss": "log_loss"})
    epochs: int = 5


@dataclass(frozen=True)
class TrainConfig:
    engine: str = "xgboost"
    xgboost: XGBoostConfig = field(default_factory=XGBoostConfig)
    keras: KerasConfig = field(default_factory=KerasConfig)
    sklearn: SklearnConfig = field(default_factory=SklearnConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    retries: int = 2  # xgboost: restarts from the last booster copy after losing a worker
    timeout: float = 600.0  # xgboost: seconds without a boosting round before a worker is lost

    def __post_init__(self) -> None:
        _check_choice("train.engine", self.engine, ENGINES)
        if self.retries < 0:
            raise HepdaskError(
                f"Config key train.retries is {self.retries}: it must be 0 (no restart after a "
                "lost worker) or more."
            )
        if self.timeout <= 0:
            raise HepdaskError(
                f"Config key train.timeout is {self.timeout}: give the seconds a boosting round "
                "may take before the training is taken as stuck on a lost worker (> 0)."
            )


CLUSTER_KINDS = ("local", "address", "gateway")
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


@dataclass(frozen=True)
class EvaluateConfig:
    ams_breg: float = 10.0
    top_fraction: float = 0.15  # AMS at the threshold keeping this fraction of events
    bins: int = 50
    metrics: tuple[str, ...] = ()  # more test metrics: accuracy, precision, recall, f1, logloss

    def __post_init__(self) -> None:
        for metric in self.metrics:
            _check_choice("evaluate.metrics", metric, EXTRA_METRICS)


def check_function_spec(key: str, spec: str | None, returns: str) -> None:
    """``"path/to/file.py:function"``, the way user code is named in a config."""
    if spec is not None and (":" not in spec or not spec.rpartition(":")[0].endswith(".py")):
        raise HepdaskError(
            f"Config key {key} is {spec!r}: write it as \"path/to/file.py:function\", a "
            f"function returning {returns}."
        )


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
