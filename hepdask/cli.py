"""``python -m hepdask``: run, specs, predict, export, serve, data, convert-mlaas4hep. A thin layer
over :class:`hepdask.Pipeline`, :func:`hepdask.predict.predict` and :mod:`hepdask.serve`."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .config import CLUSTER_KINDS
from .errors import HepdaskError
from .export import FORMATS as EXPORT_FORMATS
from .predict import FORMATS

__all__ = ["main"]

log = logging.getLogger("hepdask")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.quiet)
    # A batch system's kill (SIGTERM) unwinds like Ctrl-C: clusters hepdask started are shut
    # down, no output is left half-written and a run leaves the previous run directory as it was.
    # `kill -USR1 PID` prints where every thread of a run that seems stuck is.
    with contextlib.suppress(ValueError):  # not in the main thread
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        return args.func(args)
    except HepdaskError as err:
        print(f"hepdask: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # a run says where its files are (Pipeline.where); other commands write each file whole
        where = str(err) or "every output file already written is complete."
        print(f"hepdask: interrupted; {where}", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hepdask", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def with_cluster(p: argparse.ArgumentParser, example: str = "split.seed=7") -> None:
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help=f"override a config key, e.g. {example}")
        cluster = p.add_argument_group("cluster (default: [cluster] of the config)")
        cluster.add_argument("--cluster", choices=CLUSTER_KINDS, help="cluster.kind")
        cluster.add_argument("--scheduler", metavar="ADDRESS",
                             help="use the running scheduler at ADDRESS (cluster.kind=address)")
        cluster.add_argument("--gateway", metavar="URL",
                             help="get a cluster from the dask-gateway at URL "
                                  "(cluster.kind=gateway)")
        p.add_argument("-q", "--quiet", action="store_true",
                       help="only warnings and errors on the terminal, no progress bars "
                            "(run.log still has everything)")

    def with_config(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("config", nargs="?" if name == "run" else None,
                       help="the run's TOML file, e.g. configs/higgs.toml")
        p.add_argument("--output", help="run directory (default: <output>/<name> from the config)")
        with_cluster(p)
        return p

    run = with_config("run", "prepare data, compute specs, train and evaluate")
    run.add_argument("--recompute-specs", action="store_true", help="ignore a cached specs.json")
    run.add_argument("--resume", action="store_true",
                     help="keras, torch: continue an interrupted run from its last checkpoint")
    run.add_argument("--report", action="store_true",
                     help="save the Dask performance report as dask-report.html in the run "
                          "directory")
    run.add_argument("--mlaas4hep", action="store_true",
                     help="run an MLaaS4HEP workflow as it is, from the options below "
                          "instead of CONFIG")
    _mlaas4hep_options(run)
    run.set_defaults(func=_run)

    convert = sub.add_parser(
        "convert-mlaas4hep", help="write the hepdask config of an MLaaS4HEP workflow",
        description="Write the TOML config equivalent to an MLaaS4HEP workflow, with notes on "
                    "every setting that hepdask does not use.")
    _mlaas4hep_options(convert)
    convert.add_argument("-o", "--output", help="the TOML file to write (default: print it)")
    convert.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    convert.set_defaults(func=_convert)

    specs = with_config("specs", "compute (or reuse) the per-branch specs and print them")
    specs.add_argument("--recompute", action="store_true", help="ignore a cached specs.json")
    specs.set_defaults(func=_specs)

    predict = sub.add_parser(
        "predict", help="score new ROOT files with a trained model, on the cluster",
        description="Score every event of FILES with the model of RUN_DIR, on the cluster, and "
                    "write one output per file: a ROOT friend tree (same entries, same order) or "
                    "parquet. The cluster and data settings are the run's, unless overridden.")
    predict.add_argument("run_dir", metavar="RUN_DIR", help="a finished run, e.g. runs/higgs")
    predict.add_argument("files", metavar="FILES", nargs="+",
                         help="ROOT files, globs, .txt lists or root:// / http(s):// URLs")
    predict.add_argument("-o", "--output", required=True, metavar="DIR",
                         help="where to write the outputs (named like the inputs)")
    predict.add_argument("--format", choices=FORMATS, default="root",
                         help="root (a friend tree, default) or parquet")
    predict.add_argument("--tree", help="the input tree (default: the training's)")
    predict.add_argument("--friend-tree", metavar="NAME",
                         help="the output tree's name (default: the model's name)")
    predict.add_argument("--branch", default="score",
                         help="the score's branch name (default %(default)s; score_<class> "
                              "for more than two classes)")
    predict.add_argument("--passthrough", nargs="+", default=[], metavar="BRANCH",
                         help="input branches copied to the output")
    predict.add_argument("--step-size", type=int, metavar="N",
                         help="entries per partition (default: the training's)")
    with_cluster(predict, example="data.timeout=120 or cluster.n_workers=4")
    predict.set_defaults(func=_predict)

    export = sub.add_parser(
        "export", help="write a trained model as one ONNX file, for C++ frameworks and servers",
        description="Write the model of RUN_DIR as ONNX: input 'features' (float32 [N, "
                    "columns], the padded features before normalisation, missing values as "
                    "NaN), output 'score' ([N] signal probability, or [N, K] per class); the "
                    "normalisation and missing-value handling are in the graph. A .json "
                    "beside it lists the columns (branch, slot, pad, ordering) in input order.")
    export.add_argument("run_dir", metavar="RUN_DIR", help="a finished run, e.g. runs/higgs")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="onnx",
                        help="the file format (default %(default)s)")
    export.add_argument("-o", "--output", metavar="FILE",
                        help="the .onnx file or a directory (default: RUN_DIR/model.onnx); "
                             "the sidecar gets the same name with .json")
    export.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    export.set_defaults(func=_export)

    serve = sub.add_parser(
        "serve", help="serve trained models over HTTP",
        description="An HTTP inference service for the models of RUN_DIR...: POST /predict (raw "
                    "branch values in, scores out), the TFaaS-compatible POST /json, GET /models, "
                    "GET /health; API docs at /docs.")
    serve.add_argument("run_dirs", metavar="RUN_DIR", nargs="+",
                       help="finished runs, as RUN_DIR or NAME=RUN_DIR (the name clients use; "
                            "default: the run's name)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="the address to listen on (default %(default)s: this machine only)")
    serve.add_argument("--port", type=int, default=8083, help="default %(default)s (TFaaS's)")
    serve.add_argument("--token-file", metavar="PATH",
                       help="require 'Authorization: Bearer <token>' with the token in PATH")
    serve.add_argument("--max-request-mb", type=float, default=16.0, metavar="MB",
                       help="refuse larger requests with 413 (default %(default)s)")
    serve.add_argument("--max-events", type=int, default=100_000, metavar="N",
                       help="refuse requests with more events with 413 (default %(default)s)")
    serve.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    serve.set_defaults(func=_serve)

    data = sub.add_parser("data", help="prepare a known data set as ROOT files")
    data.add_argument("dataset", choices=["higgs"], help="higgs: the 2014 ATLAS HiggsML challenge")
    data.add_argument("--directory", default="data/higgs", help="where to write (default %(default)s)")
    data.add_argument("--csv", help="the official atlas-higgs-challenge-2014-v2.csv[.gz]")
    data.add_argument("--synthetic", type=int, metavar="N",
                      help="generate N synthetic events when no real CSV is present "
                           "(implies --no-download; real data already converted are kept)")
    data.add_argument("--no-download", action="store_true", help="do not try CERN Open Data")
    data.add_argument("--seed", type=int, default=0, help="seed of the synthetic generator")
    data.add_argument("--events-per-file", type=int, default=250_000)
    data.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    data.set_defaults(func=_data)
    return parser


def _setup_logging(quiet: bool) -> None:
    """The terminal shows INFO (WARNING with -q); the logger passes INFO on, for run.log."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("hepdask: %(message)s"))
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    # Worker shutdown chatter is not for physicists; real failures still raise.
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _mlaas4hep_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("MLaaS4HEP workflow")
    group.add_argument("--files", help="files.txt (one ROOT file per line) or a comma list")
    group.add_argument("--labels", help="labels.txt (one label per file), a comma list, or the "
                                        "branch holding each event's label")
    group.add_argument("--params", help="params.json")
    group.add_argument("--preproc", help="preproc.json (new_branch, flat_cut, jagged_cut)")
    group.add_argument("--model", help="a Python file defining model(idim) (Keras or PyTorch) "
                                       "or model() (XGBoost or scikit-learn estimator)")


