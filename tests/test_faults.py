"""Faults: a worker killed (SIGKILL) while the specs are computed, while XGBoost trains and while
partitions stream to a central trainer; and runs that repeat to the last bit.

Each test starts its own small cluster of two nanny-supervised worker processes, since it
kills workers (the nanny starts a new one, as in a real deployment).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

import numpy as np
import pytest
from conftest import toy_config
from test_stream import PLAIN

from hepdask import HepdaskError, load_config
from hepdask.dataset import open_dataset
from hepdask.features import build_features, make_layout
from hepdask.pipeline import Pipeline
from hepdask.progress import TOPIC
from hepdask.specs import compute_specs
from hepdask.stream import BatchStream
from hepdask.train import recovery

# Enough rounds (with early stopping on, never triggered) that training lasts a few seconds.
XGBOOST = ["train.xgboost.early_stopping_rounds=500",
           "train.xgboost.params.objective='binary:logistic'",
           "train.xgboost.params.eval_metric=['logloss']", "train.xgboost.params.max_depth=4",
           "train.xgboost.params.eta=0.05", "train.xgboost.params.subsample=0.8",
           "train.xgboost.params.colsample_bytree=0.8"]


@contextlib.contextmanager
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", memory_limit="2GiB") as local, \
            Client(local) as client:
        yield client


def kill_one_worker(client, sig: int = signal.SIGKILL, *, lowest: bool = False) -> int:
    """Send ``sig`` to the worker process of the highest name (the lowest: the one that trains
    XGBoost on a one-host cluster); returns its pid."""
    pids = client.run(os.getpid)
    names = {address: info["name"] for address, info in client.scheduler_info()["workers"].items()}
    address = (min if lowest else max)(pids, key=lambda a: str(names[a]))
    os.kill(pids[address], sig)
    return pids[address]


class KillAtRound(threading.Thread):
    """Kills a worker (or sends it ``sig``) when the progress channel reports training round
    ``at``, then again at round ``2 * at``, ... ``times`` times in all."""

    def __init__(self, client, at: int, times: int = 1, sig: int = signal.SIGKILL, *,
                 lowest: bool = False):
        super().__init__(daemon=True)
        self.client, self.at, self.times, self.sig = client, at, times, sig
        self.lowest = lowest
        self.killed: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        seen = 0
        while not self._halt.is_set() and len(self.killed) < self.times:
            steps = [m for _, m in self.client.get_events(TOPIC) if m.get("kind") == "step"]
            fresh, seen = steps[seen:], len(steps)
            if any(m["step"] >= self.at * (len(self.killed) + 1) for m in fresh):
                self.killed.append(kill_one_worker(self.client, self.sig, lowest=self.lowest))
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join()
        for pid in self.killed:  # a stopped worker the run did not get rid of
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def __enter__(self):
        self.start()
        return self


def xgboost_run(tmp_path, data_dir, client, name: str, *, rounds: int = 80,
                retries: int | None = None, timeout: float | None = None,
                workers: str = "all"):
    # workers="all": every worker trains, as on a cluster of several hosts, where a lost one
    # breaks the allreduce of the others
    overrides = [f"name='{name}'", f"train.xgboost.num_boost_round={rounds}", *XGBOOST,
                 f"train.xgboost.workers='{workers}'"]
    if retries is not None:
        overrides.append(f"train.retries={retries}")
    if timeout is not None:
        overrides.append(f"train.timeout={timeout}")
    pipeline = Pipeline(load_config(toy_config(tmp_path, data_dir), overrides), client=client,
                        progress=False)
    return pipeline, pipeline.run(client=client)


class Errors(logging.Handler):
    """The ERROR records of a logger, kept."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory, toy_data):
    """Two runs on fresh clusters, no fault: the reference, and a check that it repeats; with
    the errors the scheduler (in this process) logged meanwhile."""
    tmp = tmp_path_factory.mktemp("undisturbed")
    runs, errors = [], Errors()
    logging.getLogger("distributed").addHandler(errors)
    try:
        for name in ("first", "second"):
            with cluster() as client:
                runs.append(xgboost_run(tmp, toy_data["dir"], client, name))
    finally:
        logging.getLogger("distributed").removeHandler(errors)
    runs.append(errors.records)
    return runs


