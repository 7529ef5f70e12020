"""Progress of a run: a bar per phase in the terminal, and the model learning on the dashboard.

Every phase (specs, features, train, evaluate) and every boosting round or epoch is
published as a Dask event under :data:`TOPIC` (``log_event``), from this process or from
the worker that trains. Two readers:

* :class:`Progress`, in the process that runs the pipeline, draws one bar per phase: tasks
  done for the Dask phases (fed by the scheduler), rounds or epochs with the latest metrics
  for training (fed by the events, so it shows what the cluster received);
* :class:`DashboardPlugin`, on the scheduler, keeps the curves and serves them as the page
  ``<dashboard>/hepdask`` (a Bokeh plot polling ``hepdask/progress.json``), so someone
  watching the dashboard, anywhere, sees the model learn.

With ``HEPDASK_EVENTS=<path>`` in the environment, :class:`Progress` also appends every message
of its run to that file, one JSON line each (how ``hepdask service`` follows its jobs without
the cluster); :class:`RunState` folds such messages into the state of a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import html
import json
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dask
import distributed
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.diagnostics.progressbar import ProgressBar as _SchedulerFeed
from distributed.utils import is_kernel
from tornado.web import RequestHandler

__all__ = ["EVENTS", "TOPIC", "Channel", "DashboardPlugin", "Progress", "RunState", "compute",
           "dashboard_page", "install_dashboard", "iterate"]

log = logging.getLogger("hepdask")

TOPIC = "hepdask-progress"
EVENTS = "HEPDASK_EVENTS"  # the environment variable naming a run's events file
PAGE = "hepdask"

_current: contextvars.ContextVar[Progress | None] = contextvars.ContextVar(
    "hepdask_progress", default=None)


@dataclass(frozen=True)
class Channel:
    """Where the messages of one run go. Picklable, so that a training task on a worker
    publishes its rounds itself (XGBoost) and the central trainer its epochs (Keras)."""

    run: str
    name: str

    def message(self, kind: str, **fields: Any) -> dict:
        return {"run": self.run, "name": self.name, "kind": kind, "time": time.time(), **fields}

    def publish(self, kind: str, **fields: Any) -> dict:
        """Send a message to the cluster's :data:`TOPIC`; returns it."""
        message = self.message(kind, **fields)
        try:
            sender = distributed.get_worker()
        except ValueError:
            sender = distributed.get_client()
        sender.log_event(TOPIC, message)
        return message

    def step(self, step: int, total: int, metrics: dict[str, float], unit: str = "rounds") -> None:
        """Training step ``step`` of ``total`` is done, with these metric values."""
        clean = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        self.publish("step", phase="train", step=int(step), total=int(total), unit=unit,
                     metrics=clean)


class Bar:
    """One line per phase on stderr: redrawn in place on a terminal or in a notebook, written
    once when the phase ends otherwise (logs and CI stay readable)."""

    width = 24

    def __init__(self, label: str, *, unit: str = "tasks", stream=None):
        self.label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.live = is_kernel() or getattr(self.stream, "isatty", lambda: False)()
        self.done, self.total, self.note = 0, None, ""
        self._start = time.perf_counter()
        self._drawn = 0.0
        self._length = 0

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        self.done, self.note = done, note
        if total is not None:
            self.total = total
        if self.live and time.perf_counter() - self._drawn > 0.1:
            self._draw("\r")

    def close(self) -> None:
        self._draw("\r" if self.live else "")
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, prefix: str) -> None:
        self._drawn = time.perf_counter()
        if self.total:
            filled = round(self.width * min(self.done, self.total) / self.total)
            bar = f"[{'#' * filled:<{self.width}}] {self.done}/{self.total} {self.unit}"
        else:
            bar = f"{self.done} {self.unit}"
        line = f"hepdask: {self.label:<9} {bar} {self._drawn - self._start:6.1f} s {self.note}"
        self.stream.write(prefix + line.ljust(self._length))
        self.stream.flush()
        self._length = len(line)


