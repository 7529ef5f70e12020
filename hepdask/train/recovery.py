"""Distributed XGBoost training that survives the loss of a worker.

``xgboost.dask`` cannot go on when a worker dies mid-training: the dead worker's task is
rescheduled and fails ("Resilience is not yet supported"), or, where it cannot be, training
waits forever (dmlc/xgboost#9419, #9420). So the worker of rank 0 reports the rounds done (a
heartbeat) and, every :data:`CHECKPOINT_SECONDS`, sends a copy of the booster with the metrics
so far (a Dask ``Variable`` on the scheduler holds the latest). When a worker is lost, i.e.
training fails while a worker left, or no round ends for ``timeout`` seconds, the client
waits for the cluster to have its workers again, rebuilds the matrices from the persisted
partitions (Dask recomputes those lost with the worker from their graph) and continues from
the copy for the remaining rounds, with the early-stopping state replayed from the metrics
so far: the model has the requested rounds and the history has every round once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import distributed
import numpy as np
import xgboost
import xgboost.dask as dxgb

from ..errors import HepdaskError, first_line
from ..features import SplitArrays, placed
from ..progress import persist

__all__ = ["CHECKPOINT_SECONDS", "Checkpoint", "train_resilient"]

log = logging.getLogger("hepdask")

CHECKPOINT_SECONDS = 5.0  # at most this much training is redone after a lost worker
_POLL_SECONDS = 0.5
_RELEASE_SECONDS = 30.0  # an interrupted training has this long to end and free its workers
_BEAT_SECONDS = 1.0
_LEFT_GRACE_SECONDS = 3.0  # for the scheduler to see a worker go after training failed

History = dict[str, dict[str, list[float]]]  # {"train": {"logloss": [...]}, ...}


@dataclass
class Checkpoint:
    """The booster after ``rounds`` rounds and the metrics of those rounds."""

    rounds: int = 0
    booster: bytes | None = None
    history: History = field(default_factory=dict)

    def model(self) -> xgboost.Booster | None:
        return xgboost.Booster(model_file=bytearray(self.booster)) if self.booster else None


def train_resilient(client, matrices: Callable[[], tuple], splits: Sequence[SplitArrays],
                    params: dict, rounds: int, *, early_stopping_rounds: int | None,
                    callbacks: list, retries: int, timeout: float,
                    coll_cfg: xgboost.collective.Config | None,
                    placement: Callable[[], Sequence[str] | None] = lambda: None,
                    ) -> tuple[xgboost.Booster, History]:
    """``xgboost.dask.train`` for ``rounds`` rounds, restarted from the last copy of the
    booster up to ``retries`` times when a worker is lost (see the module docstring).

    ``matrices()`` builds ``(dtrain, evals)`` from ``splits``; the last of ``evals`` is the
    one early stopping watches. Each attempt places the splits' blocks on the workers present
    with :func:`~hepdask.features.placed` (after a lost worker, Dask recomputed its blocks on
    the others), on those of ``placement()`` when it names them (the workers that train).
    Returns the booster and the per-round metrics.
    """
    run = uuid.uuid4().hex[:12]
    beat = distributed.Variable(f"hepdask-round-{run}", client=client)
    saved = distributed.Variable(f"hepdask-checkpoint-{run}", client=client)
    # Set before any read: the scheduler logs a traceback for every read of an unset Variable
    # that times out, which the watch would do twice a second until the first round.
    beat.set(0)
    saved.set(None)
    # A backstop for a collective operation waiting on a peer that is gone without a word;
    # the watch on the rounds (_watched) acts first.
    coll_cfg = dataclasses.replace(coll_cfg or xgboost.collective.Config(),
                                   timeout=max(1, int(2 * timeout)))
    expected = len(_workers(client))
    checkpoint, lost = Checkpoint(), []
    try:
        for _ in range(retries + 1):
            workers = _workers(client)
            with placed(client, splits, workers=placement()):
                dtrain, evals = matrices()
            steps = list(callbacks)
            if early_stopping_rounds:
                steps.append(_replayed_early_stopping(early_stopping_rounds, checkpoint.history))
            steps.append(_Checkpointer(beat.name, saved.name, checkpoint.history))
            try:
                output = _watched(client, beat, workers, timeout, functools.partial(
                    dxgb.train, client, params, dtrain,
                    num_boost_round=rounds - checkpoint.rounds, evals=evals,
                    verbose_eval=False, callbacks=steps, xgb_model=checkpoint.model(),
                    coll_cfg=coll_cfg))
            except Exception as err:  # a lost worker, or a genuine error when none left
                left = _left(client, workers)
                if not left:
                    raise
                checkpoint = _latest(saved, checkpoint)
                dtrain = evals = None  # free the failed attempt's matrices, which a
                gc.collect()  # traceback cycle holds, before their blocks move
                lost.append(f"{', '.join(sorted(left))} ({type(err).__name__}: {first_line(err)})")
                log.warning("XGBoost training lost the worker %s; %s", lost[-1],
                            f"continuing from round {checkpoint.rounds}"
                            if len(lost) <= retries else "no retry left (train.retries)")
                if len(lost) <= retries:
                    _wait_for_workers(client, expected, timeout)
                    _replace(client, splits, placement())
                continue
            return output["booster"], _joined(checkpoint.history, output["history"])
    finally:
        for variable in (beat, saved):
            with contextlib.suppress(Exception):
                variable.delete()
    raise HepdaskError(
        f"XGBoost training lost a worker {len(lost)} time{'s' * (len(lost) > 1)} and stopped "
        f"at round {checkpoint.rounds} of {rounds}: {'; '.join(lost)}. train.retries = {retries} "
        "allows that many restarts from the last copy of the booster. Check why the workers "
        "die (their logs on the dashboard; memory: cluster.memory_limit) or raise "
        "train.retries."
    )


class _Checkpointer(xgboost.callback.TrainingCallback):
    """On rank 0: the rounds done, every second or so, and a copy of the booster with the
    metrics so far (those of earlier attempts first), every :data:`CHECKPOINT_SECONDS`."""

    def __init__(self, beat: str, saved: str, history: History):
        super().__init__()
        self.beat, self.saved, self.history = beat, saved, history
        self.every = CHECKPOINT_SECONDS
        self._last = self._beat = 0.0

    def before_training(self, model):
        self._last = self._beat = time.monotonic()
        return model

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        if xgboost.collective.get_rank() != 0:
            return False
        done, now = model.num_boosted_rounds(), time.monotonic()
        if now - self._last >= self.every:
            history = _joined(self.history, evals_log)
            distributed.Variable(self.saved).set(
                {"rounds": done, "booster": bytes(model.save_raw("ubj")), "history": history})
            self._last = now
        if now - self._beat >= min(self.every, _BEAT_SECONDS):  # one round trip, not per round
            distributed.Variable(self.beat).set(done)
            self._beat = now
        return False


def _replayed_early_stopping(rounds: int, history: History) -> xgboost.callback.EarlyStopping:
    """XGBoost's early stopping, in the state it had after the rounds of ``history``: fed
    those rounds' metrics again (the booster copy already carries the best iteration)."""
    stopping = xgboost.callback.EarlyStopping(rounds=rounds)
    n = min((len(v) for metrics in history.values() for v in metrics.values()), default=0)
    seen: History = {name: {m: [] for m in metrics} for name, metrics in history.items()}
    for epoch in range(n):
        for name, metrics in history.items():
            for metric, values in metrics.items():
                seen[name][metric].append(values[epoch])
        stopping.after_iteration(_NoModel(), epoch, seen)
    return stopping


