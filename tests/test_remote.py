"""ROOT files read over XRootD and HTTP from real servers on loopback, and files that cannot
be read (``data.on_read_error``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import servers
import uproot
from test_pipeline import HIGGS, SMALL, hepdask

from hepdask import HepdaskError, Pipeline, higgsml, load_config
from hepdask.bundle import Bundle
from hepdask.config import DataConfig
from hepdask.predict import predict

pytestmark = pytest.mark.slow

EVENTS = 20_000


@pytest.fixture(scope="module")
def store():
    """HiggsML files under <root>/store/higgs, the layout of a grid site."""
    root = servers.exported_directory()
    higgsml.prepare(root / "store" / "higgs", download=False, synthetic_events=EVENTS,
                    events_per_file=5000, seed=0)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def xrootd(store):
    pytest.importorskip("fsspec_xrootd")
    if shutil.which("xrootd") is None:
        pytest.skip("xrootd-server is not installed (.ci/run installs it)")
    with servers.xrootd(store) as url:
        yield url


def pipeline(tmp_path: Path, store: Path, signal: str, background: str, *extra: str):
    sets = [*SMALL, f"prepare.directory='{store / 'store' / 'higgs'}'",  # reused, not rewritten
            f"samples.0.files=['{signal}']", f"samples.1.files=['{background}']", *extra]
    return Pipeline(load_config(HIGGS, sets), output=tmp_path / "run", progress=False)


def specs_of(pipe: Pipeline, client) -> dict:
    specs = pipe.specs(client=client)
    return {"branches": {k: v.to_dict() for k, v in specs.branches.items()},
            "samples": specs.samples, "classes": specs.classes, "partitions": specs.partitions}


@pytest.fixture(scope="module")
def local_specs(store, client, tmp_path_factory):
    directory = store / "store" / "higgs"
    return specs_of(pipeline(tmp_path_factory.mktemp("local"), store,
                             f"{directory}/signal_*.root", f"{directory}/background_*.root"),
                    client)


def test_xrootd_urls_and_logical_names_give_the_local_specs(tmp_path, client, store, xrootd,
                                                            local_specs):
    urls = pipeline(tmp_path / "urls", store, f"{xrootd}//store/higgs/signal_*.root",
                    f"{xrootd}//store/higgs/background_*.root")
    files = urls.dataset().samples[0].files
    assert [f.path for f in files] == [f"{xrootd}//store/higgs/signal_00{i}.root" for i in (0, 1)]
    assert files[0].size == (store / "store/higgs/signal_000.root").stat().st_size
    assert files[0].mtime > 0
    assert specs_of(urls, client) == local_specs
    logical = pipeline(tmp_path / "lfn", store, "/store/higgs/signal_*.root",
                       "/store/higgs/background_*.root", f"data.redirector='{xrootd}/'")
    assert specs_of(logical, client) == local_specs
    # the cached specs are keyed by the remote files' sizes and times
    assert urls.dataset().fingerprint() != pipeline(
        tmp_path / "urls", store, f"{xrootd}//store/higgs/signal_000.root",
        f"{xrootd}//store/higgs/background_*.root").dataset().fingerprint()


def test_http_gives_the_local_specs(tmp_path, client, store):
    directory = store / "store" / "higgs"
    local = specs_of(pipeline(tmp_path / "local", store, f"{directory}/signal_000.root",
                              f"{directory}/background_000.root"), client)
    with servers.http(store) as url:
        remote = pipeline(tmp_path / "http", store, f"{url}/store/higgs/signal_000.root",
                          f"{url}/store/higgs/background_000.root")
        assert specs_of(remote, client) == local
        assert remote.dataset().samples[0].files[0].size == (
            directory / "signal_000.root").stat().st_size
        listed = pipeline(tmp_path / "glob", store, f"{url}/store/higgs/signal_*.root",
                          f"{url}/store/higgs/background_000.root")  # this server lists
        assert [Path(f.path).name for f in listed.dataset().samples[0].files] == [
            "signal_000.root", "signal_001.root"]
        with pytest.raises(HepdaskError, match="matches no file"):
            pipeline(tmp_path / "none", store, f"{url}/store/higgs/sig*.txt",
                     f"{url}/store/higgs/background_000.root").dataset()


def test_the_higgs_pipeline_trains_over_xrootd(tmp_path, store, xrootd):
    sets = [*SMALL, f"prepare.directory='{store / 'store' / 'higgs'}'",
            f"samples.0.files=['{xrootd}//store/higgs/signal_*.root']",
            f"samples.1.files=['{xrootd}//store/higgs/background_*.root']"]
    result = hepdask(tmp_path, "run", str(HIGGS), *[a for s in sets for a in ("--set", s)])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "higgs" / "metrics.json").read_text())
    assert metrics["auc"] > 0.85 and metrics["read_errors"] == []


def test_predict_reads_xrootd_and_stops_at_an_unreadable_file(tmp_path, client, store, xrootd,
                                                              damaged):
    directory = store / "store" / "higgs"
    pipe = pipeline(tmp_path, store, f"{directory}/signal_*.root",
                    f"{directory}/background_*.root", "train.xgboost.num_boost_round=10")
    pipe.run(client=client)
    bundle = Bundle.load(pipe.run_dir)
    predict(bundle, [f"{directory}/signal_*.root"], tmp_path / "local", client=client)
    done = predict(bundle, [f"{xrootd}//store/higgs/signal_*.root"], tmp_path / "remote",
                   client=client)
    assert [d.output.name for d in done] == ["signal_000.root", "signal_001.root"]
    for d in done:
        with uproot.open(d.output) as remote, uproot.open(tmp_path / "local" / d.output.name) as local:
            assert np.array_equal(remote["higgs"]["score"].array(library="np"),
                                  local["higgs"]["score"].array(library="np"))
    truncated = str(damaged / "signal_9_truncated.root")
    with pytest.raises(HepdaskError, match=r"signal_9_truncated\.root entries .*friend tree needs"):
        predict(bundle, [truncated], tmp_path / "bad", client=client, data=DataConfig(retries=1))
    assert not list((tmp_path / "bad").iterdir())  # nothing half-written


# -- files that cannot be read ------------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged(store, tmp_path_factory):
    """The signal files plus a file that is not ROOT (sorted first) and a truncated one."""
    directory = tmp_path_factory.mktemp("damaged")
    good = store / "store" / "higgs"
    for path in good.glob("signal_*.root"):
        shutil.copy(path, directory / path.name)
    (directory / "signal_0_notes.root").write_text("not a ROOT file\n" * 100)
    data = (good / "signal_001.root").read_bytes()
    (directory / "signal_9_truncated.root").write_bytes(data[: len(data) // 3])
    return directory


def run_damaged(tmp_path: Path, store: Path, damaged: Path, *extra: str):
    sets = [*SMALL, f"prepare.directory='{store / 'store' / 'higgs'}'",
            f"samples.0.files=['{damaged}/signal_*.root']",
            f"samples.1.files=['{store}/store/higgs/background_*.root']", "data.retries=1", *extra]
    return hepdask(tmp_path, "run", str(HIGGS), *[a for s in sets for a in ("--set", s)])


def test_skip_reports_the_unreadable_files_and_trains_on_the_rest(tmp_path, store, damaged):
    result = run_damaged(tmp_path, store, damaged, "data.on_read_error='skip'")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "higgs" / "metrics.json").read_text())
    errors = {Path(e["file"]).name: e for e in metrics["read_errors"]}
    assert set(errors) == {"signal_0_notes.root", "signal_9_truncated.root"}
    assert errors["signal_0_notes.root"]["events"] is None
    assert "not a ROOT file" in errors["signal_0_notes.root"]["error"]
    truncated = errors["signal_9_truncated.root"]
    assert truncated["events"] == truncated["stop"] - truncated["start"] > 0
    assert truncated["error"].startswith("OSError: expected Chunk of length")
    assert "signal_9_truncated.root" in truncated["error"]  # uproot's message, on one line
    import uproot

    good = sum(uproot.open(damaged / f"signal_00{i}.root")["events"].num_entries for i in (0, 1))
    assert metrics["selection"]["signal"]["read"] == good  # what the truncated copy lost
    for name in errors:
        assert f"Skipped {damaged / name}" in result.stderr
    assert "events unknown" in result.stderr and f"{truncated['events']} events" in result.stderr
    assert (f"Skipped (unreadable): 2 files or ranges, {truncated['events']} events lost, and 1 "
            "file(s) that could not be opened") in result.stdout
    assert metrics["auc"] > 0.85


def test_fail_names_the_first_bad_file(tmp_path, store, damaged):
    result = run_damaged(tmp_path, store, damaged)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"hepdask: error: Could not read {damaged}/signal_0_notes.root")
    assert "not a ROOT file" in message and "on_read_error" in message
    (damaged / "signal_0_notes.root").rename(damaged / "notes.txt")  # leave the truncated one
    try:
        result = run_damaged(tmp_path, store, damaged)
    finally:
        (damaged / "notes.txt").rename(damaged / "signal_0_notes.root")
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert f"Could not read {damaged}/signal_9_truncated.root entries 0-" in message, message
    assert "OSError" in message and "after 2 tries" in message and "Traceback" not in result.stderr


def test_a_file_without_the_tree_is_named_in_both_modes(tmp_path, store, damaged):
    import uproot

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(store / "store/higgs/signal_000.root", other / "signal_000.root")
    with uproot.recreate(other / "signal_001.root") as file:
        file.mktree("hits", {"x": "float64"}).extend({"x": [1.0, 2.0]})
    for mode, code in (("fail", 2), ("skip", 0)):
        sets = [*SMALL, f"prepare.directory='{store / 'store' / 'higgs'}'",
                f"samples.0.files=['{other}/signal_*.root']",
                f"samples.1.files=['{store}/store/higgs/background_*.root']",
                f"data.on_read_error='{mode}'"]
        (tmp_path / mode).mkdir()
        result = hepdask(tmp_path / mode, "run", str(HIGGS), *[a for s in sets
                                                              for a in ("--set", s)])
        assert result.returncode == code, result.stderr[-2000:]
        assert f"{other}/signal_001.root" in result.stderr and "no tree 'events'" in result.stderr