class Progress:
    """The terminal bars and the published phases of one run (see the module docstring).

    Parameters
    ----------
    client
        The run's :class:`distributed.Client`.
    name
        The run's name, shown on the dashboard page.
    show
        Draw the bars (``--quiet`` turns them off); the events are published either way.
    events
        The file that every message of this run is appended to (default: the environment's
        ``HEPDASK_EVENTS``; none when unset).
    """

    def __init__(self, client, name: str, *, show: bool = True, stream=None,
                 events: str | os.PathLike | None = None):
        self.client = client
        self.channel = Channel(uuid.uuid4().hex[:12], name)
        self.show = show
        self.stream = stream
        self.events = events or os.environ.get(EVENTS) or None
        self._bar: Bar | None = None
        self._phase: str | None = None
        self._subscribed = False
        self._step = -1  # the latest training step received
        self._file = None
        self._writing = threading.Lock()  # phases come from this thread, steps from the loop's

    @contextlib.contextmanager
    def phase(self, name: str, *, unit: str = "tasks") -> Iterator[Progress]:
        """Announce ``name`` to the cluster and make this the progress that :func:`compute`
        and :func:`iterate` report to, for the duration of the block."""
        if name == "train" and (self.show or self.events) and not self._subscribed:
            self.client.subscribe_topic(TOPIC, self._on_event)
            self._subscribed = True
        self._record(self.channel.publish("phase", phase=name, state="start"))
        token = _current.set(self)
        self._phase = name
        self._bar = Bar(name, unit=unit, stream=self.stream) if self.show else None
        state = "error"
        try:
            yield self
            state = "end"
        finally:
            _current.reset(token)
            self._phase = None
            if name == "train" and state == "end" and self._subscribed:
                self._settle()
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            message = self.channel.message("phase", phase=name, state=state)
            with contextlib.suppress(Exception):  # a closed client must not hide the error
                message = self.channel.publish("phase", phase=name, state=state)
            self._record(message)

    def close(self) -> None:
        if self._subscribed:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(TOPIC)
            self._subscribed = False
        with self._writing:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _record(self, message: dict) -> None:
        """Append ``message`` to the events file (if any), flushed, so a reader sees it now."""
        if not self.events:
            return
        with self._writing:
            if self._file is None:
                self._file = open(self.events, "a", encoding="utf-8")
            self._file.write(json.dumps(message) + "\n")
            self._file.flush()

    def watch(self, futures: list) -> None:
        """Block until ``futures`` are done, drawing the scheduler's count of their tasks.

        The futures, not the count, say when: the scheduler keeps one count per set of keys,
        and two runs of one config on a shared cluster (the service's) have the same keys, so
        the later run's count replaces the earlier's, which then never ends."""
        if self._bar is None or not futures:
            distributed.wait(futures)
            return
        feed = _TaskFeed(futures, scheduler=self.client.scheduler.address, interval="200ms")
        feed.bar, feed.counted = self._bar, threading.Event()
        drawing = asyncio.run_coroutine_threadsafe(feed.listen(),
                                                   self.client.loop.asyncio_loop)
        try:
            distributed.wait(futures)
            # Stopped while the scheduler still waits for the keys (a compute done in less than
            # its 50 ms poll), the feed would make the scheduler log a CancelledError traceback.
            feed.counted.wait(timeout=1.0)
        finally:
            drawing.cancel()
            with contextlib.suppress(BaseException):  # let the feed stop drawing first
                drawing.result(timeout=1)
        if self._bar.total:  # done: the scheduler's last count may not have arrived
            self._bar.update(self._bar.total, note=self._bar.note)

    def _on_event(self, event: tuple[float, dict]) -> None:
        message = event[1]
        if message.get("run") != self.channel.run or message.get("kind") != "step":
            return  # this run's phase messages are recorded where they are published
        self._step = message["step"]
        self._record(message)
        if self._bar is not None:
            self._bar.unit = message.get("unit", self._bar.unit)
            metrics = message["metrics"]
            shown = [k for k in metrics if k.startswith(("validation", "val_"))] or list(metrics)
            note = "  ".join(f"{k} {metrics[k]:.4f}" for k in shown[:3])
            self._bar.update(message["step"], message["total"], note)

    def _settle(self, timeout: float = 2.0) -> None:
        """Let the last training events (sent asynchronously) reach the bar and the file."""
        deadline = time.perf_counter() + timeout
        step = None
        while time.perf_counter() < deadline:
            time.sleep(0.1)
            if self._step == step:
                return
            step = self._step


