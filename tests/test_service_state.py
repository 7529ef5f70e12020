"""The service's job store (a real SQLite file) and runner (real ``hepdask run`` subprocesses on a
real local cluster): jobs succeed only with their bundle, fail with hepdask's paragraph, queue,
cancel, and survive a service that died mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from hepdask.bundle import Bundle
from hepdask.errors import RequestError
from hepdask.higgsml import prepare
from hepdask.service.runner import Runner
from hepdask.service.settings import ServiceSettings
from hepdask.service.state import Store


@pytest.fixture(scope="module")
def scheduler():
    """One small cluster that every job of this module runs on, as the service's would be."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", memory_limit="2GiB") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("higgs")
    prepare(directory, download=False, synthetic_events=20_000, events_per_file=10_000)
    return directory


def config_text(data: Path, *, branches: str = '"DER_*", "PRI_*"', rounds: int = 10) -> str:
    """A small HiggsML run (configs/higgs.toml's shape), its paths absolute as the app makes them."""
    return textwrap.dedent(f"""
        name = "higgs"
        output = "runs"

        [prepare]
        dataset = "higgs"
        directory = "{data}"
        download = false
        synthetic_events = 20_000
        events_per_file = 10_000

        [data]
        tree = "events"
        step_size = 10_000
        sentinel = -999.0

        [[samples]]
        name = "signal"
        files = ["{data}/signal_*.root"]
        label = 1
        weight = "Weight"

        [[samples]]
        name = "background"
        files = ["{data}/background_*.root"]
        label = 0
        weight = "Weight"

        [features]
        branches = [{branches}]

        [train.xgboost]
        num_boost_round = {rounds}

        [train.xgboost.params]
        objective = "binary:logistic"
        tree_method = "hist"
        max_depth = 3
        eval_metric = ["logloss"]

        [cluster]
        dashboard_address = "127.0.0.1:0"
    """)


def make_runner(state: Path, scheduler: str, *, max_jobs: int = 1) -> Runner:
    settings = ServiceSettings(state=state, max_jobs=max_jobs)
    return Runner(Store(settings.database_url), settings, grace=5.0,
                  cluster_args=lambda job: ["--scheduler", scheduler])


def submit(runner: Runner, name: str, text: str, cwd: Path | None = None):
    cwd = cwd or runner.settings.state
    job = runner.store.add_job(name=name, owner="alice", kind="config", hints={}, cwd=str(cwd))
    return runner.submit(job, text)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def state_of(runner: Runner, job_id: str) -> str:
    return runner.store.get(job_id).state


def group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is in process group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


# -- the store ----------------------------------------------------------------------------------


def test_store_keeps_jobs_and_uploads_in_its_file_and_takes_updates_from_threads(tmp_path):
    url = f"sqlite:///{tmp_path / 'state' / 'service.db'}"
    store = Store(url)
    first = store.add_job(name="higgs", owner="alice", kind="config", hints={"cpus": "2"},
                          cwd="/x")
    assert first.job_id == f"higgs_{first.id}" and first.state == "queued"
    assert first.hints == {"cpus": "2"} and first.summary == {} and not first.resume

    def work(n: int) -> None:
        job = store.add_job(name=f"t{n}", owner="bob", kind="mlaas4hep", hints={}, cwd="/y")
        for attempt in range(1, 21):
            store.update(job.job_id, attempts=attempt, summary={"n": n, "attempt": attempt})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.add_upload(owner="bob", name="wf", path="/a", size=1)
    store.add_upload(owner="bob", name="wf", path="/b", size=2)  # replaces the first

    again = Store(url)  # a restarted service
    bobs = again.jobs("bob")
    assert len(bobs) == 8 and len({j.job_id for j in bobs}) == 8
    assert [j.id for j in bobs] == sorted((j.id for j in bobs), reverse=True)  # newest first
    assert all(j.attempts == 20 and j.summary["attempt"] == 20 for j in bobs)
    assert [j.job_id for j in again.jobs()][-1] == first.job_id
    assert again.next_queued().job_id == first.job_id  # oldest first
    assert [(u["name"], u["path"], u["size"]) for u in again.uploads("bob")] == [("wf", "/b", 2)]
    assert again.uploads("alice") == []
    again.delete_upload("bob", "wf")
    again.delete(first.job_id)
    assert again.get(first.job_id) is None and again.uploads("bob") == []
    assert again.engine.connect().exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    with pytest.raises(RequestError) as missing:
        again.update("nope_1", state="failed")
    assert missing.value.status == 404 and "nope_1" in str(missing.value)
    with pytest.raises(TypeError, match="colour"):
        again.update(bobs[0].job_id, colour="red")


# -- the runner ---------------------------------------------------------------------------------


