"""``hepdask service`` end to end: a real service subprocess on loopback with a real SQLite
file, real HTTP, real ``hepdask run`` jobs on its local cluster.

One service is shared by the module (``--max-jobs 1``, so jobs queue); the last test kills it
with SIGKILL mid-job and starts it again on the same state.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import uproot
from service_helpers import REPO, Service, call, higgs_config, http

from hepdask.bundle import Bundle
from hepdask.config import SplitConfig
from hepdask.dataset import Partition, split_codes

pytestmark = pytest.mark.slow

BRANCHES = ("x1", "x2", "x3", "x4")
EVENTS = 5000


# -- HTTP -------------------------------------------------------------------------------------


def multipart(data: bytes, filename: str = "wf.tar.gz") -> tuple[bytes, dict]:
    """A multipart/form-data body with the field ``file``, as ``curl -F file=@wf.tar.gz``."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/gzip\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def upload(url: str, user: str, name: str, archive: bytes):
    body, headers = multipart(archive)
    return call(url, f"/upload?name={name}", user=user, method="POST", body=body,
                headers=headers)


def wait(url: str, job_id: str, user: str, until=("succeeded", "failed", "cancelled",
                                                  "interrupted"), timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, job = call(url, f"/jobs/{job_id}", user=user)
        assert status == 200, job
        if job["state"] in until:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.3)


def log_of(url: str, job_id: str, user: str) -> str:
    return http(url, f"/jobs/{job_id}/logs", user=user)[2].decode()


# -- the service -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    server = Service(tmp_path_factory.mktemp("service"), "--allow-user-code").start()
    yield server
    server.stop()


# -- data ---------------------------------------------------------------------------------------