def test_an_undisturbed_run_makes_the_scheduler_log_no_error(undisturbed):
    """The watch on the rounds never waits on a Variable not yet set (the scheduler logs a
    traceback for each such wait that times out: seen on the terminal of every run)."""
    *_, errors = undisturbed
    assert not errors, [r.getMessage() for r in errors]


def test_identical_runs_give_the_same_model_bytes(undisturbed):
    (first, m1), (second, m2), _ = undisturbed
    a = (first.run_dir / "model.ubj").read_bytes()
    b = (second.run_dir / "model.ubj").read_bytes()
    assert m1["auc"] == m2["auc"] and m1["ams"] == m2["ams"]
    assert a == b
    assert m1["seeds"] == {"split": 2014, "xgboost": 0}


def test_a_worker_killed_during_xgboost_training_is_survived(tmp_path, toy_data, undisturbed,
                                                             monkeypatch):
    monkeypatch.setattr(recovery, "CHECKPOINT_SECONDS", 0.0)
    (reference, expected), *_ = undisturbed
    with cluster() as client, KillAtRound(client, at=25) as killer:
        pipeline, metrics = xgboost_run(tmp_path, toy_data["dir"], client, "killed")
    assert len(killer.killed) == 1
    booster = pipeline._model.booster
    assert booster.num_boosted_rounds() == 80
    history = pipeline._model.history
    assert {len(v) for split in history.values() for v in split.values()} == {80}
    before = reference._model.history["validation"]["logloss"][:25]
    assert history["validation"]["logloss"][:25] == before  # the rounds before the kill, kept
    assert abs(metrics["auc"] - expected["auc"]) < 0.005
    log = (pipeline.run_dir / "run.log").read_text()
    assert "lost the worker" in log and "continuing from round" in log


def test_the_one_worker_training_on_its_host_killed_is_survived(tmp_path, toy_data, monkeypatch):
    """One worker per host trains (the default on one machine): killing it ends the training
    with no peer left to report; the nanny's new worker gets the blocks and continues."""
    monkeypatch.setattr(recovery, "CHECKPOINT_SECONDS", 0.0)
    with cluster() as client, KillAtRound(client, at=25, lowest=True) as killer:
        pipeline, metrics = xgboost_run(tmp_path, toy_data["dir"], client, "alone",
                                        workers="per-host")
    assert len(killer.killed) == 1
    assert pipeline._model.booster.num_boosted_rounds() == 80
    assert pipeline._model.params["nthread"] == 2 and metrics["auc"] > 0.8
    log = (pipeline.run_dir / "run.log").read_text()
    assert "lost the worker" in log and "continuing from round" in log


def test_a_frozen_worker_is_taken_as_lost_after_train_timeout(tmp_path, toy_data, undisturbed,
                                                              monkeypatch):
    """SIGSTOP: the worker neither answers nor leaves, and XGBoost would wait for it."""
    monkeypatch.setattr(recovery, "CHECKPOINT_SECONDS", 0.0)
    (_, expected), *_ = undisturbed
    with cluster() as client, KillAtRound(client, at=25, sig=signal.SIGSTOP):
        pipeline, metrics = xgboost_run(tmp_path, toy_data["dir"], client, "frozen",
                                        timeout=3)
    assert pipeline._model.booster.num_boosted_rounds() == 80
    assert abs(metrics["auc"] - expected["auc"]) < 0.005
    assert "No XGBoost round for 3 s" in (pipeline.run_dir / "run.log").read_text()


def test_losing_workers_more_often_than_retries_allow_is_one_clear_error(tmp_path, toy_data,
                                                                          monkeypatch):
    monkeypatch.setattr(recovery, "CHECKPOINT_SECONDS", 0.0)
    with cluster() as client, KillAtRound(client, at=15, times=2), \
            pytest.raises(HepdaskError) as err:
        xgboost_run(tmp_path, toy_data["dir"], client, "exhausted", retries=1)
    message = str(err.value)
    assert "lost a worker 2 times" in message and "train.retries = 1" in message
    assert "\n" not in message


