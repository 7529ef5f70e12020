"""The queue: each job is a ``python -m hepdask run`` subprocess on the service's cluster.

A job runs in its own process (and process group), so a crashing job or user model cannot take
the service down, and cancelling it ends everything it started. The job's directory
``<state>/jobs/<job_id>/`` holds ``config.toml`` (as run), ``job.log`` (the subprocess's output,
appended attempt after attempt), ``events.jsonl`` (its progress messages, see
:mod:`hepdask.progress`) and ``run/``, the run directory. A job is succeeded only when the
subprocess exited 0 and its run directory holds metrics.json and a bundle that loads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import HepdaskError, RequestError, first_line
from ..outputs import write_text
from ..progress import EVENTS, RunState
from .settings import ServiceSettings
from .state import FINAL, JobRecord, Store

__all__ = ["Runner"]

log = logging.getLogger("hepdask")

_ERROR = "hepdask: error: "
_LOG_LINE = re.compile(r"^(hepdask: |\[?\d\d:\d\d:\d\d|\d{4}-\d\d-\d\d )")


class Runner:
    """Starts queued jobs (oldest first, at most ``settings.max_jobs`` at once), watches them,
    and records how they end.

    Parameters
    ----------
    store
        Where the jobs are recorded.
    settings
        The service's settings (its state directory and ``max_jobs``).
    cluster_args
        ``cluster_args(job)``: the ``hepdask run`` flags that put the job on the service's
        cluster, e.g. ``["--scheduler", "tcp://127.0.0.1:8786"]``.
    grace
        Seconds a job has to end after SIGTERM (hepdask unwinds as on Ctrl-C) before SIGKILL.
    poll
        Seconds between looks at the running jobs.
    """

    def __init__(self, store: Store, settings: ServiceSettings, *,
                 cluster_args: Callable[[JobRecord], list[str]], grace: float = 10.0,
                 poll: float = 0.25) -> None:
        self.store, self.settings = store, settings
        self.cluster_args = cluster_args
        self.grace, self.poll = grace, poll
        self._procs: dict[str, subprocess.Popen] = {}
        self._ending: dict[str, str] = {}  # job id -> the state its process ends in
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- paths ---------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return Path(self.settings.jobs) / job_id

    def run_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "run"

    def log_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "job.log"

    def config_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "config.toml"

    def events_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "events.jsonl"

    # -- the service's life --------------------------------------------------------------------

    def start(self) -> None:
        """Mark the jobs a previous service left running as interrupted, then start the loop."""
        self.recover()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="hepdask-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and end the running jobs (marked interrupted, so they can be resumed)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            running = dict(self._procs)
            self._ending.update(dict.fromkeys(running, "interrupted"))
        for proc in running.values():
            _signal_group(proc.pid, signal.SIGTERM)
        for job_id, proc in running.items():
            self._end(proc, signalled=True)
            self._reap(job_id)

    def recover(self) -> list[str]:
        """Jobs left running by a service that is gone: their process groups are killed if
        still alive (only when the process's command line names the job's config, so that an
        unrelated process that got the pid is left alone) and they are marked interrupted.
        Queued jobs stay queued. Returns the ids of the jobs marked."""
        marked = []
        for job in self.store.jobs(state="running"):
            with self._lock:
                if job.job_id in self._procs:
                    continue
            if job.pid is not None and _runs(job.pid, self.config_path(job.job_id)):
                log.warning("Job %s (pid %d) outlived the service that started it: ending it.",
                            job.job_id, job.pid)
                self._end_orphan(job.pid, self.config_path(job.job_id))
            self.store.update(job.job_id, state="interrupted", finished=time.time(), pid=None,
                              error=_interrupted(job))
            marked.append(job.job_id)
        return marked

    # -- requests ------------------------------------------------------------------------------

    def submit(self, job: JobRecord, config_text: str) -> JobRecord:
        """Write the job's config (whole or not at all) and wake the queue."""
        self.job_dir(job.job_id).mkdir(parents=True, exist_ok=True)
        write_text(self.config_path(job.job_id), config_text)
        self._wake.set()
        return self._get(job.job_id)

    def cancel(self, job_id: str) -> JobRecord:
        """A queued job is cancelled at once; a running one gets SIGTERM on its process group,
        SIGKILL after the grace period, and is cancelled once it has ended."""
        with self._lock:
            job = self._get(job_id)
            if job.state == "queued" or (job.state == "running" and job_id not in self._procs):
                return self.store.update(job_id, state="cancelled", finished=time.time(),
                                         pid=None, error="Cancelled before it ran.")
            if job.state != "running":
                raise RequestError(f"Job {job_id} is {job.state} already; only a queued or "
                                   "running job can be cancelled.", 409)
            proc = self._procs[job_id]
            self._ending[job_id] = "cancelled"
        self._end(proc)
        self._reap(job_id)
        return self._get(job_id)

    def resume(self, job_id: str) -> JobRecord:
        """Queue an interrupted, failed or cancelled job again, to run with ``--resume`` (a
        Keras run continues from its last checkpoint; others run again)."""
        with self._lock:
            job = self._get(job_id)
            if job.state not in FINAL - {"succeeded"}:
                raise RequestError(f"Job {job_id} is {job.state}; only an interrupted, failed or "
                                   "cancelled job can be resumed (resubmit a succeeded one).",
                                   409)
            job = self.store.update(job_id, state="queued", resume=True, finished=None,
                                    exit_code=None, error=None)
        self._wake.set()
        return job

    def progress(self, job_id: str) -> dict:
        """The job's latest run as its events tell it (see :meth:`RunState.snapshot`)."""
        state = RunState("")
        run = None
        with contextlib.suppress(FileNotFoundError), \
                open(self.events_path(job_id), encoding="utf-8") as events:
            for line in events:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if message.get("run") != run:  # a later attempt: its own progress
                    run, state = message.get("run"), RunState(message.get("name", ""))
                state.record(message)
        return state.snapshot()

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                with self._lock:
                    ended = [j for j, proc in self._procs.items() if proc.poll() is not None]
                for job_id in ended:
                    self._reap(job_id)
                self._launch()
            except Exception:  # a database hiccup must not stop the queue
                log.exception("hepdask service: the job queue failed; retrying")
            self._wake.wait(self.poll)
            self._wake.clear()

    def _launch(self) -> None:
        """Start queued jobs while fewer than ``max_jobs`` run."""
        while not self._stopping.is_set():
            with self._lock:
                if len(self._procs) >= self.settings.max_jobs:
                    return
                job = self.store.next_queued()
                if job is None:
                    return
                self._start(job)

    def _start(self, job: JobRecord) -> None:
        job_dir = self.job_dir(job.job_id)
        events = self.events_path(job.job_id)
        attempt = job.attempts + 1
        try:
            command = [sys.executable, "-P", "-m", "hepdask", "run", str(job_dir / "config.toml"),
                       "--output", str(self.run_dir(job.job_id)), *self.cluster_args(job),
                       *(["--resume"] if job.resume else [])]
            with open(self.log_path(job.job_id), "ab") as out:
                out.write(f"hepdask service: job {job.job_id}, attempt {attempt}, started "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: {' '.join(command[1:])}\n"
                          "hepdask service: the service chooses the cluster and the run "
                          "directory, so the config's [cluster] and output are not used.\n"
                          .encode())
                out.flush()
                proc = subprocess.Popen(
                    command, cwd=job.cwd, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, EVENTS: str(events), "PYTHONUNBUFFERED": "1"})
        except Exception as err:
            self.store.update(job.job_id, state="failed", attempts=attempt, started=time.time(),
                              finished=time.time(), exit_code=None, pid=None,
                              error=f"Job {job.job_id} could not start: "
                                    + (str(err) if isinstance(err, HepdaskError)
                                       else first_line(err)))
            return
        self._procs[job.job_id] = proc
        self.store.update(job.job_id, state="running", attempts=attempt, started=time.time(),
                          finished=None, exit_code=None, error=None, summary={}, pid=proc.pid)

    def _end(self, proc: subprocess.Popen, *, signalled: bool = False) -> None:
        """SIGTERM ``proc``'s group (unless ``signalled``), SIGKILL it after the grace period,
        and wait for the process."""
        if not signalled:
            _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            log.warning("hepdask service: pid %d did not end %g s after SIGTERM: killing it.",
                        proc.pid, self.grace)
        _signal_group(proc.pid, signal.SIGKILL)  # and anything it left behind in its group
        proc.wait()

    def _end_orphan(self, pid: int, config: Path) -> None:
        """As :meth:`_end`, for a process this runner did not start (it cannot be waited for)."""
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while _runs(pid, config) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(pid, signal.SIGKILL)

    def _reap(self, job_id: str) -> None:
        """Record how the job's ended process ended (once, whoever saw it end first)."""
        with self._lock:
            proc = self._procs.pop(job_id, None)
            if proc is None:
                return
            ending = self._ending.pop(job_id, None)
            code = proc.wait()
            fields: dict = {"finished": time.time(), "exit_code": code, "pid": None}
            if ending == "cancelled":
                fields.update(state="cancelled", error="Cancelled while it ran.")
            elif ending == "interrupted":
                fields.update(state="interrupted", error=_interrupted(self._get(job_id)))
            else:
                error, summary = self._outcome(job_id, code)
                fields.update(state="failed" if error else "succeeded", error=error,
                              summary=summary)
            self.store.update(job_id, **fields)

    def _outcome(self, job_id: str, code: int) -> tuple[str | None, dict]:
        """``(None, summary)`` when the job did its work, else ``(reason, {})``."""
        from ..bundle import Bundle

        if code != 0:
            return _failure(self.log_path(job_id), code), {}
        run_dir = self.run_dir(job_id)
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
            Bundle.load(run_dir)
        except Exception as err:
            return (f"Job {job_id} exited 0 but left no complete run in {run_dir}: "
                    f"{first_line(err)}. Its log (job.log) says what it did."), {}
        return None, _summary(metrics)

    def _get(self, job_id: str) -> JobRecord:
        job = self.store.get(job_id)
        if job is None:
            raise RequestError(f"There is no job {job_id!r}.", 404)
        return job


