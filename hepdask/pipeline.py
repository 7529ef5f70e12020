"""The public API: a run, step by step (config → dataset → specs → features → train → evaluate).

The CLI is a thin layer over :class:`Pipeline`, so a notebook can do the same::

    from hepdask import Pipeline
    from distributed import Client

    client = Client()
    pipe = Pipeline.from_config("configs/higgs.toml", client=client)
    print(pipe.specs().table())
    pipe.train()
    pipe.evaluate()

Every step writes into the run's staging directory (:attr:`Pipeline.staging_dir`, beside the run
directory), and :meth:`Pipeline.evaluate` (the last step, also of :meth:`Pipeline.run`) swaps it
in as a whole: the run directory holds a complete run, the previous one until then.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from . import evaluate as ev
from . import plots
from .bundle import write_bundle
from .config import Config, load_config
from .dataset import Dataset, open_dataset
from .errors import HepdaskError
from .features import Features, build_features, denormalize, make_layout
from .outputs import commit, open_staging, staging_path, write_json, write_text, writing
from .progress import Progress, compute
from .report import write_report
from .specs import Specs, cached_specs, compute_specs
from .train import train_xgboost
from .train.xgboost import training_workers

__all__ = ["Pipeline"]

NETWORKS = ("keras", "torch")  # the engines with checkpoints and --resume
PLOTTED_EVENTS = 100_000  # test events whose features are plotted (features.png, correlation.png)

log = logging.getLogger("hepdask")


class Pipeline:
    """One training run. Each step runs the steps before it when they have not run yet.

    Parameters
    ----------
    config
        The validated configuration (see :func:`hepdask.config.load_config`).
    output
        The run directory; ``<config.output>/<config.name>`` by default. The steps build the run
        in :attr:`staging_dir` and :meth:`evaluate` replaces the run directory with it.
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
        self.data_source: dict | None = None  # the files read and their source (metrics.json)
        self.prepared = None  # the PreparedData of [prepare], once done
        self._higgsml = None  # the PreparedData every file read comes from, if one: its leaderboard
        self._prepare_checked = False
        self.specs_reused: bool | None = None
        self._dataset: Dataset | None = None
        self._specs: Specs | None = None
        self._features: Features | None = None
        self._model = None  # XGBoostModel, KerasModel, TorchModel or SklearnModel
        self._device: str | None = None  # the device training runs on, once known
        self._scores: dict[str, tuple] = {}  # split -> the model's (scores, labels, weights)
        self._reads: dict[str, list] | None = None  # partitions held for the specs and features
        self._staged = False  # the staging directory is open for this pipeline's run
        self._committed = False  # this pipeline has swapped a run into run_dir
        self._log: _RunLog | None = None  # run.log while a step writes
        self._depth = 0  # nesting of recording()
        # written to <run>/config.toml: the config file, or the TOML of a converted workflow
        self.config_text: str | None = Path(config.source).read_text() if config.source else None

    @classmethod
    def from_config(cls, path: str | Path, *, overrides: Sequence[str] = (),
                    output: str | Path | None = None, client=None,
                    progress: bool = True) -> Pipeline:
        """Read ``path`` (with ``key=value`` overrides) and make a pipeline of it."""
        return cls(load_config(path, overrides), output=output, client=client,
                   progress=progress)

    def prepare_data(self):
        """Create or update the files of a known data set (``[prepare]``): see
        :func:`hepdask.higgsml.prepare`. Returns its :class:`~hepdask.higgsml.PreparedData`, or
        None without ``[prepare]``."""
        self._prepare_checked = True
        prepare = self.config.prepare
        if prepare.dataset is None:
            return None
        from . import higgsml

        with self.recording(), self._timed("prepare"):
            self.prepared = higgsml.prepare(
                prepare.directory, csv=prepare.csv, download=prepare.download,
                synthetic_events=prepare.synthetic_events, seed=prepare.seed,
                events_per_file=prepare.events_per_file,
            )
        return self.prepared

    def dataset(self) -> Dataset:
        """Files, trees and feature branches of every sample, checked against each other."""
        if self._dataset is None:
            with self.recording():  # checks that the run can be written, before the data are read
                if not self._prepare_checked:
                    self.prepare_data()
                with self._timed("dataset"):
                    dataset = open_dataset(self.config)
                    self.data_source = self._describe_data(dataset)
                    self._dataset = dataset
        return self._dataset

    def _describe_data(self, dataset: Dataset) -> dict:
        """What ``metrics.json`` says about the data: every file each sample opened, and the
        source of those a prepared HiggsML directory lists (``synthetic``, ``csv``,
        ``download``), whatever ``[prepare]`` says. Announces synthetic files; a ``[prepare]``
        directory none of whose files are read is an error."""
        from . import higgsml
        from .config import prepare_not_read

        found = higgsml.find_prepared(f.path for s in dataset.samples for f in s.files)
        directories = {p.directory.resolve(): p for p in found.values()}
        self._higgsml = next(iter(directories.values())) if len(directories) == 1 and len(
            found) == sum(len(s.files) for s in dataset.samples) else None
        remote = any("://" in f.path for s in dataset.samples for f in s.files)
        if self.prepared is not None:
            if self.prepared.directory.resolve() in directories:
                directories.pop(self.prepared.directory.resolve())  # prepare announced its own
            elif remote:
                log.warning("The samples read remote files: hepdask cannot tell whether they are "
                            "those prepared in %s; metrics.json records them as config files.",
                            self.config.prepare.directory)
            else:
                raise prepare_not_read(self.config.prepare.directory,
                                       {s.name: [f.path for f in s.files] for s in dataset.samples})
        for prepared in directories.values():
            higgsml.announce_synthetic(prepared, "reading")
        sources = {p.source for p in found.values()}
        if len(found) < sum(len(s.files) for s in dataset.samples):
            sources.add("config files")  # files that no HiggsML manifest lists
        record: dict = {"source": next(iter(sources)) if len(sources) == 1 else "mixed"}
        if len(sources) > 1:
            record["sources"] = sorted(sources)
        if found:
            record["dataset"] = "higgs"
            record["format"] = "+".join(sorted({p.format for p in found.values()}))
        record["samples"] = {
            s.name: {"events": s.n_events,
                     "files": [{"path": f.path, "entries": f.entries,
                                **({"source": found[f.path].source} if f.path in found else {})}
                               for f in s.files]}
            for s in dataset.samples
        }
        return record

    def specs(self, *, client=None, reuse: bool = True, keep_reads: bool = False) -> Specs:
        """Per-branch statistics, from ``specs.json`` of the staging or the run directory when
        still valid for the data (``reuse``), else computed; saved in the staging directory.

        With ``keep_reads`` the partitions read to compute them stay on the workers for
        :meth:`features`: one read of the files instead of two, when the features are persisted
        right after (as :meth:`train` does).
        """
        if self._specs is None or not reuse:
            dataset = self.dataset()
            client = self._client(client, required=False)
            with self.recording(), self._phase("specs", client):
                self._specs = self.cached_specs() if reuse else None
                if self._specs is None:
                    self.specs_reused = False
                    if keep_reads and client is not None:
                        self._reads = dataset.read(client)
                    self._specs = compute_specs(dataset, client=client, events=self._reads)
                    self._specs.save(self.staging_dir / "specs.json")
                    log.info("Specs computed: %s", self.staging_dir / "specs.json")
                for error in self._specs.read_errors:
                    log.warning("Skipped %s", error.describe())
        return self._specs

    def cached_specs(self) -> Specs | None:
        """The specs saved in the staging or the run directory, when still valid for the data
        (copied into the staging directory); else None. Needs no cluster: ``hepdask specs``
        shows them without starting one."""
        if self._specs is None:
            with self.recording():
                path = self.staging_dir / "specs.json"
                self.specs_reused = False
                for source in (path, self.run_dir / "specs.json"):
                    self._specs = cached_specs(self.dataset(), source)
                    if self._specs is not None:
                        self.specs_reused = True
                        if source != path:
                            write_text(path, source.read_text())  # the run directory's, unchanged
                        log.info("Specs reused: %s", source)
                        break
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
        """Fit the configured engine and save the model in the staging directory.

        ``xgboost`` persists the features on the workers and trains there; ``keras``, ``torch``
        and ``sklearn`` stream them to this process, so the data never need to fit in memory.
        ``resume`` continues a Keras or torch run from the last checkpoint of the unfinished
        run in the staging directory.
        """
        with self.recording():
            return self._train(self._client(client), resume)

    def _train(self, client, resume: bool):
        engine = self.config.train.engine
        staging = self.staging_dir
        device = self.device(client)
        if engine not in NETWORKS:  # the checkpoints of an unfinished network run are not this run's
            shutil.rmtree(staging / "checkpoints", ignore_errors=True)
        if engine == "xgboost":
            features = self.features(client=client, keep_reads=True)
            placement = training_workers(client, self.config.train.xgboost, device, features)
            with self._phase("features", client):  # straight to the workers that train
                self._features = features = features.persist(client=client,
                                                             workers=placement.workers)
                self._reads = None  # the features hold what training needs; free the raw reads
            with self._phase("train", client, unit="rounds") as step:
                self._model = train_xgboost(client, features, self.config.train.xgboost,
                                            self.specs().n_classes, on_round=step,
                                            retries=self.config.train.retries,
                                            timeout=self.config.train.timeout, device=device)
        else:
            features = self.features(client=client)
            train = self.config.train
            with self._phase("train", client, unit="epochs") as step:
                if engine in NETWORKS:
                    if engine == "keras":
                        from .train.keras import train_keras as train_network
                    else:
                        from .train.torch import train_torch as train_network

                    self._model = train_network(client, features, self.specs(),
                                                getattr(train, engine), train.stream, staging,
                                                device=device, resume=resume, on_epoch=step)
                else:
                    from .train.sklearn import train_sklearn

                    self._model = train_sklearn(client, features, self.specs(), train.sklearn,
                                                train.stream, on_epoch=step)
            write_json(staging / "history.json", self._model.history)
        log.info("Training weights: the event weights times %s", ", ".join(
            f"{factor:.4g} (class {label})" for label, factor in self._model.weight_factors.items()))
        self._scores = {}
        self._check_learned(client)
        self._model.save(staging)
        config = self.config
        classes = {c: [s.name for s in config.samples if s.label == c]
                   for c in sorted(self.specs().classes)}
        write_bundle(staging, name=config.name, engine=engine, model=self._model,
                     layout=features.layout, preprocess=self.dataset().preprocess,
                     classes=classes, tree=config.data.tree, step_size=config.data.step_size)
        return self._model

    def device(self, client=None) -> str:
        """Where the engine trains, ``"cuda"`` or ``"cpu"``: ``train.device`` resolved (see
        :mod:`hepdask.devices`; for XGBoost, by asking the workers). Raises the error of a
        "cuda" without GPU, which :meth:`run` does before reading any data."""
        if self._device is None:
            from . import devices

            requested, engine = self.config.train.device, self.config.train.engine
            if engine == "xgboost":
                self._device = devices.xgboost_device(self._client(client), requested)
            elif engine == "torch":
                self._device = devices.torch_device(requested)
            elif engine == "keras":
                self._device = devices.keras_device(requested)
            else:
                self._device = "cpu"
            log.info("Training device: %s (train.device = %r)", self._device, requested)
        return self._device

    def scores(self, split: str = "test", *, client=None):
        """(scores, labels, weights) of ``split`` as NumPy arrays, in the split's row order
        (partition by partition), from the trained model: what :meth:`evaluate` measures."""
        client = self._client(client)
        model = self._model or self.train(client=client)
        if split not in self._scores:
            self._scores[split] = model.scores(client, self.features(client=client), split)
        return self._scores[split]

    def _check_learned(self, client) -> None:
        """Stop, before the model is saved, when its validation scores (the test scores when
        the validation split is empty) show no sign of separating the classes."""
        split = "validation" if len(self.features().validation) else "test"
        scores, y, _ = self.scores(split, client=client)
        reason = ev.learned_nothing(scores, y)
        if reason is None:
            return
        train = self.config.train
        raise HepdaskError(
            f"The {train.engine} model learned nothing: on the {split} split, {reason}, so its "
            "scores do not separate the classes; no model was saved. Likely causes: event "
            "weights that are zero or tiny for a class (check the samples' weight expressions; "
            "hepdask scales the training weights to average 1, with the factors in run.log), "
            "XGBoost's min_child_weight or another regularisation too large for the events of "
            "a leaf (train.xgboost.params), a label that is constant or unrelated to the "
            "features (check the samples' label keys and the selection), features that are "
            "all missing (see the missing counts in specs.json), or too few events "
            f"({len(self.features().train)} in the training split)."
        )

    def evaluate(self, *, client=None) -> dict:
        """Metrics and plots on the test split, and the run is complete: metrics.json is written
        last and the staging directory replaces the run directory (the previous run is removed).

        Evaluating again later rebuilds the committed run with the new metrics and plots.
        """
        with self.recording():
            metrics = self._evaluate(self._client(client))
            self._commit(metrics)
        return metrics

    def _evaluate(self, client) -> dict:
        model = self._model or self.train(client=client)
        with self._phase("evaluate", client):
            validation = self.scores("validation", client=client)
            scores, y, w = self.scores("test", client=client)
            totals = self._class_totals()
            cfg = self.config.evaluate
            metrics = ev.evaluate_scores(scores, y, w, class_totals=totals, b_reg=cfg.ams_breg,
                                         top_fraction=cfg.top_fraction, extra=cfg.metrics,
                                         validation=validation)
            train = self.scores("train", client=client)
            inputs = self._feature_sample(client)
        with self._timed("plots"):
            plots.plot_all(
                self.staging_dir, test=(scores, y, w), validation=validation, train=train,
                metrics=metrics, class_totals=totals, importance=model.importance(),
                history=model.history, engine=self.config.train.engine,
                best_iteration=model.best_iteration, inputs=inputs, bins=cfg.bins,
                run=self.config.name, synthetic=self.data_source.get("source") == "synthetic",
                class_names=self._class_names())
        metrics.update({
            "engine": self.config.train.engine,
            "device": self.device(client),
            "n_train": len(self.features().train),
            "n_validation": len(self.features().validation),
            "best_iteration": model.best_iteration,
            "model": model.bundle_info(),
            "training_weights": {"class_factors": {str(label): factor for label, factor
                                                   in model.weight_factors.items()}},
            "features": len(model.feature_names),
            "data": self.data_source,
            "selection": {name: {"read": s.read, "selected": s.events}
                          for name, s in self.specs().samples.items()},
            "read_errors": [error.to_dict() for error in self.specs().read_errors],
            "specs_reused": self.specs_reused,
            "seeds": self._seeds(model),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        })
        if self._higgsml is not None and "ams" in metrics:  # HiggsML: the challenge's scoring
            from .bundle import Bundle
            from .higgsml.challenge import LEADERBOARD, leaderboard_block
            from .predict import score_files

            prepared, sets = self._higgsml, {}
            series = [name for name in LEADERBOARD if prepared.files.get(name)]
            if series:
                bundle = Bundle.load(self.staging_dir)
                with self._phase("higgsml", client):
                    sets = {name: score_files(bundle, [str(p) for p in prepared.files[name]],
                                              client=client, tree=prepared.tree,
                                              passthrough=["KaggleWeight", "Label"],
                                              data=self.config.data) for name in series}
                metrics["timings_s"]["higgsml"] = round(self.timings["higgsml"], 3)
            metrics["higgsml"] = leaderboard_block(format=prepared.format, source=prepared.source,
                                                   ams=metrics["ams"], sets=sets,
                                                   b_reg=self.config.evaluate.ams_breg)
        write_report(self.staging_dir, metrics, name=self.config.name,
                     config_text=self.config_text, specs=self.specs())
        write_json(self.staging_dir / "metrics.json", metrics)
        return metrics

    def _feature_sample(self, client) -> plots.FeatureSample:
        """At most :data:`PLOTTED_EVENTS` test events' features, in physical units, for the
        input plots (only those rows leave the workers)."""
        features = self.features(client=client)
        (sample,) = compute(client, features.test.sample(PLOTTED_EVENTS))
        sample = np.asarray(sample)
        X = denormalize(np.array(sample[:, :-2]), features.layout)
        return plots.FeatureSample(X, sample[:, -2].astype(np.int64), sample[:, -1],
                                   features.names)

    def _class_names(self) -> dict[int, str]:
        """Each class's name for the plots: its samples' names."""
        return {label: " + ".join(s.name for s in self.config.samples if s.label == label)
                for label in sorted(self.specs().classes)}

    def run(self, *, client=None, resume: bool = False, reuse_specs: bool = True,
            report: bool = False) -> dict:
        """Every step, then the run directory is replaced as a whole; returns the metrics.

        ``reuse_specs=False`` computes the specs again; ``report`` saves Dask's performance
        report of the steps as dask-report.html in the run.
        """
        with self.recording():
            try:
                with _performance_report(self.staging_dir / "dask-report.html" if report
                                         else None):
                    self.device(client)  # a "cuda" without GPU, before the data are read
                    self.specs(client=client, reuse=reuse_specs)
                    self.train(client=client, resume=resume)
                    metrics = self._evaluate(self._client(client))
                self._commit(metrics)
                return metrics
            finally:
                if self._progress is not None:
                    self._progress.close()

    @property
    def staging_dir(self) -> Path:
        """Where the steps write until :meth:`evaluate` completes the run:
        ``<parent>/.<name>.staging`` beside :attr:`run_dir`. An interrupted or failed run's
        files stay there, with its run.log and the network checkpoints ``resume`` continues from."""
        return staging_path(self.run_dir)

    @contextlib.contextmanager
    def recording(self) -> Iterator[logging.Handler]:
        """Open the staging directory and log into its run.log for the block; yields the log.

        The first block of a run creates the staging directory, checked writable, with the
        config (an unfinished run there keeps only its specs and checkpoints; after a commit,
        the staging directory starts as a copy of the committed run). While it lasts, the
        ``hepdask`` logger logs at least INFO. An error or interruption that ends the outermost
        block goes into run.log, and says where the unfinished run is. Every step that writes
        runs in one; the CLI holds one around a whole run. Blocks nest.
        """
        if self._depth:
            self._depth += 1
            try:
                yield self._log
            finally:
                self._depth -= 1
            return
        opened = not self._staged
        if opened:
            started_over = open_staging(self.run_dir, seed=self._committed)
            self._staged = True
        self._log = _RunLog(self.staging_dir / "run.log")
        level = log.level
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
        log.addHandler(self._log)
        self._depth = 1
        try:
            if opened:
                if started_over:
                    log.info("Starting over in %s: removed the files of an unfinished run (its "
                             "specs.json and network checkpoints stay, for reuse and --resume)",
                             self.staging_dir)
                if self.config_text is not None:
                    write_text(self.staging_dir / "config.toml", self.config_text)
                write_json(self.staging_dir / "config.resolved.json", self.config.to_dict())
            yield self._log
        except HepdaskError as err:
            if self._staged:
                err.args = (f"{err} {self.where()}",)
            self._log.write(logging.ERROR, str(err))
            raise
        except KeyboardInterrupt as err:
            err.args = (self.where(),)
            self._log.write(logging.ERROR, f"Interrupted; {self.where()}")
            raise
        except Exception as err:
            if self._staged:
                err.add_note(self.where())
            self._log.write(logging.ERROR, f"Failed; {self.where()}", sys.exc_info())
            raise
        finally:
            self._depth = 0
            log.removeHandler(self._log)
            log.setLevel(level)
            self._log.close()

    def where(self) -> str:
        """Where this run's files are, in a sentence: for the messages of a run cut short."""
        if not self._staged:
            return (f"the run in {self.run_dir} is complete." if self._committed
                    else f"nothing was written to {self.run_dir}.")
        kept = (f"{self.run_dir} is as it was" if self.run_dir.exists()
                else f"nothing was written to {self.run_dir}")
        note = f"{kept}; this run's files, with its run.log, are in {self.staging_dir}"
        if (self.staging_dir / "checkpoints" / "state.json").is_file():
            note += " (--resume continues its network's training from the last checkpoint)"
        return note + "."

    def _commit(self, metrics: dict) -> None:
        """The run is complete: log its summary, then swap it into the run directory."""
        self._log.write(logging.INFO, ev.summary(metrics, self.run_dir))
        try:
            commit(self.staging_dir, self.run_dir)
        finally:  # also when interrupted while the previous run was being removed
            if not self.staging_dir.exists():
                self._staged, self._committed = False, True

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


class _RunLog(logging.FileHandler):
    """run.log: every record at INFO and above, whatever the terminal shows."""

    def __init__(self, path: Path):
        super().__init__(path, mode="a", encoding="utf-8")
        self.setLevel(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def write(self, level: int, message: str, exc_info=None) -> None:
        """Log ``message`` here only: what the terminal shows otherwise (the summary on stdout,
        the error paragraph)."""
        self.handle(log.makeRecord(log.name, level, __file__, 0, message, (), exc_info))

    def handleError(self, record: logging.LogRecord) -> None:
        """A full disk fails the run at its next output, with one paragraph; not here."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


@contextlib.contextmanager
def _performance_report(path: Path | None) -> Iterator[None]:
    """Dask's performance report of the block, written (whole) also when the block fails."""
    if path is None:
        yield
        return
    from distributed import performance_report

    tmp = path.with_name(f".{path.name}.part")
    try:
        with performance_report(filename=str(tmp)):
            yield
    finally:
        if tmp.exists():
            with writing(path):
                os.replace(tmp, path)
            log.info("Dask performance report: %s", path)
