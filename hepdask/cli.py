"""``python -m hepdask``: train, score, export and serve models, alone or as a service.

run, specs, predict, export, serve, service and its clients (submit, jobs, logs, fetch, upload,
cancel, resume), data, higgsml submission, convert-mlaas4hep: a thin layer over :class:`hepdask.Pipeline`, :func:`hepdask.predict.predict` and :mod:`hepdask.serve`."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .config import CLUSTER_KINDS, EXPORT_FORMATS, PREDICT_FORMATS
from .errors import HepdaskError
from .service.client import DEFAULT_URL

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
    predict.add_argument("--format", choices=PREDICT_FORMATS, default="root",
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

    service = sub.add_parser(
        "service", help="run trainings submitted over HTTP, and serve their models",
        description="Machine learning as a service: an HTTP API to upload data, submit runs "
                    "(TOML configs or MLaaS4HEP workflows), follow them, fetch their bundles and "
                    "score events with their models; the MLaaS4HEP endpoints too. Jobs run one "
                    "subprocess each, on the cluster chosen like run's; API docs at /docs.")
    service.add_argument("--host", default="127.0.0.1",
                         help="the address to listen on (default %(default)s: this machine "
                              "only; another needs auth or --force-public)")
    service.add_argument("--port", type=int, default=8765, help="default %(default)s")
    service.add_argument("--state", default="hepdask-service", metavar="DIR",
                         help="where jobs, uploads and the database live (default %(default)s)")
    service.add_argument("--database", metavar="URL",
                         help="an SQLAlchemy URL (default: sqlite:///DIR/service.db)")
    service.add_argument("--token-file", metavar="PATH",
                         help="static tokens: lines 'TOKEN USER [admin]'")
    service.add_argument("--oidc-issuer", metavar="URL",
                         help="accept JWTs of this OIDC issuer (with --oidc-audience)")
    service.add_argument("--oidc-audience", metavar="AUD", help="the JWTs' audience")
    service.add_argument("--admin", action="append", default=[], metavar="USER",
                         help="a user who sees and manages every job (repeatable)")
    service.add_argument("--allow-user-code", action="store_true",
                         help="let jobs run users' Python files (model files, MLaaS4HEP "
                              "workflows): arbitrary code with the service's rights")
    service.add_argument("--max-jobs", type=int, default=1, metavar="N",
                         help="jobs running at once; others wait (default %(default)s)")
    service.add_argument("--data-root", action="append", default=[], metavar="DIR",
                         help="a directory configs may read besides the user's uploads "
                              "(repeatable)")
    service.add_argument("--redirector", action="append", default=[], metavar="URL",
                         help="a URL prefix configs may read, e.g. "
                              "root://eospublic.cern.ch//eos/opendata/ (repeatable)")
    service.add_argument("--max-upload-mb", type=float, default=1024.0, metavar="MB",
                         help="refuse larger uploads with 413 (default %(default)s)")
    service.add_argument("--config", metavar="FILE",
                         help="a TOML file whose [cluster] table chooses the cluster")
    service.add_argument("--force-public", action="store_true",
                         help="serve a non-loopback --host without auth")
    with_cluster(service, example="cluster.n_workers=4")
    service.set_defaults(func=_service)

    def with_server(p: argparse.ArgumentParser, func) -> argparse.ArgumentParser:
        p.add_argument("--server", metavar="URL",
                       default=os.environ.get("HEPDASK_SERVER", DEFAULT_URL),
                       help="the hepdask service (default $HEPDASK_SERVER, else %(default)s)")
        p.add_argument("--token-file", metavar="PATH",
                       default=os.environ.get("HEPDASK_TOKEN_FILE"),
                       help="the file holding your bearer token (default $HEPDASK_TOKEN_FILE)")
        p.set_defaults(func=func, quiet=False)  # -q: submit only
        return p

    submit = with_server(sub.add_parser(
        "submit", help="submit a run to a hepdask service",
        description="Queue a run of CONFIG on a hepdask service. Relative paths in the config "
                    "are taken from your folder on the service (or the upload --upload)."),
        _submit)
    submit.add_argument("config", metavar="CONFIG", help="the run's TOML file")
    submit.add_argument("--name", help="the job's name (default: the config's name)")
    submit.add_argument("--cpus", type=float, help="CPU cores the job needs")
    submit.add_argument("--memory", help="memory the job needs, e.g. 4GB")
    submit.add_argument("--device", choices=["cpu", "gpu"], help="the device the job needs")
    submit.add_argument("--upload", metavar="NAME",
                        help="run in your upload folder NAME (see hepdask upload)")
    submit.add_argument("--wait", action="store_true",
                        help="follow the job until it ends; exit 0 only if it succeeded")
    submit.add_argument("-q", "--quiet", action="store_true",
                        help="with --wait: print only the outcome")

    jobs = with_server(sub.add_parser("jobs", help="list your jobs on a hepdask service"), _jobs)
    jobs.add_argument("--all", action="store_true", help="every user's jobs (admins)")

    logs = with_server(sub.add_parser("logs", help="print a job's log"), _logs)
    logs.add_argument("job", metavar="JOB", help="the job id, e.g. higgs_1")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing new lines until the job ends")

    fetch = with_server(sub.add_parser(
        "fetch", help="download a succeeded job's run directory",
        description="Download a succeeded job's run directory (its model bundle, metrics and "
                    "plots) into the new folder DIR, for Bundle.load, predict and serve."),
        _fetch)
    fetch.add_argument("job", metavar="JOB", help="the job id")
    fetch.add_argument("-o", "--output", required=True, metavar="DIR",
                       help="the folder to write (replaced once the download is complete)")

    upload = with_server(sub.add_parser(
        "upload", help="upload a folder of files for jobs to read",
        description="Upload a folder (or a .tar.gz of one) as your folder NAME on the service: "
                    "jobs submitted with --upload NAME, and MLaaS4HEP workflows, read it."),
        _upload)
    upload.add_argument("source", metavar="DIR_OR_TGZ", help="a folder or a .tar.gz of one")
    upload.add_argument("--name", required=True, help="the upload's name")

    for action, text in (("cancel", "cancel a queued or running job"),
                         ("resume", "queue an interrupted, failed or cancelled job again (a "
                                    "Keras run continues from its last checkpoint)")):
        command = with_server(sub.add_parser(action, help=text, description=text), _job_action)
        command.add_argument("job", metavar="JOB", help="the job id")
        command.set_defaults(action=action)

    data = sub.add_parser("data", help="prepare a known data set as ROOT files")
    data.add_argument("dataset", choices=["higgs"], help="higgs: the 2014 ATLAS HiggsML challenge")
    data.add_argument("--directory", default="data/higgs", help="where to write (default %(default)s)")
    data.add_argument("--csv", help="the official atlas-higgs-challenge-2014-v2.csv[.gz], or "
                                    "Kaggle's training.csv or test.csv (the header tells which)")
    data.add_argument("--synthetic", type=int, metavar="N",
                      help="generate N synthetic events when no real CSV is present "
                           "(implies --no-download; real data already converted are kept)")
    data.add_argument("--no-download", action="store_true", help="do not try CERN Open Data")
    data.add_argument("--seed", type=int, default=0, help="seed of the synthetic generator")
    data.add_argument("--events-per-file", type=int, default=250_000)
    data.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    data.set_defaults(func=_data)

    higgsml = sub.add_parser("higgsml", help="the HiggsML challenge: a Kaggle submission",
                             description="The 2014 ATLAS HiggsML challenge's own files.")
    action = higgsml.add_subparsers(required=True, metavar="ACTION")
    submission = action.add_parser(
        "submission", help="write and check the Kaggle submission of a trained model",
        description="Score every event of TEST_CSV (Kaggle's test.csv, or any HiggsML CSV) with "
                    "the model of RUN_DIR and write OUT: EventId,RankOrder,Class, RankOrder 1..N "
                    "(N the most signal-like), Class s for score >= the run's threshold (chosen "
                    "on its validation split), checked as Kaggle did.")
    submission.add_argument("run_dir", metavar="RUN_DIR", help="a finished run, e.g. runs/higgs")
    submission.add_argument("test_csv", metavar="TEST_CSV", help="e.g. test.csv")
    submission.add_argument("-o", "--output", required=True, metavar="OUT",
                            help="the submission file, e.g. submission.csv")
    submission.add_argument("--threshold", type=float, metavar="T",
                            help="Class s for score >= T (default: the run's, from metrics.json)")
    submission.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    submission.set_defaults(func=_higgsml_submission)
    check = action.add_parser(
        "check", help="check a submission file as Kaggle did",
        description="Check SUBMISSION as Kaggle did: the header EventId,RankOrder,Class, "
                    "RankOrder a permutation of 1..N, Class s or b, and with --test one row per "
                    "event of TEST_CSV.")
    check.add_argument("submission", metavar="SUBMISSION", help="e.g. submission.csv")
    check.add_argument("--test", metavar="TEST_CSV", help="the test CSV it is for")
    check.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    check.set_defaults(func=_higgsml_check)
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
    specs = None if args.recompute else pipe.cached_specs()  # no cluster needed then
    if specs is None:
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
    from .serve import load_bundles, serve
    from .service.auth import StaticTokens

    auth = StaticTokens.from_file(args.token_file) if args.token_file else None
    serve(load_bundles(args.run_dirs), host=args.host, port=args.port, auth=auth,
          max_request_mb=args.max_request_mb, max_events=args.max_events)
    return 0


def _service(args) -> int:
    """The service, on the [cluster] of --config with the cluster flags."""
    import tomllib

    from .config import apply_overrides
    from .service.app import run_service
    from .service.auth import authenticator
    from .service.settings import ServiceSettings

    table = {}
    if args.config:
        try:
            table = tomllib.loads(Path(args.config).read_text()).get("cluster", {})
        except OSError as err:
            raise HepdaskError(f"Cannot read the config file {args.config}: {err.strerror}."
                               ) from None
        except tomllib.TOMLDecodeError as err:
            raise HepdaskError(f"The config file {args.config} is not valid TOML: {err}."
                               ) from None
    raw = _only_keys(apply_overrides({"cluster": table}, _overrides(args)), ("cluster",),
                     "service")
    if args.max_jobs < 1:
        raise HepdaskError(f"--max-jobs is {args.max_jobs}: at least 1 job must run at once.")
    settings = ServiceSettings(
        state=Path(args.state), database=args.database, max_jobs=args.max_jobs,
        allow_user_code=args.allow_user_code, data_roots=tuple(map(Path, args.data_root)),
        redirectors=tuple(args.redirector), max_upload_mb=args.max_upload_mb,
        admins=tuple(args.admin))
    auth = authenticator(token_file=args.token_file, oidc_issuer=args.oidc_issuer,
                         oidc_audience=args.oidc_audience, admins=settings.admins)
    run_service(settings, auth=auth, cluster=raw["cluster"], host=args.host, port=args.port,
                force_public=args.force_public)
    return 0


def _only_keys(raw: dict, tables: Sequence[str], command: str) -> dict:
    """``raw``, refusing --set keys of tables other than ``tables``."""
    other = sorted(set(raw) - set(tables))
    if other:
        keys = " and ".join(f"{t}.*" for t in tables)
        raise HepdaskError(f"{command} takes --set for {keys} keys only, not {other}.")
    return raw


def _run_tables(run_dir: Path, overrides: Sequence[str]):
    """The [cluster] and [data] tables of the run in ``run_dir``, with ``overrides``."""
    from .config import ClusterConfig, DataConfig, apply_overrides, from_table

    path = run_dir / "config.resolved.json"
    resolved = json.loads(path.read_text()) if path.is_file() else {}
    raw = _only_keys(apply_overrides({k: resolved.get(k, {}) for k in ("cluster", "data")},
                                     overrides), ("cluster", "data"), "predict")
    return (from_table(ClusterConfig, raw["cluster"], "cluster"),
            from_table(DataConfig, raw["data"], "data"))


def _service_client(args):
    from .service.client import Client

    return Client(args.server, token_file=args.token_file)


def _submit(args) -> int:
    from .service.client import describe

    service = _service_client(args)
    job = service.submit(args.config, name=args.name, cpus=args.cpus, memory=args.memory,
                         device=args.device, upload=args.upload)
    job_id = job["job_id"]
    server = f"--server {args.server}"
    if not args.wait:
        print(f"Submitted {job_id} ({job['state']}); follow it with: hepdask logs {job_id} "
              f"--follow {server}")
        return 0
    try:
        job = service.wait(job_id, on_update=None if args.quiet else
                           lambda j: print(describe(j), flush=True))
    except KeyboardInterrupt:
        print(f"hepdask: stopped waiting; {job_id} keeps running on the service. Follow it "
              f"with: hepdask logs {job_id} --follow {server}; cancel it with: hepdask cancel "
              f"{job_id} {server}", file=sys.stderr)
        return 130
    if job["state"] == "succeeded":
        summary = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in (job.get("summary") or {}).items())
        print(f"{job_id} succeeded" + (f": {summary}" if summary else "")
              + f"\nFetch its run directory with: hepdask fetch {job_id} -o DIR {server}")
        return 0
    reason = job.get("error") or {"cancelled": "it was cancelled.",
                                  "interrupted": "the service stopped while it ran."}.get(
                                      job["state"], "no reason given.")
    hint = f" Resume it with: hepdask resume {job_id} {server}." \
        if job["state"] == "interrupted" else ""
    print(f"hepdask: {job_id} {job['state']}: {reason}{hint} Its log: hepdask logs {job_id} "
          f"{server}", file=sys.stderr)
    return 1


def _jobs(args) -> int:
    jobs = _service_client(args).jobs(all=args.all)
    rows = [("JOB", "STATE", "OWNER", "SUBMITTED", "RESULT")]
    for job in jobs:
        summary, error = job.get("summary") or {}, (job.get("error") or "").strip()
        result = (f"auc {summary['auc']:.4f}" if isinstance(summary.get("auc"), float)
                  else error.splitlines()[0][:60] if error else "")
        rows.append((job["job_id"], job["state"], job["owner"],
                     (job.get("submitted") or "")[:19], result))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    if not jobs:
        print("(no jobs)")
    return 0


def _logs(args) -> int:
    text = _service_client(args).logs(args.job, follow=args.follow)
    for line in [text] if isinstance(text, str) else text:
        sys.stdout.write(line)
        sys.stdout.flush()
    return 0


def _fetch(args) -> int:
    path = _service_client(args).fetch(args.job, args.output)
    print(f"The run directory of {args.job} is in {path} (hepdask predict {path} FILES -o DIR, "
          f"hepdask serve {path}, or Bundle.load)")
    return 0


def _upload(args) -> int:
    answer = _service_client(args).upload(args.source, args.name)
    print(f"Uploaded {args.source} as {answer['name']} ({len(answer.get('files') or [])} files, "
          f"{answer['size']:,} bytes); submit with --upload {answer['name']} to run in it")
    return 0


def _job_action(args) -> int:
    """``hepdask cancel JOB`` and ``hepdask resume JOB``."""
    job = getattr(_service_client(args), args.action)(args.job)
    print(f"{job['job_id']}: {job['state']}")
    return 0


def _data(args) -> int:
    from . import higgsml

    prepared = higgsml.prepare(
        args.directory, csv=args.csv, download=not args.no_download and args.synthetic is None,
        synthetic_events=args.synthetic or 250_000, seed=args.seed,
        events_per_file=args.events_per_file,
    )
    print(f"HiggsML data in {prepared.directory}: {higgsml.convert.NAMES[prepared.format]} "
          f"(format {prepared.format}, source {prepared.source})")
    for series, paths in prepared.files.items():
        print(f"  {series:<10} {prepared.n_events[series]:>9,} events in {len(paths)} file(s)")
    return 0


def _higgsml_submission(args) -> int:
    from .higgsml.submission import write_submission

    done = write_submission(args.run_dir, args.test_csv, args.output, threshold=args.threshold)
    print(f"Wrote {done['path']}: {done['N']:,} events, {done['n_signal']:,} of them s "
          f"({done['n_signal'] / done['N']:.1%}) at score >= {done['threshold']:.6g} (from "
          f"{done['threshold_from']}); checked: a valid Kaggle submission.")
    return 0


def _higgsml_check(args) -> int:
    from .higgsml import read_csv
    from .higgsml.submission import check_submission

    ids = read_csv(args.test)["EventId"] if args.test else None
    done = check_submission(args.submission, event_ids=ids)
    print(f"{done['path']}: a valid Kaggle submission, {done['N']:,} events, "
          f"{done['n_signal']:,} of them s" + (f", every event of {args.test}" if args.test
                                                else ""))
    return 0
