"""The run directory as a whole: a rerun replaces it only when it succeeded, and run.log holds
what the terminal showed. Each test reruns into a copy of one finished toy run and checks that an
interrupted, failed or disk-full rerun leaves every file of it byte for byte as it was."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import toy_config
from test_pipeline import HIGGS, REPO, hepdask

from hepdask import HepdaskError, Pipeline, load_config, plots
from hepdask.bundle import Bundle

FIRST = ["train.xgboost.num_boost_round=15"]
SECOND = ["train.xgboost.num_boost_round=25"]  # a different model, so that mixing would show


def digest(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``, by relative path."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def pipeline(tmp_path: Path, toy_data, client, overrides=(), output: Path | None = None):
    config = load_config(toy_config(tmp_path, toy_data["dir"]), list(overrides))
    return Pipeline(config, output=output or tmp_path / "runs" / "toy", client=client,
                    progress=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, toy_data, client) -> Path:
    """One finished xgboost run of the toy data; tests rerun into copies of it."""
    base = tmp_path_factory.mktemp("finished")
    pipeline(base, toy_data, client, FIRST).run()
    return base / "runs" / "toy"


@pytest.fixture
def previous(finished, tmp_path) -> tuple[Path, dict[str, str]]:
    """A copy of the finished run in this test's directory, and the hashes of its files."""
    run_dir = tmp_path / "runs" / "toy"
    shutil.copytree(finished, run_dir)
    return run_dir, digest(run_dir)


