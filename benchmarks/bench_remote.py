"""Read + specs over XRootD on loopback, against the same files read locally.

    python benchmarks/bench_remote.py [--events 1000000] [--workers 2] [--repeat 2]

The specs pass (every partition read, preprocessed and summarised; nothing cached)
of ``--events`` synthetic HiggsML events on a LocalCluster of ``--workers``
single-threaded workers, with the files given as local paths and as
``root://127.0.0.1:PORT//store/...`` URLs served by a real ``xrootd`` (Debian's
xrootd-server) from the same directory. The two take turns ``--repeat`` times
and each keeps its fastest; the ratio is measured in the same run.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from bench_core import CONFIG, EVENTS_PER_FILE, higgs_data, overrides, parse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import servers  # the tests' loopback XRootD server


def timed_specs(client, directory: Path, run_dir: Path, signal: str, background: str) -> tuple:
    """Seconds of one specs pass (read + preprocess + reductions) and its event count."""
    from hepdask import Pipeline

    sets = [*overrides(directory, 2, run_dir), f"samples.0.files=['{signal}']",
            f"samples.1.files=['{background}']"]
    pipe = Pipeline.from_config(CONFIG, overrides=sets, output=run_dir, progress=False)
    pipe.dataset()  # file metadata, on the client: not part of the distributed pass
    start = time.perf_counter()
    specs = pipe.specs(client=client, reuse=False)
    return time.perf_counter() - start, sum(s.read for s in specs.samples.values())


def main() -> None:
    args = parse(__doc__, {}, {"--events": 1_000_000, "--repeat": 2})
    if args is None:
        return
    from distributed import Client, LocalCluster

    from hepdask.cluster import _import_stack

    root = servers.exported_directory()
    try:
        (directory,) = higgs_data(root / "store", args.events)
        local = (f"{directory}/signal_*.root", f"{directory}/background_*.root")
        with servers.xrootd(root) as url, LocalCluster(
                n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
            client.run(_import_stack)
            remote = tuple(f"{url}//store/{directory.name}/{Path(p).name}" for p in local)
            best: dict[str, float] = {}
            for _ in range(args.repeat):
                for name, files in (("local", local), ("xrootd", remote)):
                    seconds, events = timed_specs(client, directory, root / "run" / name, *files)
                    best[name] = min(best.get(name, seconds), seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"specs pass (read + preprocess + reductions), {events} events, {args.workers} "
          f"workers x 1 thread, {EVENTS_PER_FILE} events per file, best of {args.repeat}")
    for name, seconds in best.items():
        print(f"  {name:<7} {seconds:7.2f} s  {events / seconds:>12,.0f} events/s")
    print(f"  xrootd / local time: {best['xrootd'] / best['local']:.2f}x")


if __name__ == "__main__":
    main()