def _mlaas4hep_config(args) -> tuple[dict, str]:
    """The converted config mapping and its TOML text, with the notes printed."""
    from .mlaas4hep import convert, to_toml

    missing = [f"--{k}" for k in ("files", "labels", "model") if not getattr(args, k)]
    if missing:
        raise HepdaskError(f"An MLaaS4HEP workflow needs {', '.join(missing)} (and usually "
                           "--params): give the files MLaaS4HEP's workflow.py was run with.")
    raw, notes = convert(files=args.files, labels=args.labels, model=args.model,
                         params=args.params, preproc=args.preproc)
    for note in notes:
        log.warning("MLaaS4HEP: %s", note)
    given = " ".join(f"--{k} {getattr(args, k)}" for k in ("files", "labels", "params",
                                                             "preproc", "model")
                     if getattr(args, k))
    text = to_toml(raw, comments=[f"Converted from the MLaaS4HEP workflow: {given}",
                                  *(f"Note: {n}" for n in notes)])
    return raw, text


def _pipeline(args):
    from .config import apply_overrides, from_dict
    from .pipeline import Pipeline

    if getattr(args, "mlaas4hep", False):
        if args.config:
            raise HepdaskError("Give either a CONFIG file or --mlaas4hep with its options, not "
                               "both.")
        raw, text = _mlaas4hep_config(args)
        pipe = Pipeline(from_dict(apply_overrides(raw, _overrides(args))), output=args.output,
                        progress=not args.quiet)
        pipe.config_text = text
        return pipe
    if not args.config:
        raise HepdaskError("Give the run's config file (e.g. python -m hepdask run "
                           "configs/higgs.toml), or --mlaas4hep with --files, --labels, "
                           "--params and --model.")
    return Pipeline.from_config(args.config, overrides=_overrides(args), output=args.output,
                                progress=not args.quiet)


