"""Faults: a worker killed (SIGKILL) while the specs are computed, while XGBoost trains and while
partitions stream to a central trainer; and runs that repeat to the last bit.

Each test starts its own small cluster of two nanny-supervised worker processes, since it
kills workers (the nanny starts a new one, as in a real deployment).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import pytest
from conftest import toy_config

from hepdask import HepdaskError, load_config
from hepdask.pipeline import Pipeline
from hepdask.progress import TOPIC
from hepdask.train import recovery

# Enough rounds (with early stopping on, never triggered) that training lasts a few seconds.
XGBOOST = ["train.xgboost.early_stopping_rounds=500", "train.xgboost.params.max_depth=4",
           "train.xgboost.params.eta=0.05", "train.xgboost.params.subsample=0.8",
           "train.xgboost.params.colsample_bytree=0.8"]


@contextlib.contextmanager
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit="2GiB") as local, \
            Client(local) as client:
        yield client


def kill_one_worker(client) -> int:
    """SIGKILL the worker process of the highest name; returns its pid."""
    pids = client.run(os.getpid)
    names = {address: info["name"] for address, info in client.scheduler_info()["workers"].items()}
    address = max(pids, key=lambda a: str(names[a]))
    os.kill(pids[address], signal.SIGKILL)
    return pids[address]


class KillAtRound(threading.Thread):
    """Kills a worker when the progress channel reports training round ``at``; ``times``
    times in all, at ``at`` of each attempt's rounds (the round count restarts from the copy)."""

    def __init__(self, client, at: int, times: int = 1):
        super().__init__(daemon=True)
        self.client, self.at, self.times = client, at, times
        self.killed: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        seen = 0
        while not self._halt.is_set() and len(self.killed) < self.times:
            steps = [m for _, m in self.client.get_events(TOPIC) if m.get("kind") == "step"]
            fresh, seen = steps[seen:], len(steps)
            if any(m["step"] >= self.at * (len(self.killed) + 1) for m in fresh):
                self.killed.append(kill_one_worker(self.client))
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join()

    def __enter__(self):
        self.start()
        return self


def xgboost_run(tmp_path, data_dir, client, name: str, *, rounds: int = 150,
                retries: int | None = None):
    overrides = [f"name='{name}'", f"train.xgboost.num_boost_round={rounds}", *XGBOOST]
    if retries is not None:
        overrides.append(f"train.retries={retries}")
    pipeline = Pipeline(load_config(toy_config(tmp_path, data_dir), overrides), client=client,
                        progress=False)
    return pipeline, pipeline.run(client=client)


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory, toy_data):
    """Two runs on fresh clusters, no fault: the reference, and a check that it repeats."""
    tmp = tmp_path_factory.mktemp("undisturbed")
    runs = []
    for name in ("first", "second"):
        with cluster() as client:
            runs.append(xgboost_run(tmp, toy_data["dir"], client, name))
    return runs


def test_identical_runs_give_the_same_model_bytes(undisturbed):
    (first, m1), (second, m2) = undisturbed
    a = (first.run_dir / "model.ubj").read_bytes()
    b = (second.run_dir / "model.ubj").read_bytes()
    assert m1["auc"] == m2["auc"] and m1["ams"] == m2["ams"]
    assert a == b
    assert m1["seeds"] == {"split": 2014, "xgboost": 0}


def test_a_worker_killed_during_xgboost_training_is_survived(tmp_path, toy_data, undisturbed,
                                                             monkeypatch):
    monkeypatch.setattr(recovery, "CHECKPOINT_SECONDS", 0.0)
    (_, expected), _ = undisturbed
    with cluster() as client, KillAtRound(client, at=40) as killer:
        pipeline, metrics = xgboost_run(tmp_path, toy_data["dir"], client, "killed")
    assert len(killer.killed) == 1
    booster = pipeline._model.booster
    assert booster.num_boosted_rounds() == 150
    history = pipeline._model.history
    assert {len(v) for split in history.values() for v in split.values()} == {150}
    assert abs(metrics["auc"] - expected["auc"]) < 0.005
    log = (pipeline.run_dir / "run.log").read_text()
    assert "lost the worker" in log and "continuing from round" in log


def test_losing_workers_more_often_than_retries_allow_is_one_clear_error(tmp_path, toy_data,
                                                                          monkeypatch):
    monkeypatch.setattr(recovery, "CHECKPOINT_SECONDS", 0.0)
    with cluster() as client, KillAtRound(client, at=20, times=2), \
            pytest.raises(HepdaskError) as err:
        xgboost_run(tmp_path, toy_data["dir"], client, "exhausted", retries=1)
    message = str(err.value)
    assert "lost a worker 2 times" in message and "train.retries = 1" in message
    assert "\n" not in message