class _NoModel:
    """Stands for the booster while replaying: the copy already has the best iteration."""

    def set_attr(self, **attrs) -> None:
        pass


def _watched(client, beat, workers: set[str], timeout: float, call: Callable):
    """``call()`` in a thread, waited for here; when no round ends for ``timeout`` seconds,
    the training workers are restarted (which ends ``call`` with an error) and it raises."""
    result: concurrent.futures.Future = concurrent.futures.Future()

    def target() -> None:
        try:
            result.set_result(call())
        except BaseException as err:  # handed to the waiting thread
            result.set_exception(err)

    threading.Thread(target=target, name="hepdask-xgboost", daemon=True).start()
    seen, since = None, time.monotonic()
    try:
        while True:
            with contextlib.suppress(concurrent.futures.TimeoutError):
                return result.result(timeout=_POLL_SECONDS)
            done = _value(beat)
            if done != seen:
                seen, since = done, time.monotonic()
            elif time.monotonic() - since > timeout:
                break
    except BaseException:  # Ctrl-C or SIGTERM (a cancelled service job) while it trains
        if client.cluster is None:
            _free_shared_workers(client, workers, result, timeout)
        raise
    stuck = sorted(workers & _workers(client))
    log.warning("No XGBoost round for %.0f s: restarting the workers %s", timeout, stuck)
    with contextlib.suppress(Exception):
        client.restart_workers(stuck, timeout=timeout)
    with contextlib.suppress(Exception):
        result.result(timeout=timeout)
    raise TimeoutError(f"no boosting round for {timeout:.0f} s (train.timeout)")


