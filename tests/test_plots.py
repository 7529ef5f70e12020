"""The plots of a run and report.html: every plot written for an XGBoost and a network run,
each labelled (run name, "Synthetic data") with the right axes, embedded in one self-contained
page with the metrics; bins from the number of events; features back in physical units."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from test_inference import higgs_overrides
from test_pipeline import HIGGS

from hepdask import HepdaskError, Pipeline, higgsml, load_config
from hepdask.features import denormalize, normalize
from hepdask.plots import auto_bins, unit_of
from hepdask.plots.inputs import weighted_correlation
from hepdask.plots.style import Canvas
from hepdask.report import write_report

BINARY = ["roc.png", "rejection.png", "overtraining.png", "scores.png", "features.png",
          "correlation.png", "ams.png", "history.png"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def higgs_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("higgs") / "data"
    higgsml.prepare(data, download=False, synthetic_events=8000, events_per_file=4000)
    return data


@pytest.fixture(scope="module")
def labels():
    """Every figure's axes labels and texts, recorded as the canvas labels them."""
    seen: dict[str, dict] = {}
    original = Canvas._label
    original_figure = Canvas.figure

    def recording(self, fig, axes):
        original(self, fig, axes)
        texts = [t.get_text() for t in fig.texts] + [t.get_text() for ax in axes.flat
                                                     for t in ax.texts]
        seen[self._current] = {"xlabels": [ax.get_xlabel() for ax in axes.flat],
                               "ylabels": [ax.get_ylabel() for ax in axes.flat],
                               "yscales": [ax.get_yscale() for ax in axes.flat],
                               "texts": texts}

    def figure(self, name, **kwargs):
        self._current = name
        return original_figure(self, name, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(Canvas, "_label", recording)
    mp.setattr(Canvas, "figure", figure)
    yield seen
    mp.undo()


def run(config, data, output, client, *extra):
    overrides = higgs_overrides(data, "data.step_size=2000", *extra)
    pipe = Pipeline(load_config(config, overrides), output=output, client=client, progress=False)
    return pipe, pipe.run()


@pytest.fixture(scope="module")
def xgb_run(higgs_data, client, tmp_path_factory, labels):
    pipe, metrics = run(HIGGS, higgs_data, tmp_path_factory.mktemp("xgb") / "higgs", client,
                        "train.xgboost.num_boost_round=25")
    return pipe, metrics, dict(labels)


@pytest.fixture(scope="module")
def torch_run(higgs_data, client, tmp_path_factory, labels):
    pytest.importorskip("torch")
    labels.clear()
    pipe, metrics = run(HIGGS.with_name("higgs-torch.toml"), higgs_data,
                        tmp_path_factory.mktemp("torch") / "higgs-torch", client,
                        "train.torch.epochs=2", "train.stream.batch_size=256")
    return pipe, metrics, dict(labels)


def check_run(pipe, metrics, labels, expected, step):
    run_dir = pipe.run_dir
    for name in expected:
        data = (run_dir / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    # every figure labelled: the run name, and "Synthetic data" (a synthetic run)
    assert set(expected) <= set(labels)
    for name, seen in labels.items():
        texts = " ".join(seen["texts"])
        assert pipe.config.name in texts and "Synthetic" in texts, (name, texts)
    assert labels["history.png"]["xlabels"][0] == step
    assert "1/$\\varepsilon_b$" in labels["rejection.png"]["ylabels"][0]
    assert labels["rejection.png"]["yscales"] == ["log"]
    assert any("[GeV]" in x for x in labels["features.png"]["xlabels"])  # physical units
    assert "[GeV]" in " ".join(x for x in labels["features.png"]["xlabels"] if "mass" in x)
    page = (run_dir / "report.html").read_text()
    for name in expected:
        encoded = base64.b64encode((run_dir / name).read_bytes()).decode()
        assert f"data:image/png;base64,{encoded}" in page, name
    assert f"{metrics['auc']:.4g}" in page and f"{metrics['ams']['best']['value']:.3f}" in page
    assert "Synthetic data" in page and "<script" not in page
    assert "DER_mass_MMC" in page  # the specs table
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    # metrics.json is still the last file written, after the report
    assert (run_dir / "metrics.json").stat().st_mtime_ns >= (run_dir / "report.html").stat().st_mtime_ns
    assert "plots" in json.loads((run_dir / "metrics.json").read_text())["timings_s"]


def test_every_plot_of_an_xgboost_run_is_written_labelled_and_in_the_report(xgb_run):
    pipe, metrics, labels = xgb_run
    check_run(pipe, metrics, labels, [*BINARY, "importance.png"], "Boosting round")
    overtraining = " ".join(labels["overtraining.png"]["texts"])
    assert "hepdask" in overtraining


def test_every_plot_of_a_network_run_is_written_labelled_and_in_the_report(torch_run):
    pipe, metrics, labels = torch_run
    check_run(pipe, metrics, labels, BINARY, "Epoch")
    assert not (pipe.run_dir / "importance.png").exists()  # a network has no importances


def test_the_report_opens_in_a_headless_browser(xgb_run, tmp_path):
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome",
                                               "chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no chromium found (apt-get install chromium): no screenshot check")
    pipe, _, _ = xgb_run
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--window-size=1200,3000", f"--screenshot={shot}",
         (pipe.run_dir / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    assert shot.is_file(), result.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] >= 1000
    assert pixels[..., :3].std() > 0.05  # text and plots drawn, not a blank page


def test_the_report_renders_the_higgsml_leaderboard_block(tmp_path):
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    fig.savefig(tmp_path / "roc.png")
    plt.close(fig)
    metrics = {
        "engine": "xgboost", "features": 30, "n_train": 10, "n_validation": 5, "n_test": 5,
        "auc": 0.91234, "data": {"source": "csv", "format": "official"},
        "higgsml": {
            "format": "official", "source": "csv", "comparable": True,
            "note": "AMS of the complete leaderboard sets", "threshold": 0.8123,
            "threshold_from": "the best AMS on the validation split",
            "selected_fraction_validation": 0.151,
            "public": {"ams": 3.61234, "auc": 0.9301, "selected_fraction": 0.149,
                       "n_events": 100000},
            "private": {"ams": 3.70987, "auc": 0.9299, "selected_fraction": 0.152,
                        "n_events": 450000},
            "anchors": {"winner": 3.80581, "best single XGBoost": 3.72370,
                        "TMVA BDT baseline": 3.19956},
        },
    }
    page = write_report(tmp_path, metrics, name="higgs").read_text()
    for text in ("HiggsML challenge", "3.6123", "3.7099", "450000", "3.80581", "3.19956",
                 "TMVA BDT baseline", "the best AMS on the validation split", "0.8123",
                 "-0.096", "data:image/png;base64,", "0.9123"):
        assert text in page, text
    assert "Synthetic data" not in page
    # not comparable, without leaderboard sets: the note is a warning, no AMS table
    metrics["higgsml"] = {"format": "kaggle-training", "comparable": False,
                          "note": "Kaggle training.csv has no leaderboard sets"}
    page = write_report(tmp_path, metrics, name="higgs").read_text()
    assert '<div class="warning">Kaggle training.csv has no leaderboard sets' in page
    assert "leaderboard set</th>" not in page


def test_bins_come_from_the_number_of_events_unless_given():
    assert auto_bins(1000) == 20 and auto_bins(125_000) == 100 and auto_bins(10) == 10
    assert auto_bins(10**6, 37) == 37
    config = load_config(HIGGS)
    assert config.evaluate.bins == "auto"
    assert load_config(HIGGS, ["evaluate.bins=30"]).evaluate.bins == 30
    with pytest.raises(HepdaskError, match=r"evaluate\.bins.*'auto'"):
        load_config(HIGGS, ["evaluate.bins='many'"])


def test_denormalize_undoes_normalize(higgs_data, tmp_path):
    config = load_config(HIGGS, higgs_overrides(higgs_data))
    pipe = Pipeline(config, output=tmp_path / "run", progress=False)
    layout = pipe.features().layout
    raw = np.random.default_rng(1).normal(50, 20, (100, layout.width)).astype(np.float32)
    raw[3, 0] = -999.0  # the sentinel: missing, so NaN after the round trip
    back = denormalize(normalize(raw.copy(), layout), layout)
    assert np.isnan(back[3, 0])
    keep = ~np.isnan(back)
    np.testing.assert_allclose(back[keep], raw[keep], rtol=1e-4, atol=1e-3)
    assert not np.allclose(normalize(raw.copy(), layout)[keep], raw[keep])


def test_weighted_correlation_with_missing_values():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 3))
    x[:, 1] += x[:, 0]
    w = np.ones(len(x))
    np.testing.assert_allclose(weighted_correlation(x, w), np.corrcoef(x.T), atol=1e-2)
    x[:500, 2] = np.nan  # pairs with column 2 use the events where both are defined
    corr = weighted_correlation(x, w)
    assert np.isfinite(corr).all()
    np.testing.assert_allclose(corr[0, 2], np.corrcoef(x[500:, 0], x[500:, 2])[0, 1], atol=0.02)


@pytest.mark.parametrize(("name", "unit"), [
    ("DER_mass_MMC", "GeV"), ("PRI_met", "GeV"), ("Jet_pt[0]", "GeV"), ("PRI_tau_eta", ""),
    ("DER_pt_ratio_lep_tau", ""), ("PRI_met_phi", ""), ("PRI_jet_num", ""), ("Jet.n", "")])
def test_units_from_feature_names(name, unit):
    assert unit_of(name) == unit


def test_the_feature_sample_takes_every_block_not_the_first_rows():
    import dask.array as da

    from hepdask.features import SplitArrays

    signal = np.column_stack([np.ones((600, 2)), np.ones(600), np.ones(600)])  # [X | y | w]
    background = np.column_stack([np.zeros((1400, 2)), np.zeros(1400), np.ones(1400)])
    split = SplitArrays(da.concatenate([da.from_array(signal, chunks=(300, 4)),
                                        da.from_array(background, chunks=(700, 4))]))
    sample = split.sample(500).compute()
    assert 500 <= len(sample) <= 504
    assert (sample[:, -2] == 1).sum() == 150  # each block gives the same fraction, 1/4
    assert split.sample(10_000) is split.matrix