def write_events(path: Path, *, signal: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shift = 0.8 if signal else 0.0
    with uproot.recreate(path) as f:
        tree = f.mktree("Events", {name: np.float32 for name in BRANCHES})
        for _ in range(2):
            tree.extend({name: rng.normal(shift * (i + 1) / 2, 1.0, EVENTS // 2).astype(np.float32)
                         for i, name in enumerate(BRANCHES)})


MODEL = """
import xgboost


def model():
    return xgboost.XGBClassifier(n_estimators=8, max_depth=3, learning_rate=0.3)
"""


def tarball(members: dict[str, bytes | Path], *, links: dict[str, str] | None = None) -> bytes:
    """A .tar.gz of ``members`` (name -> content or file) and symbolic ``links``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, content in members.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return out.getvalue()


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> dict:
    """An MLaaS4HEP upload folder, as its users tar it (``tar czf wf.tar.gz wf/``)."""
    folder = tmp_path_factory.mktemp("wf")
    write_events(folder / "signal.root", signal=True, seed=1)
    write_events(folder / "background.root", signal=False, seed=2)
    files = {"signal.root": folder / "signal.root", "background.root": folder / "background.root",
             "files.txt": b"signal.root\nbackground.root\n", "labels.txt": b"1\n0\n",
             "params.json": json.dumps({"nevts": -1, "chunk_size": 2500, "epochs": 1,
                                        "batch_size": 256}).encode(),
             "model.py": MODEL.encode()}
    return {"folder": folder, "archive": tarball({f"wf/{k}": v for k, v in files.items()})}


def submit_toml(url: str, user: str, text: str, query: str = ""):
    return call(url, f"/jobs{query}", user=user, method="POST", body=text.encode(),
                headers={"Content-Type": "application/toml"})


@pytest.fixture(scope="module")
def jobs(service, workflow) -> dict:
    """Alice's MLaaS4HEP workflow and Bob's TOML config, submitted one after the other: with
    one job at a time, Bob's waits for Alice's."""
    status, answer = upload(service.url, "alice", "wf", workflow["archive"])
    assert status == 201, answer
    assert sorted(answer["files"]) == ["background.root", "files.txt", "labels.txt",
                                       "model.py", "params.json", "signal.root"]
    request = {"name": "wf", "device": "cpu", "memory": "1gb", "cpus": "1", "files": "files.txt",
               "labels": "labels.txt", "model": "model.py", "params": "params.json"}
    status, submitted = call(service.url, "/submit", user="alice", method="POST",
                             json_body=request)
    assert status == 201, submitted
    assert submitted["process_name"] == submitted["job_id"] == "wf_1"
    status, answer = call(service.url, "/delete_folder?name=wf", user="alice")
    assert status == 409 and "wf_1" in answer["error"]  # the job reads it
    status, toml_job = submit_toml(service.url, "bob", higgs_config(10), "?name=higgs")
    assert status == 201, toml_job
    status, bob = call(service.url, f"/jobs/{toml_job['job_id']}", user="bob")
    return {"recipe": "wf_1", "toml": toml_job["job_id"], "bob_at_submit": bob}


# -- the tests ---------------------------------------------------------------------------------


def test_docker_words():
    from hepdask.service.compat import docker_status, human_duration
    from hepdask.service.state import JobRecord

    assert [human_duration(s) for s in (0.4, 1, 8, 59, 60, 150, 3000, 3600, 7200, 3 * 86400,
                                        20 * 86400, 90 * 86400, 800 * 86400)] == [
        "Less than a second", "1 second", "8 seconds", "59 seconds", "About a minute",
        "2 minutes", "50 minutes", "About an hour", "2 hours", "3 days", "2 weeks", "3 months",
        "2 years"]
    job = JobRecord(1, "wf_1", "wf", "alice", "mlaas4hep", "queued", 100.0, None, None, None,
                    None, {}, "/", "wf", False, 0, {}, None)

    def status(**fields) -> str:
        return docker_status(dataclasses.replace(job, **fields), now=1000.0)

    assert status() == "Created"
    assert status(state="running", started=992.0) == "Up 8 seconds"
    assert status(state="succeeded", finished=880.0, exit_code=0) == "Exited (0) 2 minutes ago"
    assert status(state="failed", finished=999.5, exit_code=2) == \
        "Exited (2) Less than a second ago"
    assert status(state="failed", finished=999.5, exit_code=-9).startswith("Exited (137)")
    assert status(state="cancelled", finished=990.0).startswith("Exited (143)")
    assert status(state="interrupted", finished=990.0).startswith("Exited (255)")


def test_no_public_address_without_auth(tmp_path, capsys):
    from hepdask.cli import main

    assert main(["service", "--host", "0.0.0.0", "--state", str(tmp_path / "state")]) == 2
    assert "--force-public" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_hostile_requests_are_refused_and_write_nothing_outside(service, jobs, tmp_path):
    url, state = service.url, service.state
    before = set(service.base.parent.iterdir())
    alice_file = state / "uploads" / "alice" / "wf" / "signal.root"
    assert alice_file.is_file()
    cases = [
        (submit_toml(url, "bob", higgs_config(5, files="/etc/passwd"), "?name=evil"), 403,
         "/etc/passwd"),
        (submit_toml(url, "bob", higgs_config(5, files=str(alice_file)), "?name=evil"), 403,
         "samples"),
        (submit_toml(url, "bob", higgs_config(5, files="../alice/wf/signal.root"),
                     "?name=evil"), 403, ".."),
        (submit_toml(url, "bob", higgs_config(5), "?name=a;rm"), 422, "a;rm"),
        (submit_toml(url, "bob", higgs_config(5), "?name=.."), 422, "'..'"),
        (submit_toml(url, "bob", "name = 'x'\n[data\ntree = 1\n"), 422, "line 2"),
        (submit_toml(url, "bob", higgs_config(5).replace("max_depth", "max_dept")), 422,
         "max_dept"),
        (submit_toml(url, "bob", higgs_config(5), "?name=big&cpus=64"), 422, "cpus = 64"),
        (submit_toml(url, "bob", higgs_config(5), "?name=big&memory=1tb"), 422, "memory"),
        (submit_toml(url, "bob", higgs_config(5), "?name=big&device=gpu"), 422, "no GPU"),
        (submit_toml(url, "bob", higgs_config(5), "?name=big&memory=lots"), 422, "'lots'"),
        (upload(url, "bob", "up", tarball({"../../escaped.txt": b"x"})), 422, "escaped.txt"),
        (upload(url, "bob", "up", tarball({"a.txt": b"x"}, links={"link": "/etc/passwd"})), 422,
         "link"),
        (upload(url, "bob", "../up", tarball({"a.txt": b"x"})), 422, "../up"),
        (upload(url, "bob", "big", os.urandom(3 * 2**20)), 413, "2.0 MiB"),
        (call(url, "/submit", user="bob", method="POST", json_body={
            "name": "wf", "files": "files.txt", "labels": "labels.txt", "model": "model.py"}),
         404, "wf"),
    ]
    for (status, answer), want, text in cases:
        assert status == want, (want, text, answer)
        assert text in answer["error"], (text, answer)
    status, answer = call(url, "/jobs", user="bob")
    assert [j["name"] for j in answer["jobs"]] == ["higgs"]  # nothing refused was queued
    assert set(service.base.parent.iterdir()) == before
    assert not list(state.parent.rglob("escaped.txt"))
    assert not (state / "uploads" / "bob" / "up").exists()
    assert not (state / "uploads" / "bob" / "big").exists()


def test_mlaas4hep_recipe_upload_submit_status_logs_model_predict(service, jobs, workflow,
                                                                  tmp_path):
    url, job_id = service.url, jobs["recipe"]
    seen = set()
    deadline = time.monotonic() + 240
    while True:
        status, answer = call(url, f"/status_docker?process_name={job_id}", user="alice")
        assert status == 200 and answer["process_name"] == job_id
        seen.add(answer["status"].split()[0])
        if answer["state"] not in ("queued", "running"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert answer["state"] == "succeeded", log_of(url, job_id, "alice")
    assert answer["status"].startswith("Exited (0) ") and answer["status"].endswith(" ago")
    assert "Up" in seen
    status, headers, log = http(url, f"/logs?process_name={job_id}", user="alice")
    assert status == 200 and "attachment" in headers["content-disposition"]
    assert b"params.epochs is not used" in log  # the conversion's notes are in the log

    status, headers, data = http(url, f"/model?process_name={job_id}", user="alice")
    assert status == 200 and headers.get_content_type() == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp_path / "model", filter="data")
    run_dir = tmp_path / "model" / job_id
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["engine"] == "xgboost" and metrics["auc"] > 0.7

    # the service's scheduler is not the user's: the fetched bundle names no cluster
    assert json.loads((run_dir / "config.resolved.json").read_text())["cluster"] == {}
    bundle = Bundle.load(run_dir)
    files = [str(workflow["folder"] / f) for f in ("signal.root", "background.root")]
    result = subprocess.run(
        [sys.executable, "-m", "hepdask", "predict", str(run_dir), *files, "-o",
         str(tmp_path / "scores"), "-q", "--set", "cluster.n_workers=1",
         "--set", "cluster.dashboard_address='127.0.0.1:0'"],  # on a local cluster of its own
        capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr[-3000:]
    scores, labels, first = [], [], {}
    for file, sample, label in ((files[0], "signal", 1), (files[1], "background", 0)):
        with uproot.open(tmp_path / "scores" / Path(file).name) as f:
            score = f[bundle.name]["score"].array(library="np")
        first[sample] = score[:5]
        test = split_codes(Partition(sample, file, 0, EVENTS), SplitConfig()) == 2
        scores.append(score[test])
        labels.append(np.full(int(test.sum()), label))
    from sklearn.metrics import roc_auc_score

    # the test events' scores are the evaluation's: the same AUC, to the last digit
    auc = roc_auc_score(np.concatenate(labels), np.concatenate(scores).astype(np.float64))
    assert auc == pytest.approx(metrics["auc"], abs=1e-12)

    with uproot.open(files[0]) as f:
        events = f["Events"].arrays(list(BRANCHES), entry_stop=5, library="np")
    keys = list(bundle.inputs)
    status, probabilities = call(url, "/json", user="alice", method="POST", json_body={
        "keys": keys, "values": [[float(events[k][i]) for k in keys] for i in range(5)],
        "model": job_id})
    assert status == 200, probabilities
    assert np.array_equal(np.float32([p[0] for p in probabilities]), first["signal"])


def test_toml_job_progress_files_metrics_and_bundle(service, jobs, tmp_path):
    url, job_id = service.url, jobs["toml"]
    job = wait(url, job_id, "bob")
    assert job["state"] == "succeeded", log_of(url, job_id, "bob")
    progress = job["progress"]
    assert progress["total"] == 10 and progress["unit"] == "rounds"
    assert progress["history"]["step"][-1] == 10 and len(progress["history"]["step"]) == 10
    assert job["summary"]["auc"] > 0.6 and job["queue_position"] is None
    log = log_of(url, job_id, "bob")
    assert "output and cluster are the service's" in log
    followed = http(url, f"/jobs/{job_id}/logs?follow=true", user="bob")[2].decode()
    assert followed == log  # the job has ended: the stream ends with the log
    assert http(url, f"/jobs/{job_id}/logs?offset=10", user="bob")[2].decode() == log[10:]
    status, listing = call(url, f"/jobs/{job_id}/files", user="bob")
    names = {f["path"] for f in listing["files"]}
    assert {"metrics.json", "bundle.json", "roc.png", "config.toml"} <= names
    status, metrics = call(url, f"/jobs/{job_id}/files/metrics.json", user="bob")
    assert status == 200 and metrics["auc"] == job["summary"]["auc"]
    for bad in ("../config.toml", "..%2F..%2Fservice.db", "%2Fetc%2Fpasswd"):
        assert http(url, f"/jobs/{job_id}/files/{bad}", user="bob")[0] == 404, bad
    status, _, data = http(url, f"/jobs/{job_id}/bundle", user="bob")
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp_path, filter="data")
    assert Bundle.load(tmp_path / job_id).engine == "xgboost"
    status, schema = call(url, "/openapi.json", user="bob")
    assert {"/jobs", "/jobs/{job_id}", "/submit", "/status_docker", "/json"} <= set(schema["paths"])
    assert call(url, "/openapi.json")[0] == 401


def test_users_queue_and_isolation(service, jobs):
    url = service.url
    recipe = wait(url, jobs["recipe"], "alice")
    toml = wait(url, jobs["toml"], "bob")
    # one job at a time: Bob's waited in the queue until Alice's ended
    assert jobs["bob_at_submit"]["state"] == "queued"
    assert jobs["bob_at_submit"]["queue_position"] >= 1
    assert toml["started"] >= recipe["finished"]
    for path in (f"/jobs/{recipe['job_id']}", f"/jobs/{recipe['job_id']}/bundle",
                 f"/jobs/{recipe['job_id']}/logs", f"/model?process_name={recipe['job_id']}",
                 f"/logs?process_name={recipe['job_id']}",
                 f"/status_docker?process_name={recipe['job_id']}"):
        status, answer = call(url, path, user="bob")
        assert status == 404 and "No job 'wf_1'" in answer["error"], (path, answer)
    status, answer = call(url, f"/jobs/{recipe['job_id']}/cancel", user="bob", method="POST")
    assert status == 404
    status, answer = call(url, "/json", user="bob", method="POST",
                          json_body={"keys": ["x1"], "values": [1.0], "model": "wf_1"})
    assert status == 404 and "wf_1" in answer["error"]
    assert [m["name"] for m in call(url, "/models", user="bob")[1]] == [toml["job_id"]]
    assert call(url, "/jobs?all=true", user="bob")[0] == 403
    assert recipe["hints"]["cpus"] == 1 and recipe["hints"]["cluster"].startswith("shared")
    status, answer = call(url, "/jobs?all=true", user="root")
    assert {j["job_id"] for j in answer["jobs"]} >= {recipe["job_id"], toml["job_id"]}
    assert {j["owner"] for j in answer["jobs"]} >= {"alice", "bob"}
    assert http(url, f"/jobs/{recipe['job_id']}/bundle", user="root")[0] == 200
    assert {m["name"] for m in call(url, "/models", user="root")[1]} >= {"wf_1", toml["job_id"]}
    assert call(url, "/jobs", user=None)[0] == 401
    assert call(url, "/jobs", headers={"Authorization": "Bearer nope"})[0] == 401


def running(url: str, job_id: str, user: str) -> dict:
    """The job once its run has begun (its pid is known and hepdask has logged)."""
    deadline = time.monotonic() + 180
    while True:
        job = call(url, f"/jobs/{job_id}", user=user)[1]
        if job["state"] == "running" and job["progress"].get("phase"):
            return job
        assert job["state"] in ("queued", "running"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.3)


def pid_of(state: Path, job_id: str) -> int:
    with sqlite3.connect(state / "service.db") as db:  # the real SQLite file of the service
        (pid,) = db.execute("select pid from jobs where job_id = ?", (job_id,)).fetchone()
    return pid


def gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_cancel_a_running_job(service, jobs):
    url = service.url
    wait(url, jobs["toml"], "bob")
    status, job = submit_toml(url, "alice", higgs_config(2000), "?name=long")
    assert status == 201
    job = running(url, job["job_id"], "alice")
    pid = pid_of(service.state, job["job_id"])
    status, answer = call(url, f"/jobs/{job['job_id']}/cancel", user="alice", method="POST")
    assert status == 200, answer
    job = wait(url, job["job_id"], "alice", timeout=60)
    assert job["state"] == "cancelled"
    assert gone(pid)  # the job's whole process group
    status, answer = call(url, f"/status_docker?process_name={job['job_id']}", user="alice")
    assert answer["status"].startswith("Exited (143)")
    assert call(url, f"/jobs/{job['job_id']}/bundle", user="alice")[0] == 409
    status, again = call(url, f"/jobs/{job['job_id']}/resubmit", user="alice", method="POST")
    assert status == 201 and again["job_id"] != job["job_id"] and again["name"] == "long"
    status, answer = call(url, f"/jobs/{again['job_id']}", user="alice", method="DELETE")
    assert status == 200 and call(url, f"/jobs/{again['job_id']}", user="alice")[0] == 404


def test_kill_and_restart_mid_job(service, jobs, workflow):
    url = service.url
    wait(url, jobs["toml"], "bob")
    status, job = submit_toml(url, "bob", higgs_config(30), "?name=restart")
    assert status == 201
    job_id = running(url, job["job_id"], "bob")["job_id"]
    pid = pid_of(service.state, job_id)
    service.process.send_signal(signal.SIGKILL)
    service.process.wait(30)
    with sqlite3.connect(service.state / "service.db") as db:
        before = {row[0] for row in db.execute("select job_id from jobs")}
    service.extra = ()  # again, without --allow-user-code
    service.start()
    assert gone(pid)  # the orphaned job was ended by the new service
    status, answer = call(url, "/jobs?all=true", user="root")
    listed = {j["job_id"]: j for j in answer["jobs"]}
    assert set(listed) == before
    assert listed[job_id]["state"] == "interrupted"
    assert listed[jobs["recipe"]]["state"] == listed[jobs["toml"]]["state"] == "succeeded"
    assert http(url, f"/model?process_name={jobs['recipe']}", user="alice")[0] == 200
    status, answer = call(url, f"/status_docker?process_name={job_id}", user="bob")
    assert answer["status"].startswith("Exited (255)") and answer["state"] == "interrupted"
    status, answer = call(url, "/submit", user="alice", method="POST", json_body={
        "name": "wf", "files": "files.txt", "labels": "labels.txt", "model": "model.py"})
    assert status == 403 and "--allow-user-code" in answer["error"]
    status, answer = call(url, f"/jobs/{job_id}/resume", user="bob", method="POST")
    assert status == 200 and answer["state"] == "queued"
    job = wait(url, job_id, "bob")
    assert job["state"] == "succeeded", log_of(url, job_id, "bob")
    assert "--resume" in log_of(url, job_id, "bob") or job["summary"]["auc"] > 0.6
    assert http(url, f"/jobs/{job_id}/bundle", user="bob")[0] == 200
    status, answer = call(url, f"/jobs/{job_id}", user="bob", method="DELETE")
    assert status == 200 and answer == {"deleted": job_id}
    assert call(url, f"/jobs/{job_id}", user="bob")[0] == 404
    assert not (service.state / "jobs" / job_id).exists()
    assert call(url, "/uploads", user="alice")[1]["uploads"][0]["name"] == "wf"
    assert call(url, "/delete_specs?name=wf", user="alice")[0] == 200
    assert call(url, "/delete_folder?name=wf", user="alice") == (200, {"name": "wf",
                                                                      "deleted": True})
    assert call(url, "/uploads", user="alice")[1] == {"uploads": []}
    assert not (service.state / "uploads" / "alice" / "wf").exists()