def _free_shared_workers(client, workers: set[str], result: concurrent.futures.Future,
                         timeout: float) -> None:
    """Leave a cluster that outlives this run (a scheduler address, e.g. the service's) free
    for the next training. xgboost.dask holds a MultiLock on its workers while it trains,
    released when its training ends, and its collective threads keep running on the workers:
    abandoned, they would make the next training there wait forever. Restarting the workers
    ends the training with an error, so it releases the lock on its way out."""
    training = sorted(workers & _workers(client))
    log.warning("Interrupted during XGBoost training: restarting the workers %s, so that the "
                "cluster's next training finds them free", ", ".join(training))
    threading.Thread(target=client.restart_workers, args=(training,), daemon=True,
                     kwargs={"timeout": timeout, "raise_for_error": False}).start()
    with contextlib.suppress(BaseException):
        result.result(timeout=_RELEASE_SECONDS)


def _value(variable):
    try:
        return variable.get(timeout=0.1)
    except TimeoutError:
        return None


def _latest(saved, checkpoint: Checkpoint) -> Checkpoint:
    """The copy rank 0 sent last, if it is further than ``checkpoint``."""
    value = _value(saved)
    if value is None or value["rounds"] <= checkpoint.rounds:
        return checkpoint
    return Checkpoint(value["rounds"], value["booster"], value["history"])


def _left(client, workers: set[str]) -> set[str]:
    """Those of ``workers`` no longer in the cluster (waiting a little for the scheduler to
    notice one that just died)."""
    deadline = time.monotonic() + _LEFT_GRACE_SECONDS
    while True:
        left = workers - _workers(client)
        if left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _replace(client, splits: Sequence[SplitArrays], workers: Sequence[str] | None) -> None:
    """Copy the blocks of ``splits`` to the workers :func:`placed` gives them now (Dask
    recomputed those of the lost worker on the others, before it was back) and let the splits
    hold the copies, under new keys, so the originals are freed: the workers share the data
    again and the next matrices are built where it is."""
    moving = [split for split in splits if len(split)]
    for split in moving:
        split.matrix = split.matrix.map_blocks(np.asarray, dtype=split.matrix.dtype,
                                               name=f"placed-{uuid.uuid4().hex}")
    with placed(client, moving, workers=workers):
        copies = persist(client, [split.matrix for split in moving])
    for split, matrix in zip(moving, copies, strict=True):
        split.matrix = matrix


def _workers(client) -> set[str]:
    """The workers' addresses now (``client.scheduler_info()`` may be seconds old)."""
    return set(client.sync(client.scheduler.identity)["workers"])


def _wait_for_workers(client, n: int, timeout: float) -> None:
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError:
        have = len(_workers(client))
        raise HepdaskError(
            f"XGBoost training lost a worker and the cluster has {have} of its {n} workers "
            f"after {timeout:.0f} s (train.timeout): training needs them back to continue. "
            "Check the cluster (its dashboard and worker logs), or start it with workers "
            "that a nanny restarts."
        ) from None


def _joined(first: History, then) -> History:
    """The metrics of ``first``'s rounds followed by those of ``then``."""
    names = list(first) + [n for n in then if n not in first]
    return {name: {metric: [*first.get(name, {}).get(metric, []),
                            *(float(v) for v in then.get(name, {}).get(metric, []))]
                   for metric in {**first.get(name, {}), **then.get(name, {})}}
            for name in names}


