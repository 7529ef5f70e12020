"""Specs against NumPy references; padding, masks and normalisation; the partition-free split."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import shared_file, toy_config

from hepdask.config import from_dict, load_config
from hepdask.dataset import open_dataset, split_codes
from hepdask.features import build_features, make_layout, partition_matrix
from hepdask.specs import Specs, compute_specs, load_or_compute_specs


def hzz_config(**features):
    return from_dict({
        "samples": [{"name": "hzz", "label": 1, "weight": "EventWeight",
                     "files": [str(shared_file("root", "uproot-HZZ.root"))]}],
        "data": {"step_size": 700},
        "features": features,
    })


def reference(values, sentinel=None) -> dict:
    """Specs of one branch computed directly with NumPy/awkward on the whole array."""
    flat = ak.flatten(values, axis=None) if values.ndim > 1 else values
    x = ak.to_numpy(flat).astype(np.float64)
    bad = ~np.isfinite(x) | ((x == sentinel) if sentinel is not None else False)
    good = x[~bad]
    out = {"count": len(x), "missing": int(bad.sum()), "min": good.min(), "max": good.max(),
           "mean": good.mean(), "std": good.std()}
    if values.ndim > 1:
        out["max_multiplicity"] = int(ak.max(ak.num(values)))
        out["multiplicity"] = np.bincount(ak.to_numpy(ak.num(values))).tolist()
    return out


def check_specs(specs: Specs, arrays: dict, sentinel=None) -> None:
    for name, values in arrays.items():
        ref, got = reference(values, sentinel), specs[name]
        assert got.count == ref["count"], name
        assert got.missing == ref["missing"], name
        assert got.min == ref["min"] and got.max == ref["max"], name
        assert got.mean == pytest.approx(ref["mean"], rel=1e-9, abs=1e-12), name
        assert got.std == pytest.approx(ref["std"], rel=1e-9), name
        if "max_multiplicity" in ref:
            assert got.max_multiplicity == ref["max_multiplicity"], name
            assert got.multiplicity == ref["multiplicity"], name


def test_specs_match_numpy_on_hzz(client):
    config = hzz_config(branches=["Jet_*", "Muon_Px", "Muon_Charge", "MET_px", "NJet"])
    dataset = open_dataset(config)
    specs = compute_specs(dataset, client=client)
    names = [b.name for b in dataset.branches]
    assert {"Jet_Px", "Jet_ID", "Muon_Charge", "MET_px"} <= set(names)
    assert "NJet" not in names  # the column Jet.n replaces the counter
    arrays = uproot.open(dataset.samples[0].files[0].path)["events"].arrays(names)
    check_specs(specs, {n: arrays[n] for n in names})
    weights = uproot.open(dataset.samples[0].files[0].path)["events"]["EventWeight"].array(library="np")
    assert specs.samples["hzz"].events == 2421
    assert specs.samples["hzz"].weight_sum == pytest.approx(np.sum(weights, dtype=np.float64), rel=1e-9)


def test_specs_match_numpy_on_generated_data_with_sentinel(toy_data, tmp_path, client):
    config = load_config(toy_config(tmp_path, toy_data["dir"]))
    dataset = open_dataset(config)
    specs = compute_specs(dataset, client=client)
    merged = {name: ak.concatenate([toy_data["arrays"][f][name] for f in ("sig_0", "sig_1", "bkg_0")])
              for name in ("mass", "met", "mmc", "njet", "Jet_pt", "Jet_eta")}
    check_specs(specs, merged, sentinel=-999.0)
    assert specs["mmc"].sentinel == int(np.sum(ak.to_numpy(merged["mmc"]) == -999.0)) > 0
    assert specs.samples["signal"].events == 5000 and specs.samples["background"].events == 6000
    assert specs.samples["background"].weight_sum == pytest.approx(12000.0)


def test_specs_cache_reused_and_invalidated(toy_data, tmp_path, client):
    config = load_config(toy_config(tmp_path, toy_data["dir"]))
    path = tmp_path / "specs.json"
    first, reused = load_or_compute_specs(open_dataset(config), path, client=client)
    assert not reused and path.exists()
    again, reused = load_or_compute_specs(open_dataset(config), path, client=client)
    assert reused and again.branches["mass"].mean == first.branches["mass"].mean
    changed = load_config(toy_config(tmp_path, toy_data["dir"]), ["data.sentinel=-1.0"])
    _, reused = load_or_compute_specs(open_dataset(changed), path, client=client)
    assert not reused


def test_hzz_jets_padded_clipped_and_masked(client):
    config = hzz_config(branches=["Jet_Px", "Jet_ID", "MET_px"], pad=2, normalize="none")
    dataset = open_dataset(config)
    specs = compute_specs(dataset, client=client)
    layout = make_layout(dataset, specs, config.features)
    assert layout.names == ("Jet.n", "Jet.mask[0]", "Jet.mask[1]", "Jet_Px[0]", "Jet_Px[1]",
                            "Jet_ID[0]", "Jet_ID[1]", "MET_px")
    events = uproot.open(dataset.samples[0].files[0].path)["events"].arrays(
        ["Jet_Px", "Jet_ID", "MET_px"], entry_stop=5)
    # By hand, from the file: event 0 no jet, 1 one jet, 3 three jets (clipped to 2), 4 two jets.
    px = events["Jet_Px"].tolist()
    assert [len(j) for j in px] == [0, 1, 0, 3, 2]
    m = partition_matrix({n: events[n] for n in events.fields}, layout)
    nan = np.nan
    np.testing.assert_array_equal(m[:, 0], [0, 1, 0, 3, 2])  # Jet.n, not normalised
    np.testing.assert_array_equal(m[:, 1:3], [[0, 0], [1, 0], [0, 0], [1, 1], [1, 1]])
    np.testing.assert_array_equal(m[:, 3], np.float32([nan, px[1][0], nan, px[3][0], px[4][0]]))
    np.testing.assert_array_equal(m[:, 4], np.float32([nan, nan, nan, px[3][1], px[4][1]]))
    np.testing.assert_array_equal(m[:, 5], [nan, 1, nan, 1, 1])  # Jet_ID is bool
    np.testing.assert_array_equal(m[:, 7], events["MET_px"].to_numpy())
    assert m.dtype == np.float32


def test_pad_max_and_normalisation_from_specs(client):
    config = hzz_config(branches=["Jet_E", "MET_px"], pad="max", normalize="standard")
    dataset = open_dataset(config)
    specs = compute_specs(dataset, client=client)
    layout = make_layout(dataset, specs, config.features)
    assert sum(n.startswith("Jet_E[") for n in layout.names) == specs["Jet_E"].max_multiplicity == 5
    events = uproot.open(dataset.samples[0].files[0].path)["events"].arrays(["Jet_E", "MET_px"])
    m = partition_matrix({n: events[n] for n in events.fields}, layout)
    met = m[:, layout.names.index("MET_px")].astype(np.float64)
    assert met.mean() == pytest.approx(0.0, abs=1e-5) and met.std() == pytest.approx(1.0, rel=1e-5)
    lead = m[:, layout.names.index("Jet_E[0]")]
    expected = (ak.to_numpy(ak.firsts(events["Jet_E"])[ak.num(events["Jet_E"]) > 0]) -
                specs["Jet_E"].mean) / specs["Jet_E"].std
    np.testing.assert_allclose(lead[~np.isnan(lead)], expected, rtol=1e-5, atol=1e-6)


def test_sentinel_becomes_nan_and_minmax(toy_data, tmp_path, client):
    config = load_config(toy_config(tmp_path, toy_data["dir"]), ["features.normalize='minmax'"])
    dataset = open_dataset(config)
    specs = compute_specs(dataset, client=client)
    layout = make_layout(dataset, specs, config.features)
    raw = toy_data["arrays"]["bkg_0"]
    m = partition_matrix(dict(raw), layout)
    mmc = m[:, layout.names.index("mmc")]
    assert np.array_equal(np.isnan(mmc), ak.to_numpy(raw["mmc"]) == -999.0)
    mass = m[:, layout.names.index("mass")]
    assert 0.0 <= np.nanmin(mass) and np.nanmax(mass) <= 1.0


@pytest.mark.parametrize("step_sizes", [(1500, 977)])
def test_split_identical_with_different_step_size(toy_data, tmp_path, client, step_sizes):
    """Each event lands in the same split whatever the partitioning."""
    results = []
    for step in step_sizes:
        config = load_config(toy_config(tmp_path, toy_data["dir"]), [f"data.step_size={step}"])
        dataset = open_dataset(config)
        specs = compute_specs(dataset, client=client)
        features = build_features(dataset, make_layout(dataset, specs, config.features), specs)
        assert all(not np.isnan(c) for c in features.train.X.chunks[0])
        X = {s: client.compute(features[s].X, sync=True) for s in ("train", "validation", "test")}
        # Rows are identified by their (mass, met) values, unique in continuous random data.
        results.append({s: sorted(map(tuple, x[:, :2].tolist())) for s, x in X.items()})
        assert len(dataset.samples[0].partitions) == sum(-(-f.entries // step)
                                                         for f in dataset.samples[0].files)
    assert results[0] == results[1]
    sizes = {s: len(v) for s, v in results[0].items()}
    assert sizes["train"] + sizes["validation"] + sizes["test"] == 11000
    assert sizes["train"] == pytest.approx(0.6 * 11000, rel=0.05)


def test_split_codes_follow_fractions_and_seed():
    from hepdask.config import SplitConfig
    from hepdask.dataset import Partition

    part = Partition("s", "f.root", 0, 200_000)
    codes = split_codes(part, SplitConfig(train=0.5, validation=0.25, test=0.25))
    np.testing.assert_allclose(np.bincount(codes) / len(codes), [0.5, 0.25, 0.25], atol=0.005)
    other = split_codes(part, SplitConfig(train=0.5, validation=0.25, test=0.25, seed=1))
    assert (codes != other).mean() > 0.5
    tail = split_codes(Partition("s", "f.root", 100_000, 200_000),
                       SplitConfig(train=0.5, validation=0.25, test=0.25))
    np.testing.assert_array_equal(tail, codes[100_000:])