def _overrides(args) -> list[str]:
    """``--set`` entries, then the cluster flags as the config keys they stand for."""
    extra = []
    if args.cluster:
        extra.append(f"cluster.kind={json.dumps(args.cluster)}")
    if args.scheduler:
        extra += ['cluster.kind="address"', f"cluster.address={json.dumps(args.scheduler)}"]
    if args.gateway:
        extra += ['cluster.kind="gateway"', f"cluster.gateway.address={json.dumps(args.gateway)}"]
    return [*args.overrides, *extra]


def _convert(args) -> int:
    from .outputs import write_text

    _, text = _mlaas4hep_config(args)
    if args.output:
        write_text(args.output, text)
        log.info("Wrote %s", args.output)
    else:
        print(text, end="")
    return 0


def _run(args) -> int:
    """The whole run in one :meth:`Pipeline.recording`: run.log gets every line from the
    config's notes to the summary or the error, and the output is checked writable before the
    data are prepared and the cluster starts."""
    from logging.handlers import BufferingHandler

    from .cluster import connect
    from .evaluate import summary

    early = BufferingHandler(capacity=10_000)  # the notes of a converted workflow
    log.addHandler(early)
    try:
        pipe = _pipeline(args)
    finally:
        log.removeHandler(early)
    with pipe.recording() as run_log:
        for record in early.buffer:
            run_log.handle(record)
        pipe.prepare_data()
        pipe.dataset()
        with connect(pipe.config.cluster) as client:
            pipe.client = client
            metrics = pipe.run(resume=args.resume, reuse_specs=not args.recompute_specs,
                               report=args.report)
    print(summary(metrics, pipe.run_dir))
    return 0


