"""``python -m hepdask``: run, specs, data. A thin layer over :class:`hepdask.Pipeline`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .errors import HepdaskError

__all__ = ["main"]

log = logging.getLogger("hepdask")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.quiet)
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
        p.add_argument("config", help="the run's TOML file, e.g. configs/higgs.toml")
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a config key, e.g. split.seed=7")
        p.add_argument("--output", help="run directory (default: <output>/<name> from the config)")
        p.add_argument("--scheduler", help="address of an existing Dask scheduler")
        p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
        return p

    run = with_config("run", "prepare data, compute specs, train and evaluate")
    run.add_argument("--recompute-specs", action="store_true", help="ignore a cached specs.json")
    run.add_argument("--resume", action="store_true",
                     help="keras: continue an interrupted run from its last checkpoint")
    run.set_defaults(func=_run)

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


def _pipeline(args):
    from .pipeline import Pipeline

    return Pipeline.from_config(args.config, overrides=args.overrides, output=args.output)


def _run(args) -> int:
    from .cluster import connect
    from .evaluate import summary

    pipe = _pipeline(args)
    pipe.prepare_data()
    pipe.dataset()
    if args.recompute_specs:
        (pipe.run_dir / "specs.json").unlink(missing_ok=True)
    with connect(pipe.config.cluster, address=args.scheduler) as client:
        pipe.client = client
        metrics = pipe.run(resume=args.resume)
    print(summary(metrics, pipe.run_dir))
    return 0


def _specs(args) -> int:
    from .cluster import connect

    pipe = _pipeline(args)
    pipe.dataset()
    with connect(pipe.config.cluster, address=args.scheduler) as client:
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
