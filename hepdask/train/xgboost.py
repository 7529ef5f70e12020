"""Distributed gradient-boosted trees with :mod:`xgboost.dask`.

The train and validation matrices stay on the workers: each worker builds its
share of a ``DaskQuantileDMatrix`` from the partitions it holds, and the trees
are grown collectively (Rabit/collective allreduce), so no process ever holds
the whole training set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import distributed
import numpy as np
import xgboost
import xgboost.dask as dxgb

from ..config import XGBoostConfig
from ..errors import HepdaskError
from ..features import Features, rank_order
from ..outputs import atomic_path
from ..progress import compute
from ..usercode import call_function, load_function
from ..weights import class_factors
from .recovery import train_resilient

__all__ = ["XGBoostModel", "train_xgboost"]

log = logging.getLogger("hepdask")


@dataclass
class XGBoostModel:
    """A trained booster with what is needed to use and describe it."""

    booster: xgboost.Booster
    feature_names: tuple[str, ...]
    params: dict  # as the booster was trained, e.g. multi:softprob for three classes
    history: dict = field(default_factory=dict)  # {"train": {"auc": [...]}, "validation": ...}
    best_iteration: int | None = None
    weight_factors: dict[int, float] = field(default_factory=dict)  # label -> training factor
    notes: list[str] = field(default_factory=list)  # how params differ from the config's

    filename = "model.ubj"

    def predict(self, client, X: da.Array) -> da.Array:
        """Scores for the rows of ``X``, computed on the workers, lazily."""
        return dxgb.predict(client, self.booster, X, iteration_range=self._iteration_range(),
                            validate_features=False)

    def scores(self, client, features: Features, split: str = "test"):
        """(scores, labels, weights) of ``split`` as NumPy arrays, in the split's row order.

        Scores are the signal probability for two classes, one column per class otherwise.
        """
        arrays = features[split]
        scores, y, w = compute(client, self.predict(client, arrays.X), arrays.y, arrays.w)
        return _signal(np.asarray(scores)), np.asarray(y), np.asarray(w)

    def score_matrix(self, X: np.ndarray) -> np.ndarray:
        """Scores of the rows of one feature matrix, in this process, computed as
        :meth:`predict` computes each block (a ``DMatrix`` with NaN as missing)."""
        scores = self.booster.predict(xgboost.DMatrix(X, missing=np.nan),
                                      iteration_range=self._iteration_range(),
                                      validate_features=False)
        return _signal(scores)

    def bundle_info(self) -> dict:
        """What loading the model back needs besides the model file (see :mod:`hepdask.bundle`),
        and the parameters it was really trained with."""
        return {"best_iteration": self.best_iteration, "params": self.params, "notes": self.notes}

    @classmethod
    def load(cls, directory: str | Path, info: dict, feature_names: tuple[str, ...]
             ) -> XGBoostModel:
        booster = xgboost.Booster(model_file=str(Path(directory) / cls.filename))
        return cls(booster, feature_names, info.get("params", {}),
                   best_iteration=info["best_iteration"], notes=info.get("notes", []))

    def _iteration_range(self) -> tuple[int, int]:
        return (0, self.best_iteration + 1) if self.best_iteration is not None else (0, 0)

    def importance(self) -> dict[str, float]:
        """Total gain per feature (features never used in a split are absent)."""
        gain = self.booster.get_score(importance_type="total_gain")
        return {name: gain[_xgb_name(name)] for name in self.feature_names if _xgb_name(name) in gain}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / self.filename
        with atomic_path(path) as tmp:
            self.booster.save_model(tmp)
        return path


def train_xgboost(client, features: Features, config: XGBoostConfig, n_classes: int = 2, *,
                  on_round: Callable[[int, int, dict[str, float]], None] | None = None,
                  retries: int = 2, timeout: float = 600.0, device: str = "cpu") -> XGBoostModel:
    """Train on ``features.train``, early-stopping on ``features.validation`` when it has events.

    With more than two classes the objective becomes ``multi:softprob`` and the scores have
    one column per class. The train and validation weights are the event weights times one
    factor per class (see :mod:`hepdask.weights`): they average 1, and with
    ``scale_pos_weight = "auto"`` every class carries the same total weight, while a number
    multiplies the signal's weights relative to the background's (in the factors, not as
    XGBoost's own ``scale_pos_weight``, so that the validation metrics weigh the events as
    training does). ``on_round(round, rounds, metrics)`` is called after every boosting
    round, on the worker that trains rank 0 (so it must pickle, like
    :meth:`hepdask.progress.Channel.step`). A lost worker restarts training from the last
    copy of the booster, up to ``retries`` times; no round for ``timeout`` seconds counts as
    a lost worker (see :mod:`hepdask.train.recovery`). ``device`` ("cpu" or "cuda", see
    :mod:`hepdask.devices`) is XGBoost's ``device`` parameter, whatever the params say.
    """
    if client is None:
        raise HepdaskError(
            "The xgboost engine needs a distributed Client: pass client=... or create one "
            "(e.g. with hepdask.cluster.connect) before training."
        )
    params, num_boost_round, notes = xgboost_params(config, n_classes)
    if params.get("device", device) != device:
        notes.append(f"device {device} (train.device) instead of {params['device']}")
        log.info("XGBoost device: %s", notes[-1])
    params["device"] = device
    plan = training_workers(client, config, device, features)
    if plan.nthread is not None and "nthread" not in params and "n_jobs" not in params:
        params["nthread"] = plan.nthread
    train, valid = features.train, features.validation
    factors = _class_factors(client, train, config, n_classes)
    weights = {name: _scaled(arrays, factors, config.use_weights)
               for name, arrays in (("train", train), ("validation", valid))}
    names = [_xgb_name(n) for n in features.names]

    def matrices():
        dtrain = dxgb.DaskQuantileDMatrix(
            client, train.X, train.y, weight=weights["train"],
            feature_names=names,
        )
        evals = [(dtrain, "train")]
        if len(valid):
            dvalid = dxgb.DaskQuantileDMatrix(
                client, valid.X, valid.y, weight=weights["validation"],
                feature_names=names, ref=dtrain,
            )
            evals.append((dvalid, "validation"))
        return dtrain, evals

    early = config.early_stopping_rounds if len(valid) else None
    log.info("Training XGBoost on %s: %d events, %d features, %d classes, up to %d rounds",
             device, len(train), len(names), n_classes, num_boost_round)
    try:
        booster, history = train_resilient(
            client, matrices, (train, valid), params, num_boost_round, early_stopping_rounds=early,
            callbacks=[_RoundCallback(on_round, num_boost_round)] if on_round else [],
            retries=retries, timeout=timeout, coll_cfg=_collective_config(client),
            placement=lambda: training_workers(client, config, device, features).workers,
        )
    except xgboost.core.XGBoostError as err:
        raise HepdaskError(
            f"XGBoost refused the training parameters in train.xgboost.params: "
            f"{str(err).splitlines()[0]}. Check the names and values against the XGBoost "
            "parameter documentation."
        ) from None
    best = booster.best_iteration if early else None
    return XGBoostModel(booster, features.names, params, history, best, factors, notes)


class _RoundCallback(xgboost.callback.TrainingCallback):
    """Reports each round's evaluation metrics, from the first rank only."""

    def __init__(self, on_round: Callable, rounds: int):
        super().__init__()
        self.on_round, self.rounds = on_round, rounds

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        if xgboost.collective.get_rank() == 0:
            self.on_round(model.num_boosted_rounds(), self.rounds, {f"{split}-{metric}": values[-1]
                                                   for split, metrics in evals_log.items()
                                                   for metric, values in metrics.items()})
        return False