def staging(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.staging")


def test_interrupted_evaluation_leaves_the_previous_run_unchanged(previous, tmp_path, toy_data,
                                                                   client, monkeypatch):
    run_dir, before = previous

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_all", interrupted)
    pipe = pipeline(tmp_path, toy_data, client, SECOND)
    with pytest.raises(KeyboardInterrupt):
        pipe.run()
    assert digest(run_dir) == before
    unfinished = staging(run_dir)
    assert pipe.staging_dir == unfinished
    assert (unfinished / "model.ubj").is_file() and not (unfinished / "metrics.json").exists()
    log = (unfinished / "run.log").read_text()
    assert "Specs reused" in log and "Interrupted" in log and str(run_dir) in log


def test_a_late_error_leaves_the_previous_run_unchanged(previous, tmp_path, toy_data, client,
                                                        monkeypatch):
    run_dir, before = previous

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(plots, "plot_all", broken)
    with pytest.raises(RuntimeError):
        pipeline(tmp_path, toy_data, client, SECOND).run()
    assert digest(run_dir) == before
    log = (staging(run_dir) / "run.log").read_text()
    assert "plotting failed" in log and "Traceback" in log

    # The next run starts clean, says so, and replaces the run directory as a whole.
    monkeypatch.undo()
    stale = staging(run_dir) / "checkpoints" / "state.json"  # of a Keras run, not this one's
    stale.parent.mkdir()
    stale.write_text("{}")
    pipe = pipeline(tmp_path, toy_data, client, SECOND)
    metrics = pipe.run()
    assert not staging(run_dir).exists()
    assert metrics["specs_reused"] is True
    after = digest(run_dir)
    assert after["model.ubj"] != before["model.ubj"] and after["specs.json"] == before["specs.json"]
    assert set(after) == set(before)
    log = (run_dir / "run.log").read_text()
    assert "unfinished run" in log and "Run directory:" in log and "ROC AUC" in log


def test_a_full_disk_is_one_paragraph_and_leaves_the_previous_run_unchanged(
        previous, tmp_path, toy_data, client, monkeypatch):
    run_dir, before = previous
    original = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".metrics"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(HepdaskError) as err:
        pipeline(tmp_path, toy_data, client, SECOND).run()
    message = str(err.value)
    assert "metrics.json" in message and "space" in message and "\n" not in message
    assert str(staging(run_dir)) in message and f"{run_dir} is as it was" in message
    assert digest(run_dir) == before


def tmpfs(path: Path, options: str) -> Path:
    """A tmpfs mounted at ``path`` (needs root and a sandbox that allows mounts), or a skip."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    return path


@pytest.fixture
def small_disk(tmp_path):
    yield tmpfs(tmp_path / "disk", "size=16m")
    subprocess.run(["umount", "-l", str(tmp_path / "disk")], check=True)


def test_a_read_only_output_is_refused_before_any_work(tmp_path, toy_data):
    read_only = tmpfs(tmp_path / "ro", "ro,size=1m")
    try:
        with pytest.raises(HepdaskError, match="Read-only file system") as err:
            pipeline(tmp_path, toy_data, None, output=read_only / "toy").dataset()
        assert "--output" in str(err.value) and "\n" not in str(err.value)
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=True)


def test_a_really_full_disk(small_disk, finished, tmp_path, toy_data, client):
    run_dir = small_disk / "toy"
    shutil.copytree(finished, run_dir)
    before = digest(run_dir)
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 64 * 1024))  # room for the config only
    with pytest.raises(HepdaskError) as err:
        pipeline(tmp_path, toy_data, client, SECOND, output=run_dir).run()
    assert "full" in str(err.value) and "\n" not in str(err.value)
    assert digest(run_dir) == before


def test_output_under_a_regular_file_fails_before_the_cluster(tmp_path, toy_data):
    (tmp_path / "taken").write_text("not a directory")
    config = toy_config(tmp_path, toy_data["dir"])
    start = time.perf_counter()
    result = hepdask(tmp_path, "run", str(config), "--output", str(tmp_path / "taken" / "toy"))
    assert result.returncode == 2, result.stderr
    assert time.perf_counter() - start < 30
    errors = [line for line in result.stderr.splitlines() if line.startswith("hepdask: error:")]
    assert len(errors) == 1 and "taken" in errors[0] and "--output" in errors[0]
    assert "Traceback" not in result.stderr and "Local cluster" not in result.stderr


def test_a_directory_that_is_not_a_run_is_never_replaced(tmp_path, toy_data, client):
    mine = tmp_path / "analysis"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    with pytest.raises(HepdaskError, match="not a hepdask run directory"):
        pipeline(tmp_path, toy_data, client, output=mine).dataset()
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_sigint_during_training_leaves_the_previous_run_unchanged(previous, tmp_path, toy_data):
    run_dir, before = previous
    config = toy_config(tmp_path, toy_data["dir"])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # --recompute-specs must not delete the previous run's specs.json either.
    process = subprocess.Popen(
        [sys.executable, "-m", "hepdask", "run", str(config), "--output", str(run_dir),
         "--recompute-specs", "--set", "train.xgboost.num_boost_round=100000",
         "--set", "train.xgboost.early_stopping_rounds=100000"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "Training XGBoost" in line:
            time.sleep(1.0)
            process.send_signal(signal.SIGINT)
            break
    rest = process.communicate(timeout=120)[1]
    stderr = "".join(lines) + rest
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and str(staging(run_dir)) in stderr
    assert f"{run_dir} is as it was" in stderr
    assert digest(run_dir) == before
    log = (staging(run_dir) / "run.log").read_text()
    assert "Interrupted" in log and "Local cluster" in log


def test_run_log_holds_what_the_terminal_showed_also_with_quiet(tmp_path):
    sets = ["prepare.download=false", "prepare.synthetic_events=4000",
            "prepare.events_per_file=2000", "data.step_size=1000",
            "train.xgboost.num_boost_round=10", "cluster.n_workers=1",
            'cluster.dashboard_address="127.0.0.1:0"']
    args = [a for s in sets for a in ("--set", s)]
    for quiet in ([], ["-q", "--report"]):
        result = hepdask(tmp_path, "run", str(HIGGS), *args, *quiet)
        assert result.returncode == 0, result.stderr[-3000:]
        log = (tmp_path / "runs" / "higgs" / "run.log").read_text()
        for shown in ("SYNTHETIC DATA", "Local cluster", "Specs", "Run directory:", "ROC AUC"):
            assert shown in log, (quiet, shown, log)
        assert "ROC AUC" in result.stdout
        assert ("Local cluster" in result.stderr) is not bool(quiet)
    assert (tmp_path / "runs" / "higgs" / "dask-report.html").is_file()


def test_step_by_step_commits_with_evaluate(previous, tmp_path, toy_data, client):
    run_dir, before = previous
    pipe = pipeline(tmp_path, toy_data, client, SECOND)
    pipe.specs()
    pipe.train()
    assert digest(run_dir) == before  # a new model waits in the staging directory
    assert (pipe.staging_dir / "model.ubj").is_file()
    pipe.evaluate()
    after = digest(run_dir)
    assert after["model.ubj"] != before["model.ubj"] and not staging(run_dir).exists()
    # Evaluating again rebuilds the whole run around the same model, not just its metrics.
    pipe.evaluate()
    again = digest(run_dir)
    assert set(again) == set(after) and again["model.ubj"] == after["model.ubj"]


def test_a_swap_cut_short_is_repaired_when_the_run_is_loaded(previous):
    run_dir, before = previous
    backup = run_dir.with_name(f".{run_dir.name}.previous")
    # Died after moving the old run aside, before moving the new one in.
    run_dir.rename(backup)
    Bundle.load(run_dir)
    assert digest(run_dir) == before and not backup.exists()
    # Died after moving the new one in, before removing the old one.
    shutil.copytree(run_dir, backup)
    Bundle.load(run_dir)
    assert digest(run_dir) == before and not backup.exists()



def test_a_keras_rerun_without_resume_starts_clean_and_says_so(tmp_path, toy_data, client):
    pytest.importorskip("keras")
    pipe = pipeline(tmp_path, toy_data, client, ["train.engine='keras'", "train.keras.epochs=1",
                                                 "train.stream.batch_size=512"])
    stale = pipe.staging_dir / "checkpoints" / "state.json"  # an interrupted run's
    stale.parent.mkdir(parents=True)
    stale.write_text('{"epoch": 5}')
    pipe.run()
    log = (pipe.run_dir / "run.log").read_text()
    assert log.count("Starting from the first epoch") == 1
    assert json.loads((pipe.run_dir / "checkpoints" / "state.json").read_text())["epoch"] == 0