def _interrupted(job: JobRecord) -> str:
    return (f"The service stopped while job {job.job_id} ran (attempt {job.attempts}); resume it "
            "(a Keras run continues from its last checkpoint) or resubmit it.")


def _failure(log_path: Path, code: int) -> str:
    """The job's error paragraph: the last ``hepdask: error:`` paragraph of its log, else its
    exit code (or signal) and the log's last line."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    starts = [i for i, line in enumerate(lines) if line.startswith(_ERROR)]
    if starts:
        paragraph = [lines[starts[-1]][len(_ERROR):]]
        for line in lines[starts[-1] + 1:]:
            if not line.strip() or _LOG_LINE.match(line):
                break
            paragraph.append(line)
        return "\n".join(paragraph)
    how = (f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in
           signal.valid_signals() else f"exited with code {code}")
    last = next((line for line in reversed(lines) if line.strip()), "")
    return f"The job {how}" + (f"; the last line of its log: {last}" if last else ".")


def _summary(metrics: dict) -> dict:
    """The headline values of metrics.json (see :func:`hepdask.evaluate.summary`)."""
    ams = metrics.get("ams") or {}
    events = {split: metrics.get(f"n_{split}") for split in ("train", "validation", "test")}
    summary = {
        "engine": metrics.get("engine"),
        "auc": metrics.get("auc"),
        "auc_weighted": metrics.get("auc_weighted"),
        "accuracy": metrics.get("accuracy"),
        "ams": (ams.get("best") or {}).get("value"),
        "ams_top": (ams.get("top") or {}).get("value"),
        "best_iteration": metrics.get("best_iteration"),
        "events": {k: v for k, v in events.items() if v is not None} or None,
        "data": (metrics.get("data") or {}).get("source"),
        "warning": metrics.get("warning"),
    }
    return {k: v for k, v in summary.items() if v is not None}


def _runs(pid: int, config: Path) -> bool:
    """Whether process ``pid`` is alive and its command line names ``config`` (a job's)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(config).encode() in cmdline.split(b"\0")


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
