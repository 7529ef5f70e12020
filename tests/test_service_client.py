"""The service's client, :class:`hepdask.service.client.Client` and the ``submit``/``jobs``/
``logs``/``fetch``/``upload``/``cancel``/``resume`` commands.

Two servers, both real HTTP on loopback: a small stand-in app in a uvicorn thread, for what the
real service cannot be made to do on purpose (answer with a tampered bundle, fall silent in
the middle of a log stream), and the real ``python -m hepdask service`` in a subprocess.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time

import pytest
from servers import free_port
from service_helpers import REPO, TOKENS, Service, higgs_config

from hepdask.bundle import Bundle
from hepdask.errors import HepdaskError, RequestError
from hepdask.service.client import Client, read_token

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")


# -- the stand-in server ------------------------------------------------------------------------

LOG = b"first line\nsecond line\nthird line\n"


def stand_in() -> fastapi.FastAPI:
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    app = fastapi.FastAPI()
    polls = {"n": 0}

    @app.get("/jobs/{job_id}")
    def job(job_id: str, request: fastapi.Request):
        if request.headers.get("authorization") != "Bearer right-token":
            return JSONResponse({"error": "Missing or wrong bearer token."}, status_code=401)
        if job_id != "toy_1":
            return JSONResponse({"error": f"No job {job_id}."}, status_code=404)
        polls["n"] += 1
        steps = [("queued", None), ("running", 1), ("running", 1), ("running", 2),
                 ("succeeded", 2)]
        state, step = steps[min(polls["n"], len(steps)) - 1]
        progress = {"status": f"train: round {step} of 2"} if step else {}
        return {"job_id": job_id, "state": state, "progress": progress, "queue_position": None}

    @app.post("/uploads")
    async def upload(name: str, request: fastapi.Request):
        form = await request.form()
        data = await form["file"].read()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()
                       for m in tar if m.isfile()}
        return {"name": name, "filename": form["file"].filename, "members": members}

    @app.get("/jobs/{job_id}/logs")
    def logs(job_id: str, follow: bool = False, offset: int = 0):
        async def lines():
            for k, line in enumerate(io.BytesIO(LOG[offset:])):
                yield line
                if offset == 0 and k == 0:
                    await asyncio.sleep(3)  # silent for longer than the client's timeout
        return StreamingResponse(lines(), media_type="text/plain") if follow else \
            Response(LOG, media_type="text/plain")

    @app.get("/jobs/{job_id}/bundle")
    def bundle(job_id: str):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            member = tarfile.TarInfo("../escaped.txt")
            member.size = 4
            tar.addfile(member, io.BytesIO(b"evil"))
        return Response(buffer.getvalue(), media_type="application/gzip")

    return app


@pytest.fixture(scope="module")
def stand_in_url():
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(stand_in(), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the stand-in server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_token_file_first_word_of_first_line(tmp_path):
    bare = tmp_path / "bare"
    bare.write_text("  s3cret  \n")
    lines = tmp_path / "lines"
    lines.write_text("# tokens of the service\n\ntok-a alice admin\ntok-b bob\n")
    assert read_token(bare) == "s3cret"
    assert read_token(lines) == "tok-a"
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(HepdaskError, match="empty holds no token"):
        read_token(empty)
    with pytest.raises(HepdaskError, match=r"Cannot read the token file .*missing"):
        Client(token_file=tmp_path / "missing")


def test_refusals_carry_the_servers_paragraph_and_status(stand_in_url, tmp_path):
    with pytest.raises(RequestError, match=r"wrong bearer token.*HTTP 401") as err:
        Client(stand_in_url, token="wrong").job("toy_1")
    assert err.value.status == 401
    token_file = tmp_path / "token"
    token_file.write_text("right-token\n")
    client = Client(stand_in_url, token_file=token_file)
    with pytest.raises(RequestError, match=r"No job nope_7\. \(HTTP 404 to GET /jobs/nope_7\)"):
        client.job("nope_7")


def test_wait_reports_each_change_once(stand_in_url):
    seen = []
    job = Client(stand_in_url, token="right-token").wait("toy_1", poll=0.05,
                                                          on_update=seen.append)
    assert job["state"] == "succeeded"
    assert [(j["state"], j["progress"].get("status")) for j in seen] == [
        ("queued", None), ("running", "train: round 1 of 2"), ("running", "train: round 2 of 2"),
        ("succeeded", "train: round 2 of 2")]


def test_upload_streams_a_packed_folder(stand_in_url, tmp_path):
    folder = tmp_path / "wf"
    (folder / "sub").mkdir(parents=True)
    (folder / "files.txt").write_text("a.root\n")
    big = bytes(range(256)) * 20_000  # 5 MB, more than one chunk
    (folder / "sub" / "big.bin").write_bytes(big)
    answer = Client(stand_in_url).upload(folder, "wf")
    assert answer["name"] == "wf" and answer["filename"] == "wf.tar.gz"
    assert answer["members"] == {"wf/files.txt": hashlib.sha256(b"a.root\n").hexdigest(),
                                 "wf/sub/big.bin": hashlib.sha256(big).hexdigest()}
    (folder / "link").symlink_to(folder / "files.txt")
    with pytest.raises(HepdaskError, match=r"wf/link in .* is a link"):
        Client(stand_in_url).upload(folder, "wf")


def test_followed_log_survives_a_silent_stream(stand_in_url):
    client = Client(stand_in_url, timeout=0.5)
    assert client.logs("toy_1") == LOG.decode()
    assert "".join(client.logs("toy_1", follow=True)) == LOG.decode()


def test_fetch_refuses_a_tampered_bundle(stand_in_url, tmp_path):
    pytest.importorskip("hepdask.service.uploads")
    dest = tmp_path / "out" / "model"
    with pytest.raises(RequestError, match=r"\.\./escaped\.txt"):
        Client(stand_in_url).fetch("toy_1", dest)
    assert not (tmp_path / "out" / "escaped.txt").exists()
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary file left either


def test_no_service_names_the_url_and_the_command():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(HepdaskError, match=rf"No hepdask service answers at {url} .*"
                                           r"python -m hepdask service"):
        Client(url).jobs()


# -- the real service ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    server = Service(tmp_path_factory.mktemp("client-service")).start()
    yield server
    server.stop()


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hepdask", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))


@pytest.fixture(scope="module")
def alice(service) -> dict:
    """Alice's environment for the commands: the service's own token file, whose first line is
    hers."""
    assert (service.base / "tokens").read_text().startswith(f"{TOKENS['alice']} alice")
    return {"HEPDASK_SERVER": service.url, "HEPDASK_TOKEN_FILE": str(service.base / "tokens")}


@pytest.mark.slow
def test_submit_wait_jobs_logs_fetch(service, alice, tmp_path):
    config = tmp_path / "higgs.toml"
    config.write_text(higgs_config(5))
    done = cli("submit", str(config), "--name", "small", "--cpus", "1", "--wait", env=alice)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    # queued (with its position while the runner has not yet looked), or running already
    assert lines[0].startswith(("small_1: queued", "small_1: running")), lines
    # the phases as the polls saw them (5 rounds may all fall between two polls)
    assert any(re.fullmatch(r"small_1: running, (specs|features|train): .+", x)
               for x in lines), lines
    assert re.search(r"small_1 succeeded: .*auc 0\.\d+", done.stdout)
    assert "hepdask fetch small_1 -o DIR" in done.stdout
    assert len(lines) == len(set(lines))  # each change once

    listed = cli("jobs", env=alice)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^small_1\s+succeeded\s+alice\s+\d{4}-\d\d-\d\dT\S+\s+auc 0\.\d{4}$",
                     listed.stdout, re.M), listed.stdout
    bob = tmp_path / "bob-token"
    bob.write_text(f"{TOKENS['bob']}\n")
    assert "small_1" not in cli("jobs", "--token-file", str(bob), env=alice).stdout

    log = cli("logs", "small_1", env=alice)
    assert log.returncode == 0 and "ROC AUC" in log.stdout, log.stderr
    assert cli("logs", "small_1", "--follow", env=alice).stdout == log.stdout

    fetched = cli("fetch", "small_1", "-o", str(tmp_path / "model"), env=alice)
    assert fetched.returncode == 0, fetched.stderr
    bundle = Bundle.load(tmp_path / "model")
    assert bundle.engine == "xgboost"
    assert json.loads((tmp_path / "model" / "metrics.json").read_text())["auc"] > 0.6


@pytest.mark.slow
def test_failed_and_interrupted_waits(service, alice, tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text(higgs_config(5, files="nothing/signal_*.root"))
    done = cli("submit", str(broken), "--name", "broken", "--wait", "-q", env=alice)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    assert re.search(r"hepdask: broken_\d+ failed: .*nothing/signal_\*\.root", done.stderr)

    config = tmp_path / "long.toml"
    config.write_text(higgs_config(500))
    waiting = subprocess.Popen([sys.executable, "-m", "hepdask", "submit", str(config), "--name",
                                "long", "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=REPO,
                               env=dict(os.environ, PYTHONPATH=str(REPO), **alice))
    for line in waiting.stdout:
        if ": running" in line:
            break
    job_id = line.split(":")[0]
    waiting.send_signal(signal.SIGINT)
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 130, out + err
    assert f"{job_id} keeps running on the service" in err
    assert f"hepdask cancel {job_id}" in err
    client = Client(service.url, token=TOKENS["alice"])
    assert client.job(job_id)["state"] == "running"
    cancelled = cli("cancel", job_id, env=alice)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"{job_id}: cancelled"
    assert client.wait(job_id, timeout=60)["state"] == "cancelled"
    resumed = cli("resume", job_id, env=alice)
    assert resumed.returncode == 0 and resumed.stdout.strip() == f"{job_id}: queued"
    assert client.cancel(job_id)["state"] == "cancelled"


def test_client_refusals_from_the_service(service, tmp_path):
    with pytest.raises(RequestError, match=r"HTTP 401 to GET /jobs") as err:
        Client(service.url, token="not-a-token").jobs()
    assert err.value.status == 401
    with pytest.raises(RequestError) as err:
        Client(service.url).jobs()  # no token at all
    assert err.value.status == 401
    bob = Client(service.url, token=TOKENS["bob"])
    with pytest.raises(RequestError, match=r"No job 'nope_9'.*\(HTTP 404 to GET /jobs/nope_9\)"
                       ) as err:
        bob.job("nope_9")
    assert err.value.status == 404
    with pytest.raises(RequestError, match="not valid TOML"):
        bob.submit("name = 'x'\n[data\n")

    folder = tmp_path / "ntuples"
    folder.mkdir()
    (folder / "files.txt").write_text("a.root\n")
    answer = bob.upload(folder, "ntuples")
    assert answer["name"] == "ntuples" and answer["files"] == ["files.txt"]
    assert [u["name"] for u in bob.uploads()] == ["ntuples"]
    assert (service.state / "uploads" / "bob" / "ntuples" / "files.txt").read_text() == "a.root\n"
    shown = cli("upload", str(folder), "--name", "again", "--server", service.url,
                "--token-file", str(service.base / "tokens"))
    assert shown.returncode == 0 and "Uploaded" in shown.stdout, shown.stderr


def test_cli_without_a_service_says_how_to_start_one():
    url = f"http://127.0.0.1:{free_port()}"
    done = cli("jobs", "--server", url)
    assert done.returncode == 2
    assert done.stderr.startswith(f"hepdask: error: No hepdask service answers at {url} ")
    assert "python -m hepdask service" in done.stderr


def _slow_sum(values: list[int]) -> int:
    time.sleep(3)
    return sum(values)


def test_two_runs_watching_the_same_tasks_both_finish(client):
    """Two jobs of one config on the service's shared cluster build tasks of the same keys;
    each must see its computation end (distributed's progress feed of identical keys is one
    scheduler plugin, and the second replaced the first, which then waited forever)."""
    import dask
    from distributed import Client as DaskClient

    from hepdask.progress import Progress, compute

    results: dict[int, int] = {}

    def run(k: int) -> None:
        with DaskClient(client.scheduler.address) as own:
            progress = Progress(own, f"job{k}", stream=io.StringIO())
            with progress.phase("specs"):
                (results[k],) = compute(own, dask.delayed(_slow_sum, pure=True)([1, 2, 3]))
            progress.close()

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {0: 6, 1: 6}