def test_queue_of_one_runs_jobs_oldest_first_and_records_how_they_end(tmp_path, scheduler, data):
    runner = make_runner(tmp_path, scheduler, max_jobs=1)
    runner.start()
    try:
        good = submit(runner, "good", config_text(data))
        bad = submit(runner, "bad", config_text(data, branches='"NO_SUCH_BRANCH"'))
        lost = submit(runner, "lost", config_text(data), cwd=tmp_path / "missing")
        wait_for(lambda: state_of(runner, good.job_id) == "running", 30, "the first job to run")
        assert state_of(runner, bad.job_id) == "queued"  # one at a time
        wait_for(lambda: state_of(runner, lost.job_id) not in ("queued", "running"), 120,
                 "every job to end")
    finally:
        runner.stop()

    good, bad, lost = (runner.store.get(j.job_id) for j in (good, bad, lost))
    assert good.state == "succeeded" and good.exit_code == 0 and good.error is None
    run_dir = runner.run_dir(good.job_id)
    assert Bundle.load(run_dir).name and (run_dir / "metrics.json").exists()
    assert 0.5 < good.summary["auc"] <= 1 and good.summary["ams"] > 0
    assert good.summary["events"]["test"] > 0 and good.summary["engine"] == "xgboost"
    progress = runner.progress(good.job_id)
    assert progress["phase"] == "evaluate" and progress["status"] == "evaluate: done"
    assert len(progress["history"]["step"]) == 10
    assert progress["total"] == 10 and progress["unit"] == "rounds"
    assert "validation-logloss" in progress["metrics"]
    assert len(progress["history"]["validation-logloss"]) == 10
    phases = [m["phase"] for m in map(json.loads, runner.events_path(good.job_id).open())
              if m["kind"] == "phase" and m["state"] == "end"]
    assert phases == ["specs", "features", "train", "evaluate"]

    assert bad.state == "failed" and bad.exit_code == 2 and bad.started >= good.finished
    assert "NO_SUCH_BRANCH" in bad.error and not bad.error.startswith("hepdask:")
    assert f"hepdask: error: {bad.error.splitlines()[0]}" in runner.log_path(bad.job_id).read_text()
    assert bad.summary == {} and not runner.run_dir(bad.job_id).exists()

    assert lost.state == "failed" and "could not start" in lost.error and "missing" in lost.error


def test_cancel_ends_the_jobs_process_group(tmp_path, scheduler, data):
    runner = make_runner(tmp_path, scheduler, max_jobs=2)
    queued = submit(runner, "queued", config_text(data))
    assert runner.cancel(queued.job_id).state == "cancelled"
    runner.start()
    try:
        job = submit(runner, "running", config_text(data))
        # cancelled in its first phase: the seconds of work left keep it alive meanwhile
        wait_for(lambda: runner.progress(job.job_id)["phase"], 60, "the job's first phase")
        pid = runner.store.get(job.job_id).pid
        assert group_alive(pid)
        cancelled = runner.cancel(job.job_id)
    finally:
        runner.stop()
    assert cancelled.state == "cancelled" and cancelled.exit_code != 0 and cancelled.pid is None
    assert not group_alive(pid)
    assert runner.store.get(queued.job_id).attempts == 0
    with pytest.raises(RequestError) as again:
        runner.cancel(job.job_id)
    assert again.value.status == 409 and "cancelled" in str(again.value)


def test_recover_marks_jobs_of_a_dead_service_interrupted_and_leaves_the_queue(tmp_path,
                                                                               scheduler):
    runner = make_runner(tmp_path, scheduler)
    store = runner.store
    dead = subprocess.Popen(["true"])
    dead.wait()
    ran = store.add_job(name="ran", owner="alice", kind="config", hints={}, cwd=str(tmp_path))
    store.update(ran.job_id, state="running", pid=dead.pid, attempts=1)
    other = store.add_job(name="other", owner="alice", kind="config", hints={}, cwd=str(tmp_path))
    store.update(other.job_id, state="running", pid=os.getpid())  # a pid reused by another process
    waiting = store.add_job(name="waiting", owner="bob", kind="config", hints={}, cwd="/")
    assert sorted(runner.recover()) == sorted([ran.job_id, other.job_id])
    assert store.get(ran.job_id).state == "interrupted" and store.get(other.job_id).pid is None
    assert "resume" in store.get(ran.job_id).error
    assert store.get(waiting.job_id).state == "queued"


SERVICE = """
import sys, time
from hepdask.service.runner import Runner
from hepdask.service.settings import ServiceSettings
from hepdask.service.state import Store
settings = ServiceSettings(state=sys.argv[1])
Runner(Store(settings.database_url), settings,
       cluster_args=lambda job: ["--scheduler", sys.argv[2]]).start()
time.sleep(600)
"""


def test_a_job_outliving_its_service_is_ended_at_restart_and_resumes(tmp_path, scheduler, data):
    runner = make_runner(tmp_path, scheduler)
    job = submit(runner, "survivor", config_text(data))
    service = subprocess.Popen([sys.executable, "-c", SERVICE, str(tmp_path), scheduler],
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        wait_for(lambda: runner.progress(job.job_id)["phase"], 60,
                 "the job's first phase under the first service")
    finally:
        service.send_signal(signal.SIGKILL)  # the service dies; its job runs on
        service.wait()
    pid = runner.store.get(job.job_id).pid
    assert group_alive(pid)
    runner.start()  # the restarted service
    try:
        job = runner.store.get(job.job_id)
        assert job.state == "interrupted" and not group_alive(pid)
        assert runner.resume(job.job_id).resume
        wait_for(lambda: state_of(runner, job.job_id) not in ("queued", "running"), 60,
                 "the resumed job to end")
    finally:
        runner.stop()
    job = runner.store.get(job.job_id)
    assert job.state == "succeeded" and job.attempts == 2, job.error
    assert len(runner.progress(job.job_id)["history"]["step"]) == 10  # the latest attempt's
    log = runner.log_path(job.job_id).read_text()
    assert "attempt 1" in log and "attempt 2" in log and "--resume" in log
    with pytest.raises(RequestError) as done:
        runner.resume(job.job_id)
    assert done.value.status == 409