@dataclass(frozen=True)
class Placement:
    """Where XGBoost trains: ``workers`` (None: every worker) with ``nthread`` threads each
    (None: as many as the worker has)."""

    workers: tuple[str, ...] | None = None
    nthread: int | None = None


#: One training worker per host holds at most this fraction of its memory limit in features.
_HOST_SHARE = 0.4


def training_workers(client, config: XGBoostConfig, device: str, features: Features
                     ) -> Placement:
    """The workers XGBoost trains on (``train.xgboost.workers``).

    ``"per-host"``: where several workers share a host (a local cluster: one single-threaded
    worker per core), one of them trains with all of the host's threads, so that no histogram
    is exchanged between processes of one machine (allreduce); hosts with one worker, every
    GPU worker and features too large for one worker's memory keep a worker each.
    ``"all"``: every worker trains, as ``xgboost.dask`` does by default.
    """
    if config.workers == "all" or device == "cuda":
        return Placement()
    info = client.sync(client.scheduler.identity)["workers"]
    hosts: dict[str, list[str]] = {}
    for address in rank_order(info):
        hosts.setdefault(distributed.comm.get_address_host(address), []).append(address)
    if all(len(workers) == 1 for workers in hosts.values()):
        return Placement()
    size = sum(features[s].matrix.nbytes for s in ("train", "validation"))
    chosen = [workers[0] for workers in hosts.values()]
    limits = [info[w].get("memory_limit") or 0 for w in chosen]
    share = size / len(chosen)
    if any(limit and share > _HOST_SHARE * limit for limit in limits):
        log.info("XGBoost trains on every worker: the features (%.2g GB) do not fit one worker "
                 "per host (%.0f%% of its memory limit at most)", size / 1e9, 100 * _HOST_SHARE)
        return Placement()
    threads = [sum(info[w]["nthreads"] for w in workers) for workers in hosts.values()]
    log.info("XGBoost trains on one worker per host (%s), with %d thread(s) each: the workers of a "
             "host share its cores instead of exchanging histograms between processes "
             "(train.xgboost.workers = \"all\" trains on every worker)", ", ".join(chosen),
             min(threads))
    return Placement(tuple(chosen), min(threads))