class _TaskFeed(_SchedulerFeed):
    """The scheduler's count of the tasks behind some futures (what ``distributed.progress``
    listens to), drawn on a :class:`Bar`."""

    bar: Bar
    counted: threading.Event  # set at the scheduler's first count

    def _draw_bar(self, remaining: int, all: int, **kwargs) -> None:
        self.bar.update(all - remaining, all)
        self.counted.set()


def _counting() -> Progress | None:
    """The progress whose bar counts tasks or batches now (training bars count steps)."""
    progress = _current.get()
    return progress if progress is not None and progress._phase != "train" else None


def compute(client, *collections):
    """``dask.compute`` on ``client``, with a bar of tasks when a :class:`Progress` phase is on."""
    progress = _counting()
    if client is None:
        return dask.compute(*collections)
    futures = client.compute(list(collections))
    if progress is not None:
        progress.watch(futures)
    return tuple(client.gather(futures))


def persist(client, collections: list) -> list:
    """``client.persist`` and wait, with a bar of tasks when a :class:`Progress` phase is on."""
    done = client.persist(collections)
    progress = _counting()
    futures = distributed.client.futures_of(done)
    if progress is not None:
        progress.watch(futures)
    else:
        distributed.wait(futures)
    return done


def iterate(items: Iterable, total: int, *, unit: str = "batches") -> Iterator:
    """``items``, counted on the current phase's bar (if any)."""
    progress = _counting()
    bar = progress._bar if progress is not None else None
    if bar is not None:
        bar.unit = unit
        bar.update(0, total)
    for done, item in enumerate(items, 1):
        yield item
        if bar is not None:
            bar.update(done, total)


# -- the dashboard page ------------------------------------------------------------------------


def install_dashboard(client) -> None:
    """Add the hepdask page to the scheduler's dashboard (once per scheduler)."""
    client.register_plugin(DashboardPlugin(), name=DashboardPlugin.name)


def dashboard_page(client) -> str:
    """The address of the hepdask page, next to the dashboard's status page."""
    link = client.dashboard_link
    return link[: -len("status")] + PAGE if link.endswith("status") else f"{link}/{PAGE}"


@dataclass
class RunState:
    """A run as its messages tell it: the phase, a status line, the latest step and metrics, and
    every step's metrics (what the dashboard page plots and ``hepdask service`` reports)."""

    name: str
    phase: str = ""
    status: str = "starting"
    steps: list[int] = field(default_factory=list)
    metrics: dict[str, list[float | None]] = field(default_factory=dict)
    total: int | None = None
    unit: str = ""
    latest: dict[str, float] = field(default_factory=dict)

    def record(self, message: dict) -> None:
        if message["kind"] == "phase":
            self.phase = message["phase"]
            self.status = f"{message['phase']}: " + {"start": "running", "end": "done"}.get(
                message["state"], "failed")
        elif message["kind"] == "step":
            index = len(self.steps)
            self.steps.append(message["step"])
            self.total, self.unit = message["total"], message.get("unit", "steps")
            self.latest = message["metrics"]
            for key, value in message["metrics"].items():
                self.metrics.setdefault(key, [None] * index).append(value)
            for values in self.metrics.values():
                values.extend([None] * (len(self.steps) - len(values)))
            latest = ", ".join(f"{k} {v:.4f}" for k, v in message["metrics"].items())
            self.status = (f"train: {self.unit[:-1]} {message['step']} of "
                           f"{message['total']}" + (f" ({latest})" if latest else ""))

    def to_json(self, run: str) -> dict:
        return {"run": run, "name": self.name, "status": self.status,
                "columns": {"step": self.steps, **self.metrics}}

    def snapshot(self) -> dict:
        """The phase, status, latest step of ``total`` with its metrics, and the history."""
        return {"phase": self.phase, "status": self.status,
                "step": self.steps[-1] if self.steps else None, "total": self.total,
                "unit": self.unit, "metrics": self.latest,
                "history": {"step": self.steps, **self.metrics}}


