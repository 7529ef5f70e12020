"""``hepdask serve`` under load: requests/s and latency on loopback.

    python benchmarks/bench_serve.py [--clients 50] [--seconds 20] [--train-events 250000]

Serves the XGBoost model of ``bench_predict.py`` (trained once and reused) with
``python -m hepdask serve`` in its own process, and drives it from this process with
``--clients`` concurrent aiohttp clients for ``--seconds`` per case, each sending its
next request as soon as the last is answered:

* ``POST /predict`` with 1 event and with 1000 events (columns of raw branch values),
* ``POST /json`` (the TFaaS form) with 1 event.

Reported per case: requests/s, events/s, p50 and p99 latency. The baseline, measured in
the same run: :meth:`Bundle.score` on the same events in one process, without HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench_core import higgs_data, parse
from bench_predict import trained

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import servers  # noqa: E402  (the tests' free_port)


async def load(url: str, bodies: list[bytes], clients: int, seconds: float) -> list[float]:
    """Latencies (s) of the requests answered by ``url`` within ``seconds``; every answer checked."""
    import aiohttp

    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                async with session.post(url, data=bodies[i % len(bodies)],
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url} answered {r.status}")
                latencies.append(time.perf_counter() - start)
                i += clients

        await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def main() -> None:
    args = parse(__doc__, {}, {"--clients": 50, "--seconds": 20, "--train-events": 250_000})
    if args is None:
        return
    import uproot

    from hepdask.bundle import Bundle

    (directory,) = higgs_data(args.data, args.train_events)
    run_dir = trained(directory, args.workers)
    bundle = Bundle.load(run_dir)
    with uproot.open(sorted(directory.glob("signal_*.root"))[0]) as f:
        events = f[bundle.tree].arrays(bundle.inputs, entry_stop=100_000)
    columns = {k: events[k].to_list() for k in bundle.inputs}
    one = [json.dumps({"columns": {k: v[i: i + 1] for k, v in columns.items()}}).encode()
           for i in range(1000)]
    many = [json.dumps({"columns": {k: v[i: i + 1000] for k, v in columns.items()}}).encode()
            for i in range(0, len(events) - 999, 1000)]
    keys = list(bundle.inputs)
    tfaas = [json.dumps({"keys": keys, "values": [columns[k][i] for k in keys]}).encode()
             for i in range(1000)]

    baseline = {}
    for n in (1, 1000):  # in-process scoring of the same events, no HTTP
        part = events[:n]
        bundle.score(part)
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < 3:
            bundle.score(events[calls % 50 * n: calls % 50 * n + n])
            calls += 1
        baseline[n] = calls / (time.perf_counter() - start)

    port = servers.free_port()
    server = subprocess.Popen([sys.executable, "-m", "hepdask", "serve", str(run_dir), "--port",
                               str(port), "-q"], env=dict(os.environ, PYTHONPATH=str(ROOT)))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.2)
        print(f"\nhepdask serve, {bundle.engine} model ({len(bundle.layout.names)} features), "
              f"{args.clients} concurrent clients x {args.seconds} s per case, loopback, "
              f"{os.cpu_count()} cores shared by server and clients; request bodies "
              f"{len(one[0])} B (1 event), {len(many[0]) / 1024:.0f} KiB (1000 events):")
        print(f"  {'case':<24}{'req/s':>9}{'events/s':>12}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'in-process calls/s':>20}{'served/in-process':>19}")
        for name, path, bodies, n in (("/predict, 1 event", "/predict", one, 1),
                                      ("/predict, 1000 events", "/predict", many, 1000),
                                      ("/json (TFaaS), 1 event", "/json", tfaas, 1)):
            asyncio.run(load(url + path, bodies, args.clients, 1.0))  # warm up
            latencies = asyncio.run(load(url + path, bodies, args.clients, args.seconds))
            rate = len(latencies) / args.seconds
            print(f"  {name:<24}{rate:9.0f}{rate * n:12,.0f}"
                  f"{percentile(latencies, 50) * 1e3:9.1f}{percentile(latencies, 99) * 1e3:9.1f}"
                  f"{baseline[n]:20,.0f}{rate / baseline[n]:19.2f}")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
