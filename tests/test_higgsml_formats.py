"""Every form of the HiggsML data: the official CERN file, Kaggle's training.csv and test.csv,
told apart by the header, converted into their file series and recorded as such; the official
file's leaderboard sets in series of their own; real data prepared before those series re-split
from their own files, nothing lost."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import uproot
from conftest import interrupted_moves

from hepdask import HepdaskError, Pipeline, higgsml
from hepdask.higgsml import (
    COLUMNS,
    FEATURES,
    FORMATS,
    PreparedData,
    csv_format,
    find_prepared,
    prepare,
    read_csv,
    synthesize,
    write_csv,
    write_root,
)

pytestmark = pytest.mark.usefixtures("offline")

REPO = Path(__file__).resolve().parents[1]


def _columns_of(source: Path, target: Path, keep: tuple[str, ...]) -> Path:
    """The CSV ``source`` with only the columns ``keep`` (by text, independent of write_csv)."""
    lines = source.read_text().splitlines()
    header = lines[0].split(",")
    index = [header.index(name) for name in keep]
    target.write_text("".join(",".join(line.split(",")[i] for i in index) + "\n"
                              for line in lines))
    return target


def _with_sets(source: Path, target: Path, sets: str) -> Path:
    """The CSV ``source`` with its KaggleSet letters replaced, event by event, by ``sets``."""
    lines = source.read_text().splitlines()
    column = lines[0].split(",").index("KaggleSet")
    rows = [line.split(",") for line in lines[1:]]
    for row, letter in zip(rows, sets, strict=True):
        row[column] = letter
    target.write_text("\n".join([lines[0], *map(",".join, rows)]) + "\n")
    return target


def _hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


def _read(paths: list[Path], tree: str = "events") -> dict[str, np.ndarray]:
    parts = []
    for path in paths:
        with uproot.open(path) as file:
            parts.append(file[tree].arrays(library="np"))
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _one_paragraph(caught: pytest.ExceptionInfo, *words: str) -> str:
    message = str(caught.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


# --- the format, from the header -------------------------------------------------------------


def test_each_file_is_told_apart_by_its_header(csv: Path, tmp_path: Path):
    training = _columns_of(csv, tmp_path / "data.csv", FORMATS["kaggle-training"])
    test = _columns_of(csv, tmp_path / "training.csv", FORMATS["kaggle-test"])  # the name lies
    packed = tmp_path / "official.csv.gz"
    packed.write_bytes(gzip.compress(csv.read_bytes()))
    assert [csv_format(p) for p in (csv, packed, training, test)] == [
        "official", "official", "kaggle-training", "kaggle-test"]
    assert set(FORMATS) == {"official", "kaggle-training", "kaggle-test", "synthetic"}
    assert FORMATS["synthetic"] == COLUMNS == tuple(synthesize(10))


def test_kaggle_files_read_with_their_columns(csv: Path, tmp_path: Path):
    official = read_csv(csv)
    training = read_csv(_columns_of(csv, tmp_path / "training.csv", FORMATS["kaggle-training"]))
    test = read_csv(_columns_of(csv, tmp_path / "test.csv", FORMATS["kaggle-test"]))
    assert tuple(training) == FORMATS["kaggle-training"] and tuple(test) == FORMATS["kaggle-test"]
    for columns in (training, test):
        for name, values in columns.items():
            np.testing.assert_array_equal(values, official[name], err_msg=name)
            assert values.dtype == official[name].dtype, name
    assert training["Label"].dtype == np.int8 and training["Label"].sum() == 349


@pytest.mark.parametrize("case", [
    "another experiment", "empty", "header only", "binary", "tabs", "truncated gzip header",
    "official without KaggleWeight", "training without Weight", "test with KaggleSet",
])
def test_a_wrong_file_is_one_paragraph_and_touches_nothing(csv: Path, tmp_path: Path, case: str):
    lines = csv.read_text().splitlines(keepends=True)
    path = tmp_path / "input.csv"
    if case == "another experiment":
        path.write_text("run,event,lumi,mu_pt,mu_eta\n1,2,3,40.5,1.2\n")
        words = ["'run,event,lumi,mu_pt,mu_eta'", "none of the comma-separated HiggsML"]
    elif case == "empty":
        path.write_text("")
        words = ["is empty"]
    elif case == "header only":
        path.write_text(lines[0])
        words = ["no events"]
    elif case == "binary":
        path.write_bytes(b"root\x00\xff\xfe" + os.urandom(4096))
        words = ["not a text file"]
    elif case == "tabs":
        path.write_text("".join(line.replace(",", "\t") for line in lines[:20]))
        words = [r"'EventId\tDER_mass_MMC"]
    elif case == "truncated gzip header":
        path = tmp_path / "input.csv.gz"
        path.write_bytes(gzip.compress(csv.read_bytes())[:30])
        words = ["cannot be read", "truncated"]
    elif case == "official without KaggleWeight":
        keep = tuple(name for name in COLUMNS if name != "KaggleWeight")
        _columns_of(csv, path, keep)
        words = ["the nearest, the official CERN Open Data file", "lacks KaggleWeight"]
    elif case == "training without Weight":
        keep = tuple(name for name in FORMATS["kaggle-training"] if name != "Weight")
        _columns_of(csv, path, keep)
        words = ["the nearest, Kaggle's training.csv, its header lacks Weight"]
    else:
        _columns_of(csv, path, (*FORMATS["kaggle-test"], "KaggleSet"))
        words = ["Kaggle's test.csv, its header has KaggleSet, which that file does not"]
    with pytest.raises(HepdaskError) as caught:
        read_csv(path)
    message = _one_paragraph(caught, str(path), *words)
    if "none of" in message:  # names the three files one may give
        assert "training.csv" in message and "test.csv" in message and "record 328" in message

    prepared = prepare(tmp_path / "real", csv=csv, download=False, events_per_file=300)
    before = _hashes(prepared.directory)
    for given in (path, tmp_path):  # the file, or a directory by mistake
        with pytest.raises(HepdaskError) as caught:
            prepare(tmp_path / "real", csv=given, download=False, events_per_file=300)
        _one_paragraph(caught, str(given))
    assert "is a directory" in str(caught.value)
    assert _hashes(prepared.directory) == before


# --- conversion into file series -------------------------------------------------------------


def test_kaggle_training_converts_with_its_format_recorded(
    csv: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    training = _columns_of(csv, tmp_path / "training.csv", FORMATS["kaggle-training"])
    with caplog.at_level(logging.INFO, logger="hepdask"):
        prepared = prepare(tmp_path / "d", csv=training, download=False, events_per_file=300)
    assert "Kaggle's training.csv" in caplog.text and "not comparable" in caplog.text
    assert prepared.format == "kaggle-training" == prepared.manifest["format"]
    assert prepared.source == "csv" and not prepared.manifest["leaderboard"]
    assert prepared.n_events == {"signal": 349, "background": 651}
    assert [len(prepared.files[s]) for s in ("signal", "background")] == [2, 3]
    signal = _read(prepared.files["signal"])
    assert set(signal) == {"EventId", *FEATURES, "Weight"}  # no Label: the class is the file
    real = read_csv(csv)
    np.testing.assert_array_equal(signal["EventId"], real["EventId"][real["Label"] == 1])
    np.testing.assert_array_equal(signal["Weight"], real["Weight"][real["Label"] == 1])
    assert json.loads((tmp_path / "d" / "MANIFEST.json").read_text()) == prepared.manifest

    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "d").iterdir()}
    again = prepare(tmp_path / "d", csv=training, download=False, events_per_file=300)
    assert again == prepared and {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    resplit = prepare(tmp_path / "d", download=False, events_per_file=1000)  # from its files
    assert resplit.format == "kaggle-training" and resplit.n_events == prepared.n_events
    assert [len(resplit.files[s]) for s in ("signal", "background")] == [1, 1]
    np.testing.assert_array_equal(_read(resplit.files["signal"])["EventId"], signal["EventId"])


def test_kaggle_test_converts_into_a_test_series(csv: Path, tmp_path: Path):
    test = _columns_of(csv, tmp_path / "test.csv", FORMATS["kaggle-test"])
    prepared = prepare(tmp_path / "t", csv=test, download=False, events_per_file=400)
    assert prepared.format == "kaggle-test" and set(prepared.files) == {"test"}
    assert prepared.n_events == {"test": 1000} and len(prepared.files["test"]) == 3
    assert sorted(p.name for p in (tmp_path / "t").glob("*.root")) == [
        "test_000.root", "test_001.root", "test_002.root"]
    events = _read(prepared.files["test"])
    assert tuple(events) == FORMATS["kaggle-test"] and "weight_sums" not in prepared.manifest
    np.testing.assert_array_equal(events["EventId"], np.arange(100_000, 101_000))
    found = find_prepared(str(p) for p in prepared.files["test"])
    assert {p.format for p in found.values()} == {"kaggle-test"}
    assert prepare(tmp_path / "t", download=False, events_per_file=400) == prepared  # reused
    assert prepare(tmp_path / "t", download=False, events_per_file=1000).n_events == {"test": 1000}
    assert [p.name for p in (tmp_path / "t").glob("*.root")] == ["test_000.root"]


def test_official_file_splits_into_the_challenge_sets(csv: Path, tmp_path: Path):
    """First 600 events t, next 150 b, then 240 v and 10 u: t alone trains, by class; the
    leaderboard sets are series of their own, with Label and KaggleWeight."""
    sets = "t" * 600 + "b" * 150 + "v" * 240 + "u" * 10
    official = _with_sets(csv, tmp_path / "sets.csv", sets)
    prepared = prepare(tmp_path / "d", csv=official, download=False, events_per_file=100)
    assert prepared.format == "official" and prepared.manifest["leaderboard"] is True
    real = read_csv(official)
    letters = np.array(list(sets))
    for series, letter in (("public", "b"), ("private", "v"), ("unused", "u")):
        events = _read(prepared.files[series])
        assert set(events) == set(COLUMNS), series
        assert events["Label"].dtype == np.int8
        chosen = letters == letter
        for name in ("EventId", "Label", "KaggleWeight", "Weight", "DER_mass_MMC"):
            np.testing.assert_array_equal(events[name], real[name][chosen], err_msg=name)
        assert (events["KaggleSet"] == ord(letter)).all()
        assert prepared.n_events[series] == chosen.sum()
    training = {}
    for series, label in (("signal", 1), ("background", 0)):
        training[series] = events = _read(prepared.files[series])
        assert "Label" not in events and (events["KaggleSet"] == ord("t")).all()
        chosen = (letters == "t") & (real["Label"] == label)
        np.testing.assert_array_equal(events["EventId"], real["EventId"][chosen])
        assert prepared.manifest["weight_sums"][series] == pytest.approx(
            real["Weight"][chosen].sum(dtype=np.float64))
    assert sum(len(e["EventId"]) for e in training.values()) == 600
    assert sum(prepared.n_events.values()) == 1000
    listed = sorted(p.name for paths in prepared.files.values() for p in paths)
    assert sorted(p.name for p in (tmp_path / "d").glob("*.root")) == listed

    # Another number of events per file: re-split from the files, Label and sets intact.
    merged = prepare(tmp_path / "d", download=False, events_per_file=1000)
    assert merged.n_events == prepared.n_events
    assert all(len(paths) == 1 for paths in merged.files.values())
    np.testing.assert_array_equal(_read(merged.files["public"])["Label"],
                                  real["Label"][letters == "b"])

    # The shared sample itself is all training set: no leaderboard series at all.
    plain = prepare(tmp_path / "plain", csv=csv, download=False)
    assert set(plain.files) == {"signal", "background"} and plain.format == "official"


# --- a directory holds one kind of data ------------------------------------------------------


def test_test_csv_or_another_file_never_replaces_training_data(csv: Path, tmp_path: Path):
    test = _columns_of(csv, tmp_path / "test.csv", FORMATS["kaggle-test"])
    training = _columns_of(csv, tmp_path / "training.csv", FORMATS["kaggle-training"])
    prepare(tmp_path / "synthetic", download=False, synthetic_events=600, events_per_file=1000)
    prepare(tmp_path / "official", csv=csv, download=False, events_per_file=300)
    prepare(tmp_path / "test", csv=test, download=False, events_per_file=300)
    for name, given, words in (
        ("synthetic", test, ["Kaggle's test.csv", "--directory", "synthetic-test"]),
        ("official", test, ["Kaggle's test.csv", "--directory"]),
        ("official", training, ["never replaces real data", "the official CERN Open Data"]),
        ("test", training, ["never replaces real data", "Kaggle's test.csv"]),
    ):
        before = _hashes(tmp_path / name)
        with pytest.raises(HepdaskError) as caught:
            prepare(tmp_path / name, csv=given, download=False, events_per_file=300)
        _one_paragraph(caught, str(given), str(tmp_path / name), *words)
        assert _hashes(tmp_path / name) == before, name
    # Nor the official file waiting in the directory to be converted.
    (tmp_path / "waiting").mkdir()
    (tmp_path / "waiting" / "atlas-higgs-challenge-2014-v2.csv").write_bytes(csv.read_bytes())
    with pytest.raises(HepdaskError) as caught:
        prepare(tmp_path / "waiting", csv=test, download=False)
    _one_paragraph(caught, str(test), "atlas-higgs-challenge-2014-v2.csv, to be converted")
    assert not list((tmp_path / "waiting").glob("*.root"))
    # A test.csv named training.csv in the directory: what it is, not what it is called.
    (tmp_path / "named").mkdir()
    (tmp_path / "named" / "training.csv").write_bytes(test.read_bytes())
    assert set(prepare(tmp_path / "named", download=False).files) == {"test"}
    # A synthetic sample is replaced by a real training.csv (the banner's promise).
    replaced = prepare(tmp_path / "synthetic", csv=training, download=False, events_per_file=300)
    assert replaced.format == "kaggle-training" and replaced.source == "csv"
    # Kaggle's training.csv put in the directory is found there, like the official file.
    (tmp_path / "found").mkdir()
    (tmp_path / "found" / "training.csv").write_bytes(training.read_bytes())
    assert prepare(tmp_path / "found", download=False).format == "kaggle-training"


def test_interrupted_conversion_keeps_the_synthetic_sample(
    csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    sample = prepare(tmp_path, download=False, synthetic_events=800, events_per_file=300)
    before = _hashes(tmp_path)
    official = _with_sets(csv, tmp_path.parent / f"{tmp_path.name}-sets.csv",
                          "t" * 500 + "b" * 500)

    def ctrl_c(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(uproot.writing.writable.WritableTree, "extend", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            prepare(tmp_path, csv=official, download=False, events_per_file=300)
    assert _hashes(tmp_path) == before and PreparedData.load(tmp_path) == sample
    assert not list(tmp_path.glob(".*"))
    assert prepare(tmp_path, csv=official, download=False).n_events["public"] == 500


# --- real data of the earlier layout -----------------------------------------------------------


def _old_layout(csv: Path, directory: Path, events_per_file: int) -> PreparedData:
    """Real data as hepdask prepared them before the leaderboard series: every KaggleSet in
    signal/background, a manifest without "format" or "leaderboard"."""
    columns = read_csv(csv)
    files = write_root(columns, directory, events_per_file=events_per_file)
    signal = columns["Label"] == 1
    weight = columns["Weight"].astype(np.float64)
    manifest = {
        "manifest_version": 1, "dataset": "ATLAS HiggsML", "source": "csv",
        "csv": str(csv.resolve()), "tree": "events", "events_per_file": events_per_file,
        "branches": [name for name in columns if name != "Label"],
        "files": {name: [p.name for p in paths] for name, paths in files.items()},
        "n_events": {"signal": int(signal.sum()), "background": int((~signal).sum())},
        "weight_sums": {"signal": float(weight[signal].sum()),
                        "background": float(weight[~signal].sum())},
        "created": "2026-01-01T00:00:00+00:00",
    }
    (directory / "MANIFEST.json").write_text(json.dumps(manifest))
    return PreparedData.load(directory)


def test_old_layout_real_data_are_resplit_from_their_files(
    csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    sets = _with_sets(csv, tmp_path / "sets.csv", "t" * 600 + "b" * 150 + "v" * 250)
    directory = tmp_path / "d"
    old = _old_layout(sets, directory, 300)
    assert old.format == "official" and set(old.files) == {"signal", "background"}
    before = {**_read(old.files["signal"])}
    sets.unlink()  # the re-split reads the ROOT files, not the CSV

    with interrupted_moves(monkeypatch, after=3):
        prepare(directory, download=False, events_per_file=300)
    with caplog.at_level(logging.WARNING, logger="hepdask"):
        new = prepare(directory, download=False, synthetic_events=500, events_per_file=300)
    assert new.source == "csv" and new.format == "official" and new.manifest["leaderboard"]
    assert "SYNTHETIC" not in caplog.text
    assert new.n_events["public"] == 150 and new.n_events["private"] == 250
    everything = [_read(paths) for paths in new.files.values() if paths]
    ids = np.sort(np.concatenate([events["EventId"] for events in everything]))
    np.testing.assert_array_equal(ids, np.arange(100_000, 101_000))  # nothing lost
    signal = _read(new.files["signal"])
    assert (signal["KaggleSet"] == ord("t")).all()
    t = before["KaggleSet"] == ord("t")
    for name in before:
        np.testing.assert_array_equal(signal[name], before[name][t], err_msg=name)
    public = _read(new.files["public"])
    assert public["Label"].dtype == np.int8 and "KaggleWeight" in public
    listed = sorted(p.name for paths in new.files.values() for p in paths)
    assert sorted(p.name for p in directory.glob("*.root")) == listed
    assert not list(directory.glob(".*"))
    assert prepare(directory, download=False, events_per_file=300) == new  # now reused


def test_old_synthetic_manifest_is_reused_not_regenerated(tmp_path: Path):
    """The default run is unchanged: its synthetic sample, prepared before formats were
    recorded, is reused as it is."""
    sample = prepare(tmp_path, download=False, synthetic_events=900, events_per_file=400)
    manifest = {k: v for k, v in sample.manifest.items() if k not in ("format", "leaderboard")}
    (tmp_path / "MANIFEST.json").write_text(json.dumps(manifest))
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = prepare(tmp_path, download=False, synthetic_events=900, events_per_file=400)
    assert again.format == "synthetic" and again.manifest == manifest
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_format_of_manifests_written_before():
    def of(source: str) -> str:
        return PreparedData(source, Path("."), {}, {}, "events", {"source": source}).format

    assert [of(s) for s in ("synthetic", "csv", "download")] == [
        "synthetic", "official", "official"]


# --- write_csv -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
@pytest.mark.parametrize("format", ["official", "kaggle-training", "kaggle-test"])
def test_write_csv_then_read_csv_round_trip(tmp_path: Path, format: str, suffix: str):
    columns = synthesize(700, seed=8)
    path = write_csv(columns, tmp_path / f"sample{suffix}", format=format)
    assert csv_format(path) == format
    back = read_csv(path)
    assert tuple(back) == FORMATS[format]
    if format == "kaggle-training":  # Kaggle's Weight: the weight the challenge scored with
        columns["Weight"] = columns["KaggleWeight"]
    for name, values in back.items():
        np.testing.assert_array_equal(values, columns[name], err_msg=name)
        assert values.dtype == columns[name].dtype, name
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_write_csv_writes_as_the_challenge_files(csv: Path, tmp_path: Path):
    written = write_csv(read_csv(csv), tmp_path / "again.csv").read_text().splitlines()
    original = csv.read_text().splitlines()
    assert written[0] == original[0] and len(written) == len(original)
    exact = [i for i, name in enumerate(COLUMNS) if name not in ("Weight", "KaggleWeight")]
    for mine, theirs in zip(written[1:], original[1:], strict=True):  # weights: float32 digits
        mine, theirs = mine.split(","), theirs.split(",")
        assert [mine[i] for i in exact] == [theirs[i] for i in exact]


def test_kaggle_training_csv_of_the_official_file_is_kaggles(csv: Path, tmp_path: Path):
    """The first line of Kaggle's training.csv: the official file's KaggleWeight as Weight."""
    first = write_csv(read_csv(csv), tmp_path / "training.csv", format="kaggle-training")
    line = first.read_text().splitlines()[1].split(",")
    kaggle = ("100000,138.47,51.655,97.827,27.98,0.91,124.711,2.666,3.064,41.928,197.76,1.582,"
              "1.396,0.2,32.638,1.017,0.381,51.626,2.273,-2.414,16.824,-0.277,258.733,2,67.435,"
              "2.15,0.444,46.062,1.24,-2.475,113.497,0.00265331133733,s").split(",")
    assert line[:-2] == kaggle[:-2] and line[-1] == kaggle[-1]
    assert np.float32(line[-2]) == np.float32(kaggle[-2])


def test_write_csv_bad_input_and_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    columns = synthesize(300, seed=1)
    path = tmp_path / "out.csv"
    for bad, words in (
        ({"format": "synthetic"}, ["format='synthetic'", "kaggle-test"]),
        ({"columns": {k: v for k, v in columns.items() if k != "Weight"}}, ["missing: Weight"]),
        ({"columns": {**columns, "Label": columns["Label"] + 3}}, ["Label"]),
        ({"columns": {**columns, "KaggleSet": columns["KaggleSet"] + 1}}, ["KaggleSet"]),
    ):
        with pytest.raises(HepdaskError) as caught:
            write_csv(bad.get("columns", columns), path, format=bad.get("format", "official"))
        _one_paragraph(caught, str(path), *words)
    write_csv(columns, path)
    before = path.read_bytes()
    calls = []

    def ctrl_c(name: str, values: np.ndarray) -> np.ndarray:
        calls.append(name)
        if len(calls) > 40:
            raise KeyboardInterrupt
        return values.astype(str)

    monkeypatch.setattr(higgsml.convert, "_CSV_CHUNK", 100)
    monkeypatch.setattr(higgsml.convert, "_text", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        write_csv(columns, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


# --- the format where a run and the CLI say it ---------------------------------------------------


def test_run_records_the_format_of_its_data(csv: Path, tmp_path: Path):
    from test_higgsml_data import _config

    training = _columns_of(csv, tmp_path / "training.csv", FORMATS["kaggle-training"])
    directory = tmp_path / "data"
    prepare(directory, csv=training, download=False, events_per_file=5000)
    pipe = Pipeline(_config(directory, tmp_path / "runs", prepare=False), progress=False)
    pipe.dataset()
    assert pipe.data_source["format"] == "kaggle-training"
    assert pipe.data_source["source"] == "csv" and pipe.data_source["dataset"] == "higgs"


def test_cli_data_prints_the_format_and_the_series(csv: Path, tmp_path: Path):
    official = _with_sets(csv, tmp_path / "sets.csv", "t" * 600 + "b" * 400)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "hepdask", "data", "higgs", "--csv", str(official), "--directory",
         str(tmp_path / "d"), "--no-download"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "format official" in result.stdout and "official CERN Open Data file" in result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert set(lines) == {"signal", "background", "public"}
    assert "400 events in 1 file(s)" in lines["public"]
    test = _columns_of(csv, tmp_path / "test.csv", FORMATS["kaggle-test"])
    result = subprocess.run(
        [sys.executable, "-m", "hepdask", "data", "higgs", "--csv", str(test), "--directory",
         str(tmp_path / "d")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--directory" in result.stderr and str(test) in result.stderr