class DashboardPlugin(SchedulerPlugin):
    """On the scheduler: records the hepdask events and serves them on the dashboard.

    Routes: ``<prefix>/hepdask`` (the page) and ``<prefix>/hepdask/progress.json`` (the
    latest run: its status line and one column per metric, per round or epoch).
    """

    name = "hepdask-dashboard"
    idempotent = True
    keep_runs = 20

    def __init__(self):
        self.runs: dict[str, RunState] = {}

    async def start(self, scheduler) -> None:
        app = getattr(scheduler, "http_application", None)
        if app is None:
            return  # a scheduler without a dashboard: the events alone are kept
        prefix = _route_prefix(app)
        app.add_handlers(r".*", [
            (f"{prefix}{PAGE}", _PageHandler, {"plugin": self}),
            (f"{prefix}{PAGE}/progress.json", _JSONHandler, {"plugin": self}),
        ])

    def log_event(self, topic: str, msg: Any) -> None:
        if topic != TOPIC or not isinstance(msg, dict) or "run" not in msg:
            return
        run = self.runs.pop(msg["run"], None) or RunState(msg.get("name", "run"))
        self.runs[msg["run"]] = run  # the latest run is the last key
        run.record(msg)
        while len(self.runs) > self.keep_runs:
            del self.runs[next(iter(self.runs))]

    def latest(self) -> dict:
        if not self.runs:
            return {"run": None, "name": None, "status": "waiting for a hepdask run",
                    "columns": {"step": []}}
        run = next(reversed(self.runs))
        return self.runs[run].to_json(run)


def _route_prefix(app) -> str:
    """The dashboard's URL prefix (``distributed`` serves its own ``health`` route under it)."""
    for rule in app.wildcard_router.rules:
        regex = getattr(rule.matcher, "regex", None)
        if regex is not None and regex.pattern.endswith("health$"):
            return regex.pattern[: -len("health$")]
    return "/"


class _Handler(RequestHandler):
    def initialize(self, plugin: DashboardPlugin) -> None:
        self.plugin = plugin


class _JSONHandler(_Handler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(self.plugin.latest()))


class _PageHandler(_Handler):
    def get(self) -> None:
        self.write(_page(self.plugin.latest()))


def _page(latest: dict) -> str:
    """The page: a status line and the curves of the latest run, refreshed every second."""
    from bokeh.embed import components
    from bokeh.models import AjaxDataSource, CustomJS
    from bokeh.palettes import Category10_10
    from bokeh.plotting import figure

    head = ('<meta charset="utf-8"><title>hepdask</title>'
            '<style>body{font-family:sans-serif;margin:1.5em}</style>')
    status = f'<p id="hepdask-status">{html.escape(latest["status"])}</p>'
    title = html.escape(latest["name"] or "no run yet")
    names = [k for k in latest["columns"] if k != "step"]
    if not names:  # nothing to plot yet: look again soon
        return (f'<html><head>{head}<meta http-equiv="refresh" content="2"></head><body>'
                f'<h2>hepdask: {title}</h2>{status}</body></html>')
    adapter = CustomJS(args={"run": latest["run"]}, code="""
        const r = cb_data.response;
        document.getElementById("hepdask-status").textContent = r.status;
        if (r.run !== run) { window.location.reload(); }
        return r.columns;""")
    source = AjaxDataSource(data_url=f"{PAGE}/progress.json", polling_interval=1000,
                            mode="replace", adapter=adapter, data=latest["columns"])
    plots = []
    losses = [n for n in names if "loss" in n or "error" in n]
    for kind, group in (("loss", losses), ("metrics", [n for n in names if n not in losses])):
        if not group:
            continue
        plot = figure(title=kind, width=700, height=300, x_axis_label="round / epoch")
        for i, column in enumerate(group):
            plot.line("step", column, source=source, legend_label=column, line_width=2,
                      color=Category10_10[i % 10])
        plot.legend.location = "bottom_left" if kind == "loss" else "bottom_right"
        plots.append(plot)
    script, divs = components(plots)
    return (f'<html><head>{head}<script src="static/js/bokeh.min.js"></script>{script}</head>'
            f'<body><h2>hepdask: {title}</h2>{status}{"".join(divs)}</body></html>')
