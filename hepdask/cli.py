"""``python -m hepdask``: run, specs, data, convert-mlaas4hep. A thin layer over
:class:`hepdask.Pipeline`."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from .config import CLUSTER_KINDS
from .errors import HepdaskError

__all__ = ["main"]

log = logging.getLogger("hepdask")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.quiet)
    # A batch system's kill (SIGTERM) unwinds like Ctrl-C: clusters hepdask started are shut
    # down and no output is left half-written.
    # `kill -USR1 PID` prints where every thread of a run that seems stuck is.
    with contextlib.suppress(ValueError):  # not in the main thread
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        return args.func(args)
    except HepdaskError as err:
        print(f"hepdask: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hepdask: interrupted; every file already in the run directory is complete.",
              file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hepdask", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def with_config(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("config", nargs="?" if name == "run" else None,
                       help="the run's TOML file, e.g. configs/higgs.toml")
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a config key, e.g. split.seed=7")
        p.add_argument("--output", help="run directory (default: <output>/<name> from the config)")
        cluster = p.add_argument_group("cluster (default: [cluster] of the config)")
        cluster.add_argument("--cluster", choices=CLUSTER_KINDS, help="cluster.kind")
        cluster.add_argument("--scheduler", metavar="ADDRESS",
                             help="use the running scheduler at ADDRESS (cluster.kind=address)")
        cluster.add_argument("--gateway", metavar="URL",
                             help="get a cluster from the dask-gateway at URL "
                                  "(cluster.kind=gateway)")
        p.add_argument("-q", "--quiet", action="store_true",
                       help="only warnings and errors, no progress bars")
        return p

    run = with_config("run", "prepare data, compute specs, train and evaluate")
    run.add_argument("--recompute-specs", action="store_true", help="ignore a cached specs.json")
    run.add_argument("--resume", action="store_true",
                     help="keras: continue an interrupted run from its last checkpoint")
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
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("hepdask: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
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
    group.add_argument("--model", help="a Python file defining model(idim) (Keras) or model() "
                                       "(XGBoost or scikit-learn estimator)")


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
    from .cluster import connect
    from .evaluate import summary

    pipe = _pipeline(args)
    pipe.prepare_data()
    pipe.dataset()
    if args.recompute_specs:
        (pipe.run_dir / "specs.json").unlink(missing_ok=True)
    with connect(pipe.config.cluster) as client:
        pipe.client = client
        with _performance_report(pipe.run_dir / "dask-report.html" if args.report else None):
            metrics = pipe.run(resume=args.resume)
    print(summary(metrics, pipe.run_dir))
    return 0


@contextlib.contextmanager
def _performance_report(path: Path | None) -> Iterator[None]:
    """Dask's performance report of the block, written (whole) also when the run fails."""
    if path is None:
        yield
        return
    from distributed import performance_report

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        with performance_report(filename=str(tmp)):
            yield
    finally:
        if tmp.exists():
            os.replace(tmp, path)
            log.info("Dask performance report: %s", path)


def _specs(args) -> int:
    from .cluster import connect

    pipe = _pipeline(args)
    pipe.dataset()
    with connect(pipe.config.cluster) as client:
        specs = pipe.specs(client=client, reuse=not args.recompute)
    print(specs.table())
    return 0


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
