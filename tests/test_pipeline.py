"""End to end: the shipped HiggsML config through ``python -m hepdask``, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HIGGS = REPO / "configs" / "higgs.toml"

# The shipped config, shrunk to a test-sized synthetic sample (relative paths resolve in cwd).
SMALL = [
    "prepare.download=false",
    "prepare.synthetic_events=20000",
    "prepare.events_per_file=5000",
    "data.step_size=2500",
    "train.xgboost.num_boost_round=60",
    "cluster.n_workers=2",
    'cluster.dashboard_address="127.0.0.1:0"',
]

OUTPUTS = [
    "config.toml", "config.resolved.json", "specs.json", "features.json", "bundle.json", "model.ubj",
    "metrics.json", "run.log", "scores.png", "roc.png", "ams.png", "importance.png", "history.png",
]


def hepdask(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "hepdask", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def run_higgs(cwd: Path, *extra: str) -> dict:
    sets = [arg for item in SMALL for arg in ("--set", item)]
    result = hepdask(cwd, "run", str(HIGGS), *sets, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((cwd / "runs" / "higgs" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("higgs")
    return cwd, run_higgs(cwd)


def test_run_trains_a_useful_model_and_writes_every_output(first_run):
    cwd, metrics = first_run
    run_dir = cwd / "runs" / "higgs"
    missing = [name for name in OUTPUTS if not (run_dir / name).is_file()]
    assert not missing, f"missing outputs: {missing}"
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))
    assert metrics["data"]["source"] == "synthetic"
    assert metrics["engine"] == "xgboost"
    assert 0.85 < metrics["auc"] < 1.0
    ams = metrics["ams"]  # thresholds chosen on validation, AMS values measured on test
    assert ams["threshold_split"] == "validation"
    assert ams["best"]["value_validation"] >= ams["top_fraction"]["value_validation"]
    assert ams["best"]["value"] > 0.5 and ams["top_fraction"]["value"] > 0.5
    assert abs(ams["top_fraction"]["selected_fraction_validation"] - 0.15) < 0.01
    assert abs(ams["top_fraction"]["selected_fraction"] - 0.15) < 0.02
    n = metrics["n_train"] + metrics["n_validation"] + metrics["n_test"]
    assert n == 20000
    assert abs(metrics["n_test"] / n - 0.2) < 0.02
    assert metrics["specs_reused"] is False
    specs = json.loads((run_dir / "specs.json").read_text())
    assert "DER_mass_MMC" in json.dumps(specs)


def test_second_run_reuses_specs_and_a_changed_file_invalidates_them(first_run):
    cwd, _ = first_run
    assert run_higgs(cwd)["specs_reused"] is True

    # Same content, new mtime: the fingerprint no longer matches.
    some_file = sorted((cwd / "data" / "higgs").glob("signal_*.root"))[0]
    stat = some_file.stat()
    os.utime(some_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    result = hepdask(cwd, "specs", str(HIGGS), *[a for s in SMALL for a in ("--set", s)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Specs computed" in result.stderr
    assert "DER_mass_MMC" in result.stdout and "PRI_jet_num" in result.stdout

    result = hepdask(cwd, "specs", str(HIGGS), *[a for s in SMALL for a in ("--set", s)])
    assert "Specs reused" in result.stderr
    assert "Local cluster" not in result.stderr  # valid cached specs need no cluster
    assert "DER_mass_MMC" in result.stdout


def test_data_command_writes_a_synthetic_sample(tmp_path):
    result = hepdask(tmp_path, "data", "higgs", "--directory", "d", "--synthetic", "3000",
                     "--events-per-file", "1000")
    assert result.returncode == 0, result.stderr
    assert "synthetic" in result.stdout and "SYNTHETIC DATA" in result.stderr
    manifest = json.loads((tmp_path / "d" / "MANIFEST.json").read_text())
    assert sum(manifest["n_events"].values()) == 3000
    listed = [name for names in manifest["files"].values() for name in names]
    assert sorted(p.name for p in (tmp_path / "d").glob("*.root")) == sorted(listed)
    assert len(listed) >= 3  # at most 1000 events per file


def test_bad_override_is_one_clear_line(tmp_path):
    result = hepdask(tmp_path, "run", str(HIGGS), "--set", "train.xgboost.num_boost_rounds=5")
    assert result.returncode == 2
    assert "num_boost_round" in result.stderr and "Traceback" not in result.stderr
