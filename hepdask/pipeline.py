"""The public API: a run, step by step (config → dataset → specs → features → train → evaluate).

The CLI is a thin layer over :class:`Pipeline`, so a notebook can do the same::

    from hepdask import Pipeline
    from distributed import Client

    client = Client()
    pipe = Pipeline.from_config("configs/higgs.toml", client=client)
    print(pipe.specs().table())
    pipe.train()
    pipe.evaluate()
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from . import evaluate as ev
from .bundle import write_bundle
from .config import Config, load_config
from .dataset import Dataset, open_dataset
from .errors import HepdaskError
from .features import Features, build_features, make_layout
from .outputs import write_json, write_text
from .progress import Progress
from .specs import Specs, cached_specs, compute_specs
from .train import train_xgboost

__all__ = ["Pipeline"]

log = logging.getLogger("hepdask")


class Pipeline:
    """One training run. Each step runs the steps before it when they have not run yet.

    Parameters
    ----------
    config
        The validated configuration (see :func:`hepdask.config.load_config`).
    output
        The run directory; ``<config.output>/<config.name>`` by default.
    client
        A :class:`distributed.Client`; the current default client when omitted.
    progress
        Draw a progress bar per phase on stderr. The phases and the training curves are
        published to the cluster (its dashboard's ``/hepdask`` page) either way.
    """

    def __init__(self, config: Config, *, output: str | Path | None = None, client=None,
                 progress: bool = True):
        self.config = config
        self.run_dir = Path(output) if output is not None else config.run_dir
        self.client = client
        self.show_progress = progress
        self._progress: Progress | None = None
        self.timings: dict[str, float] = {}
        self.data_source: dict | None = None
        self.specs_reused: bool | None = None
        self._dataset: Dataset | None = None
        self._specs: Specs | None = None
        self._features: Features | None = None
        self._model = None  # XGBoostModel, KerasModel or SklearnModel
        self._reads: dict[str, list] | None = None  # partitions held for the specs and features
        # written to <run>/config.toml: the config file, or the TOML of a converted workflow
        self.config_text: str | None = Path(config.source).read_text() if config.source else None

    @classmethod
    def from_config(cls, path: str | Path, *, overrides: Sequence[str] = (),
                    output: str | Path | None = None, client=None,
                    progress: bool = True) -> Pipeline:
        """Read ``path`` (with ``key=value`` overrides) and make a pipeline of it."""
        return cls(load_config(path, overrides), output=output, client=client,
                   progress=progress)

    def prepare_data(self) -> dict | None:
        """Create the files of a known data set (``[prepare]``) if they are missing."""
        prepare = self.config.prepare
        if prepare.dataset is None:
            return None
        from . import higgsml

        with self._timed("prepare"):
            prepared = higgsml.prepare(
                prepare.directory, csv=prepare.csv, download=prepare.download,
                synthetic_events=prepare.synthetic_events, seed=prepare.seed,
                events_per_file=prepare.events_per_file,
            )
        self.data_source = {"dataset": prepare.dataset, "source": prepared.source,
                            "directory": str(prepared.directory), "events": prepared.n_events}
        return self.data_source

    def dataset(self) -> Dataset:
        """Files, trees and feature branches of every sample, checked against each other."""
        if self._dataset is None:
            if self.data_source is None:
                self.prepare_data()
            with self._timed("dataset"):
                self._dataset = open_dataset(self.config)
        return self._dataset

    def specs(self, *, client=None, reuse: bool = True, keep_reads: bool = False) -> Specs:
        """Per-branch statistics, from ``specs.json`` in the run directory when still valid.

        With ``keep_reads`` the partitions read to compute them stay on the workers for
        :meth:`features`: one read of the files instead of two, when the features are persisted
        right after (as :meth:`train` does).
        """
        if self._specs is None or not reuse:
            dataset = self.dataset()
            path = self.run_dir / "specs.json"
            if not reuse and path.exists():
                path.unlink()
            client = self._client(client, required=False)
            with self._phase("specs", client):
                self._specs = cached_specs(dataset, path)
                self.specs_reused = self._specs is not None
                if not self.specs_reused:
                    if keep_reads and client is not None:
                        self._reads = dataset.read(client)
                    self._specs = compute_specs(dataset, client=client, events=self._reads)
                    self._specs.save(path)
            log.info("Specs %s: %s", "reused" if self.specs_reused else "computed", path)
            for error in self._specs.read_errors:
                log.warning("Skipped %s", error.describe())
        return self._specs

    def features(self, *, client=None, keep_reads: bool = False) -> Features:
        """Lazy float32 feature arrays of the train, validation and test splits."""
        if self._features is None:
            specs = self.specs(client=client, keep_reads=keep_reads)
            _check_classes(specs, self.config)
            layout = make_layout(self.dataset(), specs, self.config.features)
            self._features = build_features(self.dataset(), layout, specs, events=self._reads)
            log.info("Features: %d columns; %d train, %d validation, %d test events",
                     layout.width, len(self._features.train), len(self._features.validation),
                     len(self._features.test))
        return self._features

    def train(self, *, client=None, resume: bool = False):
        """Fit the configured engine and save the model in the run directory.

        ``xgboost`` persists the features on the workers and trains there; ``keras`` and
        ``sklearn`` stream them to this process, so the data never need to fit in memory.
        ``resume`` continues a Keras run from its last checkpoint.
        """
        client = self._client(client)
        engine = self.config.train.engine
        if engine == "xgboost":
            features = self.features(client=client, keep_reads=True)
            with self._phase("features", client):
                self._features = features = features.persist(client=client)
                self._reads = None  # the features hold what training needs; free the raw reads
            with self._phase("train", client, unit="rounds") as step:
                self._model = train_xgboost(client, features, self.config.train.xgboost,
                                            self.specs().n_classes, on_round=step,
                                            retries=self.config.train.retries,
                                            timeout=self.config.train.timeout)
        else:
            features = self.features(client=client)
            train = self.config.train
            with self._phase("train", client, unit="epochs") as step:
                if engine == "keras":
                    from .train.keras import train_keras

                    self._model = train_keras(client, features, self.specs(), train.keras,
                                              train.stream, self.run_dir, resume=resume,
                                              on_epoch=step)
                else:
                    from .train.sklearn import train_sklearn

                    self._model = train_sklearn(client, features, self.specs(), train.sklearn,
                                                train.stream, on_epoch=step)
            write_json(self.run_dir / "history.json", self._model.history)
        self._model.save(self.run_dir)
        config = self.config
        classes = {c: [s.name for s in config.samples if s.label == c]
                   for c in sorted(self.specs().classes)}
        write_bundle(self.run_dir, name=config.name, engine=engine, model=self._model,
                     layout=features.layout, preprocess=self.dataset().preprocess,
                     classes=classes, tree=config.data.tree, step_size=config.data.step_size)
        return self._model

    def scores(self, split: str = "test", *, client=None):
        """(scores, labels, weights) of ``split`` as NumPy arrays, in the split's row order
        (partition by partition), from the trained model: what :meth:`evaluate` measures."""
        client = self._client(client)
        model = self._model or self.train(client=client)
        return model.scores(client, self.features(client=client), split)

    def evaluate(self, *, client=None) -> dict:
        """Metrics and plots on the test split; writes metrics.json (last, so it marks a complete run)."""
        client = self._client(client)
        model = self._model or self.train(client=client)
        with self._phase("evaluate", client):
            scores, y, w = self.scores("test", client=client)
            totals = self._class_totals()
            cfg = self.config.evaluate
            metrics = ev.evaluate_scores(scores, y, w, class_totals=totals, b_reg=cfg.ams_breg,
                                         top_fraction=cfg.top_fraction, extra=cfg.metrics)
            ev.plot_all(self.run_dir, scores, y, w, metrics, model.importance(), model.history,
                        class_totals=totals, bins=cfg.bins)
        metrics.update({
            "engine": self.config.train.engine,
            "n_train": len(self.features().train),
            "n_validation": len(self.features().validation),
            "best_iteration": model.best_iteration,
            "features": len(model.feature_names),
            "data": self.data_source or {"source": "config files"},
            "selection": {name: {"read": s.read, "selected": s.events}
                          for name, s in self.specs().samples.items()},
            "read_errors": [error.to_dict() for error in self.specs().read_errors],
            "specs_reused": self.specs_reused,
            "seeds": self._seeds(model),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        })
        write_json(self.run_dir / "metrics.json", metrics)
        return metrics

    def run(self, *, client=None, resume: bool = False) -> dict:
        """Every step, writing the whole run directory; returns the metrics."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with _log_to(self.run_dir / "run.log"):
            if self.config_text is not None:
                write_text(self.run_dir / "config.toml", self.config_text)
            write_json(self.run_dir / "config.resolved.json", self.config.to_dict())
            try:
                self.specs(client=client)
                self.train(client=client, resume=resume)
                return self.evaluate(client=client)
            finally:
                if self._progress is not None:
                    self._progress.close()

    def _client(self, client, *, required: bool = True):
        client = client or self.client
        if client is None:
            from distributed import default_client

            try:
                client = default_client()
            except ValueError:
                if required:
                    raise HepdaskError(
                        "This step needs a Dask cluster: pass client=... (e.g. "
                        "distributed.Client()) or use hepdask.cluster.connect."
                    ) from None
        return client

    def _seeds(self, model) -> dict[str, int]:
        """The seeds that, with the data, the config and the number of workers, fix the model."""
        seeds = {"split": self.config.split.seed}
        if self.config.train.engine == "xgboost":
            seeds["xgboost"] = int(model.params.get("seed", model.params.get("random_state")) or 0)
        else:
            seeds["stream"] = self.config.train.stream.seed
        return seeds

    def _class_totals(self) -> dict[int, float]:
        """Sum of weights per class over all splits (after the selection), from the specs."""
        return {label: spec.weight_sum for label, spec in self.specs().classes.items()}

    @contextlib.contextmanager
    def _phase(self, phase: str, client, *, unit: str = "tasks") -> Iterator[Callable]:
        """A timed phase, published to the cluster with a progress bar. Yields
        ``step(step, total, metrics)`` for the trainers to publish their rounds or epochs
        (picklable: XGBoost calls it on a worker)."""
        if client is None:
            with self._timed(phase):
                yield lambda *args: None
            return
        if self._progress is None or self._progress.client is not client:
            self._progress = Progress(client, self.config.name, show=self.show_progress)
        with self._timed(phase), self._progress.phase(phase, unit=unit):
            yield functools.partial(self._progress.channel.step, unit=unit)

    @contextlib.contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start


def _check_classes(specs: Specs, config: Config) -> None:
    """Every class 0 .. n-1 must have selected events, and there must be at least two."""
    present = sorted(specs.classes)
    if len(present) < 2 or present != list(range(len(present))):
        labels = {s.name: s.label for s in config.samples}
        raise HepdaskError(
            f"The selected events have the classes {present} (sample labels: {labels}); a "
            "classifier needs events of at least two classes, numbered 0, 1, 2, ... without "
            "gaps (0 = background and 1 = signal for two). Check the samples' 'label' keys and "
            "that the selection keeps events of every class."
        )


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
