"""Where XGBoost trains: on a host with several workers, one of them with all the host's threads
(no histogram exchange between processes of one machine); every worker when asked, on GPUs, and
when the features would not fit one worker."""

from __future__ import annotations

import logging

import pytest
from conftest import toy_config

from hepdask import HepdaskError, Pipeline, load_config
from hepdask.train import xgboost as engine


def _run(tmp_path, toy_data, client, *overrides: str) -> dict:
    path = toy_config(tmp_path, toy_data["dir"])
    config = load_config(path, ["train.xgboost.num_boost_round=30", *overrides])
    return Pipeline(config, client=client, progress=False).run()


def test_one_worker_per_host_trains_with_the_hosts_threads(tmp_path, toy_data, client, caplog):
    caplog.set_level(logging.INFO, logger="hepdask")
    for sub in ("all", "fresh"):
        (tmp_path / sub).mkdir()
    metrics = _run(tmp_path, toy_data, client)
    workers = client.scheduler_info()["workers"]
    assert len(workers) == 2  # one host (127.0.0.1), two single-threaded workers
    assert metrics["model"]["params"]["nthread"] == 2 and metrics["auc"] > 0.8
    assert "trains on one worker per host" in caplog.text
    # The features go straight to the worker that trains (scoring may copy them later). A
    # split seed of its own gives blocks that no other run has on the cluster.
    fresh = Pipeline(load_config(toy_config(tmp_path / "fresh", toy_data["dir"]),
                                 ["split.seed=97"]), client=client, progress=False)
    plan = engine.training_workers(client, fresh.config.train.xgboost, "cpu", fresh.features())
    assert len(plan.workers) == 1 and plan.nthread == 2
    persisted = fresh.features().persist(client=client, workers=plan.workers)
    for split in ("train", "validation", "test"):
        holders = client.who_has(persisted[split].matrix)
        assert {w for ws in holders.values() for w in ws} == set(plan.workers)

    every = _run(tmp_path / "all", toy_data, client, "train.xgboost.workers='all'")
    assert "nthread" not in every["model"]["params"] and every["auc"] > 0.8


def test_features_too_large_for_one_worker_train_on_every_worker(tmp_path, toy_data, client,
                                                                 monkeypatch):
    monkeypatch.setattr(engine, "_HOST_SHARE", 1e-9)
    metrics = _run(tmp_path, toy_data, client)
    assert "nthread" not in metrics["model"]["params"]


def test_a_gpu_run_keeps_a_worker_per_gpu(client, toy_data, tmp_path):
    path = toy_config(tmp_path, toy_data["dir"])
    pipe = Pipeline(load_config(path), client=client, progress=False)
    plan = engine.training_workers(client, pipe.config.train.xgboost, "cuda", pipe.features())
    assert plan == engine.Placement()


def test_an_unknown_workers_value_is_one_paragraph(tmp_path, toy_data):
    path = toy_config(tmp_path, toy_data["dir"])
    with pytest.raises(HepdaskError, match=r"train\.xgboost\.workers is 'one'.*\"per-host\""):
        load_config(path, ["train.xgboost.workers='one'"])
