"""A ``python -m hepdask service`` subprocess for the tests, the requests they send it as curl
would, and a small HiggsML config to submit (shared by test_service.py and
test_service_client.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import servers

REPO = Path(__file__).resolve().parents[1]
TOKENS = {"alice": "tok-alice", "bob": "tok-bob", "root": "tok-root"}


def http(url: str, path: str, *, user: str | None = None, method: str | None = None,
         body: bytes | None = None, json_body=None, headers: dict | None = None,
         timeout: float = 120):
    """(status, headers, body bytes) of one request, as curl would send it."""
    headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    if user:
        headers["Authorization"] = f"Bearer {TOKENS[user]}"
    request = urllib.request.Request(url + path, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def call(url: str, path: str, **kwargs):
    """(status, decoded JSON)."""
    status, _, data = http(url, path, **kwargs)
    return status, json.loads(data) if data else None


class Service:
    """A ``python -m hepdask service`` subprocess on a free loopback port."""

    def __init__(self, base: Path, *extra: str):
        self.base, self.state, self.extra = base, base / "state", extra
        self.port = servers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, *extra: str) -> Service:
        tokens = self.base / "tokens"
        tokens.write_text("".join(f"{t} {u}{' admin' if u == 'root' else ''}\n"
                                  for u, t in TOKENS.items()))
        command = [sys.executable, "-m", "hepdask", "service", "--port", str(self.port),
                   # relative, as typed: jobs run elsewhere (in the users' folders)
                   "--state", str(self.state.relative_to(self.base)), "--token-file", str(tokens),
                   "--max-jobs", "1", "--max-upload-mb", "2",
                   "--set", "cluster.dashboard_address='127.0.0.1:0'",
                   "--set", "cluster.n_workers=1", "--set", "cluster.threads_per_worker=2",
                   *self.extra, *extra]
        log = open(self.base / "service.log", "ab")
        self.process = subprocess.Popen(command, cwd=self.base, stdout=log, stderr=log,
                                        env=dict(os.environ, PYTHONPATH=str(REPO)))
        deadline = time.monotonic() + 120
        while True:
            try:
                if call(self.url, "/health", timeout=5)[0] == 200:
                    return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                pytest.fail("the service did not start: "
                            + (self.base / "service.log").read_text()[-3000:])
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def higgs_config(rounds: int, **extra: str) -> str:
    """A small configs/higgs.toml: synthetic data prepared in the user's folder."""
    return textwrap.dedent(f"""
        name = "higgs"
        output = "/tmp/not-here"

        [prepare]
        dataset = "higgs"
        directory = "data/higgs"
        download = false
        synthetic_events = 20000
        events_per_file = 10000

        [data]
        tree = "events"
        step_size = 10000
        sentinel = -999.0

        [[samples]]
        name = "signal"
        files = ["{extra.get('files', 'data/higgs/signal_*.root')}"]
        label = 1
        weight = "Weight"

        [[samples]]
        name = "background"
        files = ["data/higgs/background_*.root"]
        label = 0
        weight = "Weight"

        [features]
        branches = ["DER_*", "PRI_*"]

        [train.xgboost]
        num_boost_round = {rounds}
        early_stopping_rounds = {rounds}

        [train.xgboost.params]
        objective = "binary:logistic"
        max_depth = 3
        eval_metric = ["logloss"]

        [cluster]
        n_workers = 8
    """)