def test_a_worker_killed_while_partitions_stream_loses_and_repeats_no_event(tmp_path, toy_data):
    """Batches depend only on (seed, epoch, index): an epoch with a worker killed after its
    third batch (blocks in flight or held there are recomputed by Dask) must be the same."""
    config = load_config(toy_config(tmp_path, toy_data["dir"]), ["data.step_size=500"])
    with cluster() as client:
        dataset = open_dataset(config)
        specs = compute_specs(dataset, client=client)
        features = build_features(dataset, make_layout(dataset, specs, config.features), specs)

        def stream() -> BatchStream:
            return BatchStream(client, features, "train", PLAIN, batch_size=256, prefetch=4,
                               seed=3)

        reference = np.concatenate([X for X, _, _ in stream().epoch(0)])
        batches = []
        for index, (X, _, _) in enumerate(stream().epoch(0)):
            batches.append(X)
            if index == 2:
                kill_one_worker(client)
    seen = np.concatenate(batches)
    assert len(seen) == len(features.train) == len(reference)
    np.testing.assert_array_equal(seen, reference)


def summary(specs) -> dict:
    """Everything the specs say, but when they were made."""
    return {"branches": {k: v.to_dict() for k, v in specs.branches.items()},
            "samples": specs.samples, "classes": specs.classes, "partitions": specs.partitions,
            "read_errors": specs.read_errors}


def test_a_worker_killed_while_the_specs_are_computed_changes_nothing(tmp_path, toy_data):
    config = load_config(toy_config(tmp_path, toy_data["dir"]), ["data.step_size=300"])
    with cluster() as client:
        dataset = open_dataset(config)
        reference = summary(compute_specs(dataset, client=client))
        killed = []

        def kill_when_busy() -> None:
            deadline = time.monotonic() + 30
            while not killed and time.monotonic() < deadline:
                if any(client.processing().values()):
                    killed.append(kill_one_worker(client))

        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        specs = summary(compute_specs(dataset, client=client))
        killer.join()
    assert killed
    assert specs == reference


def test_early_stopping_continues_from_a_copy_as_if_uninterrupted():
    """The state replayed from the metrics so far stops a continued run where an
    uninterrupted one stops, with the same best iteration."""
    import xgboost

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 5))
    y = (X[:, 0] + rng.normal(scale=1.5, size=2000) > 0).astype(int)
    train, valid = xgboost.DMatrix(X[:1000], y[:1000]), xgboost.DMatrix(X[1000:], y[1000:])
    params = {"objective": "binary:logistic", "eta": 0.05, "max_depth": 4,
              "eval_metric": "logloss"}
    evals = [(train, "train"), (valid, "validation")]

    def fit(rounds: int, history: dict, **kwargs) -> xgboost.Booster:
        return xgboost.train(params, train, rounds, evals=evals, evals_result=history,
                             verbose_eval=False, **kwargs)

    whole = fit(500, {}, early_stopping_rounds=5)
    taken = whole.best_iteration + 3  # the copy is taken two rounds into the final stall
    copy_history: dict = {}
    copy = fit(taken, copy_history, early_stopping_rounds=5)
    resumed = fit(500 - taken, {}, xgb_model=copy,
                  callbacks=[recovery._replayed_early_stopping(5, copy_history)])
    assert resumed.num_boosted_rounds() == whole.num_boosted_rounds() < 500
    assert resumed.best_iteration == whole.best_iteration


@pytest.mark.parametrize("override, key", [("train.retries=-1", "train.retries"),
                                           ("train.timeout=0", "train.timeout")])
def test_bad_retries_or_timeout_is_one_clear_error(tmp_path, toy_data, override, key):
    with pytest.raises(HepdaskError, match=key):
        load_config(toy_config(tmp_path, toy_data["dir"]), [override])
