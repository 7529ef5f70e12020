"""Trust in the HiggsML data: real data are never replaced, nor the user's own files
overwritten, and what a run records about its data comes from the files it read."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import uproot
from conftest import interrupted_moves
from test_pipeline import HIGGS, SMALL, hepdask

from hepdask import HepdaskError, Pipeline, load_config
from hepdask.config import apply_overrides, from_dict
from hepdask.evaluate import summary
from hepdask.higgsml import PreparedData, prepare, synthesize, write_root

pytestmark = pytest.mark.usefixtures("offline")


def _hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.glob("*_*.root"))}


def _event_ids(prepared: PreparedData) -> np.ndarray:
    ids = []
    for path in [*prepared.files["signal"], *prepared.files["background"]]:
        with uproot.open(path) as file:
            ids.append(file[prepared.tree]["EventId"].array(library="np"))
    return np.sort(np.concatenate(ids))


def _assert_real(directory: Path, events_per_file: int) -> PreparedData:
    prepared = PreparedData.load(directory)
    assert prepared.source == "csv"
    assert prepared.n_events == {"signal": 349, "background": 651}
    assert prepared.manifest["events_per_file"] == events_per_file
    np.testing.assert_array_equal(_event_ids(prepared), np.arange(100_000, 101_000))
    listed = sorted(name for names in prepared.manifest["files"].values() for name in names)
    assert sorted(p.name for p in directory.glob("*.root")) == listed
    assert not list(directory.glob(".*"))  # no staging or temporary files left
    return prepared


# --- prepare: real data are kept ---------------------------------------------------------------


def test_real_data_with_another_layout_are_resplit_never_replaced(csv: Path, tmp_path: Path):
    """`hepdask data higgs --csv` (250000 per file) then a run asking for 125000: real, always."""
    prepare(tmp_path, csv=csv, download=False, events_per_file=250_000)
    before = _hashes(tmp_path)
    again = prepare(tmp_path, download=False, synthetic_events=2000, events_per_file=125_000)
    assert again.source == "csv" and again.manifest["csv"] == str(csv.resolve())
    assert _hashes(tmp_path) == before  # one file per class either way: the same events
    _assert_real(tmp_path, 125_000)

    split = prepare(tmp_path, download=True, synthetic_events=2000, events_per_file=300)
    assert [len(split.files[c]) for c in ("signal", "background")] == [2, 3]
    _assert_real(tmp_path, 300)
    merged = prepare(tmp_path, download=False, synthetic_events=2000, events_per_file=1000)
    assert [len(merged.files[c]) for c in ("signal", "background")] == [1, 1]  # stale ones gone
    _assert_real(tmp_path, 1000)


def test_resplit_interrupted_or_disk_full_loses_nothing(
    csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    prepare(tmp_path, csv=csv, download=False, events_per_file=300)
    before = _hashes(tmp_path)

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:  # while the new files are written
        patch.setattr(uproot.writing.writable.WritableTree, "extend", disk_full)
        with pytest.raises(HepdaskError, match="No space left"):
            prepare(tmp_path, download=False, events_per_file=200)
    assert _hashes(tmp_path) == before
    _assert_real(tmp_path, 300)

    with interrupted_moves(monkeypatch, after=2):
        prepare(tmp_path, download=False, events_per_file=200)
    with pytest.raises(HepdaskError):  # no manifest that lies meanwhile
        PreparedData.load(tmp_path)
    finished = prepare(tmp_path, download=False, synthetic_events=2000, events_per_file=200)
    assert [len(finished.files[c]) for c in ("signal", "background")] == [2, 4]
    _assert_real(tmp_path, 200)


def test_real_data_are_not_replaced_by_another_csv_or_synthetic_ones(csv: Path, tmp_path: Path):
    prepared = prepare(tmp_path / "d", csv=csv, download=False, events_per_file=300)
    before = _hashes(tmp_path / "d")
    other = tmp_path / "other.csv"
    other.write_text("".join(csv.read_text().splitlines(keepends=True)[:200]))
    with pytest.raises(HepdaskError, match="real") as caught:
        prepare(tmp_path / "d", csv=other, download=False, events_per_file=300)
    assert str(other) in str(caught.value) and "\n" not in str(caught.value)
    assert _hashes(tmp_path / "d") == before

    # A real file lost, and the CSV it came from gone: refuse instead of synthesizing.
    moved = tmp_path / "moved.csv"
    moved.write_bytes(csv.read_bytes())
    prepare(tmp_path / "e", csv=moved, download=False, events_per_file=300)
    moved.unlink()
    (tmp_path / "e" / "signal_001.root").unlink()
    left = _hashes(tmp_path / "e")
    with pytest.raises(HepdaskError, match=r"signal_001\.root"):
        prepare(tmp_path / "e", download=True, synthetic_events=2000, events_per_file=300)
    assert _hashes(tmp_path / "e") == left
    assert json.loads((tmp_path / "e" / "MANIFEST.json").read_text())["source"] == "csv"

    # With the CSV still there, the lost file is converted again.
    prepared.files["background"][1].unlink()
    _assert_real(Path(prepare(tmp_path / "d", download=False, events_per_file=300).directory),
                 300)


@pytest.mark.parametrize("manifest", [None, "{not json", '{"source": "synthetic"}'])
def test_files_without_a_manifest_are_never_overwritten(tmp_path: Path, manifest: str | None):
    write_root(synthesize(600, seed=9), tmp_path, events_per_file=1000)  # the user's own files
    if manifest is not None:
        (tmp_path / "MANIFEST.json").write_text(manifest)
    before = _hashes(tmp_path)
    with pytest.raises(HepdaskError, match=r"signal_000\.root") as caught:
        prepare(tmp_path, download=False, synthetic_events=500)
    assert "\n" not in str(caught.value) and "MANIFEST.json" in str(caught.value)
    assert _hashes(tmp_path) == before


def test_files_a_synthetic_manifest_does_not_list_are_never_overwritten(tmp_path: Path):
    prepare(tmp_path, download=False, synthetic_events=600, events_per_file=200)
    mine = tmp_path / "signal_007.root"
    write_root(synthesize(50, seed=1), tmp_path / "mine")
    (tmp_path / "mine" / "signal_000.root").rename(mine)
    before = _hashes(tmp_path)
    with pytest.raises(HepdaskError, match=r"signal_007\.root"):
        prepare(tmp_path, download=False, synthetic_events=900, events_per_file=200)
    assert _hashes(tmp_path) == before


def test_synthetic_data_are_replaced_by_synthetic_or_real_ones(csv: Path, tmp_path: Path):
    prepare(tmp_path, download=False, synthetic_events=3000, events_per_file=500)
    smaller = prepare(tmp_path, download=False, synthetic_events=800, events_per_file=500)
    assert smaller.source == "synthetic" and sum(smaller.n_events.values()) == 800
    assert sorted(p.name for p in tmp_path.glob("*.root")) == sorted(
        p.name for paths in smaller.files.values() for p in paths)
    assert prepare(tmp_path, csv=csv, download=False, events_per_file=300).source == "csv"
    _assert_real(tmp_path, 300)


# --- what a run records about its data ---------------------------------------------------------


def test_prepare_directory_the_samples_do_not_read_is_a_config_error(tmp_path: Path):
    with pytest.raises(HepdaskError, match=r"prepare\.directory") as caught:
        load_config(HIGGS, [*SMALL, f"prepare.directory='{tmp_path / 'official'}'"])
    message = str(caught.value)
    assert "data/higgs/signal_*.root" in message and "\n" not in message
    assert not (tmp_path / "official").exists()


@pytest.mark.slow
def test_cli_data_then_run_trains_on_the_real_files(csv: Path, tmp_path: Path):
    data = tmp_path / "real"
    result = hepdask(tmp_path, "data", "higgs", "--csv", str(csv), "--directory", str(data))
    assert result.returncode == 0, result.stderr
    before = _hashes(data)
    sets = [*SMALL, f"prepare.directory='{data}'", f"samples.0.files=['{data}/signal_*.root']",
            f"samples.1.files=['{data}/background_*.root']", "train.xgboost.num_boost_round=10"]
    result = hepdask(tmp_path, "run", str(HIGGS), *[a for s in sets for a in ("--set", s)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SYNTHETIC" not in result.stderr and "Data: higgs csv" in result.stdout
    assert _hashes(data) == before
    _assert_real(data, 5000)
    metrics = json.loads((tmp_path / "runs" / "higgs" / "metrics.json").read_text())
    assert metrics["data"]["source"] == "csv" and metrics["data"]["dataset"] == "higgs"
    assert metrics["data"]["format"] == "official"
    files = metrics["data"]["samples"]["signal"]["files"]
    assert [f["path"] for f in files] == [str(data / "signal_000.root")]
    assert files[0]["entries"] == 349 and files[0]["source"] == "csv"
    assert metrics["data"]["samples"]["background"]["events"] == 651


def test_cli_run_over_synthetic_files_with_a_real_csv_elsewhere_is_an_error(
    csv: Path, tmp_path: Path
):
    """The issue's case: [prepare] converts the CSV into data/official, the samples read the
    synthetic data/higgs: an error before any work, not a metrics.json saying "csv"."""
    prepare(tmp_path / "data" / "higgs", download=False, synthetic_events=2000,
            events_per_file=5000)
    sets = [*SMALL, f"prepare.csv='{csv}'", "prepare.directory='data/official'"]
    result = hepdask(tmp_path, "run", str(HIGGS), *[a for s in sets for a in ("--set", s)])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "prepare.directory" in result.stderr and "data/official" in result.stderr
    assert not (tmp_path / "data" / "official").exists()
    assert not (tmp_path / "runs" / "higgs" / "metrics.json").exists()


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("synthetic") / "higgs"
    prepare(directory, download=False, synthetic_events=4000, seed=5, events_per_file=1500)
    return directory


def _config(directory: Path, output: Path, *extra: str, prepare: bool = True):
    raw = tomllib.loads(HIGGS.read_text())
    if not prepare:
        del raw["prepare"]
    return from_dict(apply_overrides(raw, [
        *(s for s in SMALL if prepare or not s.startswith("prepare.")),
        f"samples.0.files=['{directory}/signal_*.root']",
        f"samples.1.files=['{directory}/background_*.root']",
        f"output='{output}'", "train.xgboost.num_boost_round=10", *extra]))


@pytest.mark.slow
def test_run_without_prepare_over_synthetic_files_says_synthetic(
    synthetic_dir: Path, tmp_path: Path, client, caplog: pytest.LogCaptureFixture
):
    pipe = Pipeline(_config(synthetic_dir, tmp_path, prepare=False), client=client,
                    progress=False)
    with caplog.at_level("WARNING", logger="hepdask"):
        metrics = pipe.run()
    assert "SYNTHETIC DATA" in caplog.text and str(synthetic_dir) in caplog.text
    data = json.loads((tmp_path / "higgs" / "metrics.json").read_text())["data"]
    assert data == metrics["data"] and data["source"] == "synthetic"
    assert data["dataset"] == "higgs" and "Data: higgs synthetic" in summary(metrics, tmp_path)
    assert data["format"] == "synthetic"
    files = [f for s in data["samples"].values() for f in s["files"]]
    assert {f["source"] for f in files} == {"synthetic"}
    assert sum(f["entries"] for f in files) == 4000
    assert sorted(Path(f["path"]).name for f in files) == sorted(
        p.name for p in synthetic_dir.glob("*.root"))


def test_prepare_over_other_files_than_the_samples_read_is_an_error(
    synthetic_dir: Path, csv: Path, tmp_path: Path
):
    """The same directory by name, but the samples read none of the files [prepare] made."""
    write_root(synthesize(300, seed=2), tmp_path / "mine")
    for path in (tmp_path / "mine").glob("*.root"):
        path.rename(tmp_path / f"mine_{path.name}")
    raw = _config(tmp_path, tmp_path / "runs", f"prepare.csv='{csv}'",
                  f"prepare.directory='{tmp_path}'", "prepare.events_per_file=300",
                  f"samples.0.files=['{tmp_path}/mine_signal_*.root']",
                  f"samples.1.files=['{tmp_path}/mine_background_*.root']")
    with pytest.raises(HepdaskError, match=r"prepare\.directory"):
        Pipeline(raw, progress=False).dataset()