def _collective_config(client) -> xgboost.collective.Config | None:
    """Behind a dask-gateway proxy the client's scheduler address is the proxy's, which the
    workers cannot use: start XGBoost's tracker on the scheduler's own host instead."""
    if not client.scheduler.address.startswith("gateway://"):
        return None
    own = client.scheduler_info()["address"]
    return xgboost.collective.Config(tracker_host_ip=distributed.comm.get_address_host(own))


def xgboost_params(config: XGBoostConfig, n_classes: int) -> tuple[dict, int, list[str]]:
    """The booster parameters, number of rounds and notes on what was adapted: from ``config``,
    or from the estimator that ``config.model`` returns, adapted to the number of classes.

    A binary objective that the config sets itself is refused with more than two classes;
    the default one (or an estimator's, which cannot tell) becomes ``multi:softprob``.
    """
    params, rounds = dict(config.params), config.num_boost_round
    explicit = "objective" in params and params != XGBoostConfig().params
    if config.model is not None:
        build = load_function(config.model, "train.xgboost.model")
        estimator = call_function(build, config.model, "train.xgboost.model",
                                  returns="an xgboost.XGBClassifier")
        if not isinstance(estimator, xgboost.XGBModel):
            raise HepdaskError(
                f"train.xgboost.model: {config.model} returned {type(estimator).__name__}, not an "
                "XGBoost estimator; return e.g. xgboost.XGBClassifier(max_depth=6, ...)."
            )
        params = {k: v for k, v in estimator.get_xgb_params().items() if v is not None}
        params.pop("n_jobs", None)
        rounds = estimator.n_estimators or rounds
        explicit = False  # an XGBClassifier always says binary:logistic unless told otherwise
    params.setdefault("tree_method", "hist")
    params.pop("scale_pos_weight", None)  # train.xgboost.scale_pos_weight sets the weights
    objective = params.get("objective", "binary:logistic")
    notes = []
    if n_classes > 2:
        if objective.startswith("binary:") and explicit:
            raise HepdaskError(
                f"train.xgboost.params.objective is {objective!r}, a two-class objective, but "
                f"the labels give {n_classes} classes (0 to {n_classes - 1}). Set objective = "
                "\"multi:softprob\" (one probability per class), or leave objective out to let "
                "hepdask choose it, or label the events 0 and 1 only."
            )
        if objective.startswith("binary:"):
            params["objective"] = "multi:softprob"
            notes.append(f"objective multi:softprob instead of {objective} (not set in the "
                         f"config): the labels give {n_classes} classes")
            log.info("XGBoost objective: %s", notes[-1])
        params["num_class"] = n_classes
        metrics = params.get("eval_metric", [])
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        params["eval_metric"] = [_MULTI_METRICS.get(m, m) for m in metrics]
    elif objective.startswith("multi:"):
        params.setdefault("num_class", 2)
    return params, rounds, notes


_MULTI_METRICS = {"logloss": "mlogloss", "error": "merror"}


def _class_factors(client, train, config: XGBoostConfig, n_classes: int) -> dict[int, float]:
    """The weight factor of each class, from the weights and events of the training split."""
    w = train.w if config.use_weights else da.ones_like(train.y)
    in_class = [train.y == k for k in range(n_classes)]
    sums = dask.compute(*[(w * c).sum(dtype="f8") for c in in_class],
                        *[c.sum() for c in in_class], scheduler=client)
    balance = config.scale_pos_weight == "auto"
    if n_classes > 2 and not balance:
        log.info("train.xgboost.scale_pos_weight is for two classes: not used for %d", n_classes)
    return class_factors(dict(enumerate(sums[:n_classes])), dict(enumerate(sums[n_classes:])),
                         balance=balance, key="train.xgboost.scale_pos_weight = \"auto\"",
                         signal_scale=1.0 if balance or n_classes > 2
                         else float(config.scale_pos_weight))


def _scaled(arrays, factors: dict[int, float], use_weights: bool):
    """The weights of one split times the factor of each event's class."""
    w = arrays.w if use_weights else da.ones_like(arrays.y)
    table = np.array([factors[k] for k in range(len(factors))], dtype=np.float32)
    scale = arrays.y.map_blocks(lambda y: table[y.astype(np.int64)], dtype=np.float32)
    return w * scale


def _signal(scores: np.ndarray) -> np.ndarray:
    """The signal's column of a ``multi:`` objective's scores on two classes."""
    return scores[:, 1] if scores.ndim == 2 and scores.shape[1] == 2 else scores


def _xgb_name(name: str) -> str:
    """XGBoost forbids '[', ']' and '<' in feature names; keep them readable."""
    return name.replace("[", "(").replace("]", ")").replace("<", "lt")