def _specs(args) -> int:
    from .cluster import connect

    pipe = _pipeline(args)
    pipe.dataset()
    with connect(pipe.config.cluster) as client:
        specs = pipe.specs(client=client, reuse=not args.recompute)
    print(specs.table())
    return 0


def _predict(args) -> int:
    from .bundle import Bundle
    from .cluster import connect
    from .predict import predict
    from .progress import Progress

    bundle = Bundle.load(args.run_dir)
    cluster, data = _run_tables(Path(args.run_dir), _overrides(args))
    start = time.perf_counter()
    with connect(cluster) as client:
        progress = Progress(client, f"{bundle.name}: predict", show=not args.quiet)
        try:
            with progress.phase("predict", unit="partitions"):
                done = predict(bundle, args.files, args.output, client=client, tree=args.tree,
                               friend_tree=args.friend_tree, format=args.format,
                               branch=args.branch, passthrough=args.passthrough,
                               step_size=args.step_size, data=data)
        finally:
            progress.close()
    seconds = time.perf_counter() - start
    events = sum(d.entries for d in done)
    where = f"tree {args.friend_tree or bundle.name!r}" if args.format == "root" else "parquet"
    print(f"Scored {events} events in {len(done)} file(s) with the {bundle.engine} model "
          f"{bundle.name!r} in {seconds:.1f} s ({events / max(seconds, 1e-9):,.0f} events/s); "
          f"outputs ({where}) in {args.output}")
    return 0


def _export(args) -> int:
    from .export import export_onnx

    path = export_onnx(args.run_dir, args.output)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    shapes = {k: "[" + ", ".join(map(str, sidecar[k]["shape"])) + "]" for k in ("input", "output")}
    print(f"Wrote {path} (input {sidecar['input']['name']!r} {shapes['input']}, output "
          f"{sidecar['output']['name']!r} {shapes['output']}) and its columns in "
          f"{path.with_suffix('.json')}")
    return 0


def _serve(args) -> int:
    from .serve import load_bundles, read_token, serve

    token = read_token(args.token_file) if args.token_file else None
    serve(load_bundles(args.run_dirs), host=args.host, port=args.port, token=token,
          max_request_mb=args.max_request_mb, max_events=args.max_events)
    return 0


def _run_tables(run_dir: Path, overrides: Sequence[str]):
    """The [cluster] and [data] tables of the run in ``run_dir``, with ``overrides``."""
    from .config import ClusterConfig, DataConfig, apply_overrides, from_table

    path = run_dir / "config.resolved.json"
    resolved = json.loads(path.read_text()) if path.is_file() else {}
    raw = apply_overrides({k: resolved.get(k, {}) for k in ("cluster", "data")}, overrides)
    other = sorted(set(raw) - {"cluster", "data"})
    if other:
        raise HepdaskError(f"predict takes --set for cluster.* and data.* keys only, not {other}.")
    return (from_table(ClusterConfig, raw["cluster"], "cluster"),
            from_table(DataConfig, raw["data"], "data"))


def _data(args) -> int:
    from . import higgsml

    prepared = higgsml.prepare(
        args.directory, csv=args.csv, download=not args.no_download and args.synthetic is None,
        synthetic_events=args.synthetic or 250_000, seed=args.seed,
        events_per_file=args.events_per_file,
    )
    print(f"HiggsML data ({prepared.source}) in {prepared.directory}: "
          + ", ".join(f"{k} {v} events" for k, v in prepared.n_events.items()))
    return 0
