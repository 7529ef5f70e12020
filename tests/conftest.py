from __future__ import annotations

import contextlib
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import uproot

import hepdask  # noqa: F401  (before any test module imports TensorFlow: see hepdask/__init__)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file of the shared test data beside the checkout, or a skip saying where it was looked for."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (see the README's Tests section)")
    return path


def write_sample(path: Path, n: int, *, signal: bool, seed: int, sentinel: float = -999.0) -> dict:
    """A small TTree with flat float/int branches, a sentinel-bearing branch and a jagged collection.

    Signal and background differ in ``mass`` and the jets' pt so a classifier can learn;
    returns the arrays written, for references.
    """
    rng = np.random.default_rng(seed)
    mass = rng.normal(125.0 if signal else 95.0, 20.0, n).astype(np.float32)
    met = rng.exponential(30.0 if signal else 25.0, n).astype(np.float32)
    nj = rng.poisson(2.2 if signal else 1.4, n).astype(np.int32)
    mmc = np.where(rng.random(n) < 0.1, sentinel, mass + rng.normal(0, 5, n)).astype(np.float32)
    counts = nj
    total = int(counts.sum())
    jet_pt = (30 + rng.exponential(45.0 if signal else 30.0, total)).astype(np.float32)
    jet_eta = rng.uniform(-4.5, 4.5, total).astype(np.float32)
    weight = np.full(n, 0.01 if signal else 2.0, dtype=np.float32)
    import awkward as ak

    arrays = {
        "mass": mass,
        "met": met,
        "mmc": mmc,
        "njet": nj,
        "weight": weight,
        "Jet_pt": ak.unflatten(jet_pt, counts),
        "Jet_eta": ak.unflatten(jet_eta, counts),
    }
    with uproot.recreate(path) as f:
        tree = f.mktree("events", {
            "mass": np.float32, "met": np.float32, "mmc": np.float32, "njet": np.int32,
            "weight": np.float32, "Jet": "var * {pt: float32, eta: float32}",
        })
        step = max(1, n // 3)
        for start in range(0, n, step):
            stop = min(n, start + step)
            tree.extend({
                "mass": mass[start:stop], "met": met[start:stop], "mmc": mmc[start:stop],
                "njet": nj[start:stop], "weight": weight[start:stop],
                "Jet": ak.zip({"pt": arrays["Jet_pt"][start:stop],
                               "eta": arrays["Jet_eta"][start:stop]}),
            })
    return arrays


@pytest.fixture
def csv() -> Path:
    """The shared sample of the official HiggsML file (first 1,000 events)."""
    return shared_file("higgsml", "atlas-higgs-challenge-2014-v2-first1000.csv")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HiggsML preparation may reach CERN Open Data: the download fails as it does offline."""
    import urllib.error

    from hepdask.higgsml import preparation

    def refuse(url: str, timeout: float) -> object:
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(preparation.urllib.request, "urlopen", refuse)


@contextlib.contextmanager
def interrupted_moves(monkeypatch: pytest.MonkeyPatch, after: int):
    """Ctrl-C as HiggsML preparation moves its ``after``-th ROOT file from the staging
    directory into place; the block expects the KeyboardInterrupt."""
    from hepdask.higgsml import preparation

    replace, moved = os.replace, []

    def interrupted(source: object, target: object) -> None:
        if Path(source).suffix == ".root" and Path(source).parent.name.startswith("."):
            moved.append(source)
            if len(moved) == after:
                raise KeyboardInterrupt
        replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(preparation.os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            yield


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict:
    """Two signal files and one background file of the toy schema, with their arrays."""
    base = tmp_path_factory.mktemp("toy")
    out = {"dir": base, "arrays": {}}
    for name, n, signal, seed in (("sig_0", 3000, True, 1), ("sig_1", 2000, True, 2),
                                  ("bkg_0", 6000, False, 3)):
        out["arrays"][name] = write_sample(base / f"{name}.root", n, signal=signal, seed=seed)
    return out


def toy_config(tmp_path: Path, data_dir: Path, extra: str = "", **sections: str) -> Path:
    """Write a run config for the toy data into ``tmp_path`` and return its path."""
    text = textwrap.dedent(f"""
        name = "toy"
        output = "{tmp_path / 'runs'}"

        [[samples]]
        name = "signal"
        files = ["{data_dir}/sig_*.root"]
        label = 1
        weight = "weight"

        [[samples]]
        name = "background"
        files = ["{data_dir}/bkg_0.root"]
        label = 0
        weight = "weight"

        [data]
        step_size = 1500
        sentinel = -999.0

        [features]
        branches = ["mass", "met", "mmc", "njet", "Jet_*"]
        pad = 3

        [cluster]
        n_workers = 2
        dashboard_address = "127.0.0.1:0"

        [train.xgboost]
        num_boost_round = 40
        early_stopping_rounds = 10
    """) + textwrap.dedent(extra)
    path = tmp_path / "toy.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def client():
    """One small local cluster for the whole test session. 4 GiB a worker: a worker that has
    scored Keras and torch models holds TensorFlow and torch (about 2 GiB), and one paused at
    80% of its limit would leave the later tests waiting."""
    from distributed import Client, LocalCluster

    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "0")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", memory_limit="4GiB")
    with Client(cluster) as c:
        yield c
    cluster.close()
