"""Jagged collections, derived branches and selections on real files, against references
computed by hand (Python loops) or directly with NumPy/awkward."""

from __future__ import annotations

import math
import subprocess
import sys

import awkward as ak
import dask_awkward as dak
import numpy as np
import pytest
import uproot
from conftest import shared_file

from hepdask.config import from_dict
from hepdask.dataset import open_dataset
from hepdask.errors import HepdaskError
from hepdask.features import build_features, make_layout, partition_matrix
from hepdask.specs import compute_specs

JET_PT = "sqrt(Jet_Px**2 + Jet_Py**2)"


def hzz(**sections) -> dict:
    raw = {"samples": [{"name": "hzz", "label": 1, "weight": "EventWeight",
                        "files": [str(shared_file("root", "uproot-HZZ.root"))]}],
           "data": {"step_size": 700}}
    raw.update(sections)
    return raw


def hzz_arrays() -> ak.Array:
    return uproot.open(shared_file("root", "uproot-HZZ.root"))["events"].arrays()


def preprocessed(config):
    """The dataset and the preprocessed events of the whole (one-file) sample, in one piece."""
    dataset = open_dataset(config)
    sample = dataset.samples[0]
    raw = uproot.open(sample.files[0].path)["events"].arrays(sample.columns)
    return dataset, dataset.preprocess.apply(raw, sample.name, 0)


def test_jets_sorted_by_pt_and_padded_to_4_match_a_hand_computation():
    config = from_dict(hzz(
        derived={"Jet_pt": JET_PT},
        features={"branches": ["Jet_pt", "Jet_E"], "normalize": "none",
                  "collections": {"Jet": {"pad": 4, "sort_by": "Jet_pt"}}},
    ))
    dataset, events = preprocessed(config)
    specs_stub = _unit_specs(dataset)
    layout = make_layout(dataset, specs_stub, config.features)
    assert layout.names == ("Jet.n", *(f"Jet.mask[{i}]" for i in range(4)),
                            *(f"Jet_E[{i}]" for i in range(4)), *(f"Jet_pt[{i}]" for i in range(4)))
    m = partition_matrix(events.values, layout)
    arrays = hzz_arrays()
    for row, (px, py, energy) in enumerate(zip(arrays["Jet_Px"].tolist(), arrays["Jet_Py"].tolist(),
                                               arrays["Jet_E"].tolist(), strict=True)):
        jets = sorted(((math.sqrt(x * x + y * y), e) for x, y, e in zip(px, py, energy, strict=True)),
                      key=lambda j: -j[0])[:4]
        pts = [j[0] for j in jets] + [math.nan] * (4 - len(jets))
        es = [j[1] for j in jets] + [math.nan] * (4 - len(jets))
        assert m[row, 0] == len(px)
        np.testing.assert_array_equal(m[row, 1:5], [i < len(jets) for i in range(4)])
        np.testing.assert_array_equal(m[row, 5:9], np.float32(es))
        np.testing.assert_allclose(m[row, 9:13], pts, rtol=1e-6)
    steps = np.diff(m[:, 9:13], axis=1)
    assert np.all(steps[~np.isnan(steps)] <= 0)  # descending pt


def _unit_specs(dataset):
    """Specs that leave values unnormalised and give every collection its largest multiplicity."""
    from hepdask.specs import BranchSpec, Specs

    return Specs("", {b.name: BranchSpec(b.name, b.jagged, count=1, multiplicity=[1] * 10)
                      for b in dataset.branches}, {})


def test_q99_pad_is_the_numpy_quantile_of_the_multiplicities(client):
    config = from_dict(hzz(features={"branches": ["Jet_E", "Muon_E", "Photon_E"], "pad": "q99",
                                     "collections": {"Muon": {"pad": "q50"}}}))
    dataset = open_dataset(config)
    specs = compute_specs(dataset, client=client)
    layout = make_layout(dataset, specs, config.features)
    arrays = hzz_arrays()
    for collection, q in (("Jet", 0.99), ("Muon", 0.50), ("Photon", 0.99)):
        counts = ak.to_numpy(ak.num(arrays[f"{collection}_E"]))
        expected = max(1, int(np.quantile(counts, q, method="inverted_cdf")))
        assert sum(n.startswith(f"{collection}_E[") for n in layout.names) == expected, collection
        assert sum(n.startswith(f"{collection}.mask[") for n in layout.names) == expected
    assert specs["Jet_E"].max_multiplicity > sum(n.startswith("Jet_E[") for n in layout.names)


def test_derived_branches_object_selection_and_event_cut_match_awkward(client):
    config = from_dict(hzz(
        derived={"Jet_pt": JET_PT, "Jet_eta": "arcsinh(Jet_Pz / Jet_pt)", "HT": "sum(Jet_pt)",
                 "MET_pt": "hypot(MET_px, MET_py)", "lead_mu_pt": "max(sqrt(Muon_Px**2 + Muon_Py**2))"},
        selection={"events": "NMuon >= 2 and MET_pt > 20",
                   "objects": {"Jet": "Jet_pt > 30 and abs(Jet_eta) < 2.4"}},
        features={"branches": ["HT", "Jet_pt", "MET_pt", "lead_mu_pt"], "normalize": "none",
                  "pad": 3},
    ))
    dataset, events = preprocessed(config)
    arrays = hzz_arrays()
    pt = np.sqrt(arrays["Jet_Px"] ** 2 + arrays["Jet_Py"] ** 2)
    eta = np.arcsinh(arrays["Jet_Pz"] / pt)
    good = pt[(pt > 30) & (np.abs(eta) < 2.4)]
    met = np.hypot(arrays["MET_px"], arrays["MET_py"])
    keep = ak.to_numpy((arrays["NMuon"] >= 2) & (met > 20))
    assert 0 < keep.sum() < len(keep)
    np.testing.assert_array_equal(events.entry, np.flatnonzero(keep))
    np.testing.assert_allclose(ak.to_numpy(events.values["HT"]), ak.to_numpy(ak.sum(good, axis=1))[keep],
                               rtol=1e-6)
    assert ak.all(ak.num(events.values["Jet_pt"]) == ak.num(good)[keep])
    np.testing.assert_allclose(ak.to_numpy(ak.flatten(events.values["Jet_pt"])),
                               ak.to_numpy(ak.flatten(good[keep])), rtol=1e-6)
    mu_pt = np.sqrt(arrays["Muon_Px"] ** 2 + arrays["Muon_Py"] ** 2)
    np.testing.assert_allclose(ak.to_numpy(events.values["lead_mu_pt"]),
                               ak.to_numpy(ak.max(mu_pt, axis=1))[keep], rtol=1e-6)
    np.testing.assert_array_equal(events.weight, ak.to_numpy(arrays["EventWeight"])[keep])

    # Only the branches the expressions need are read: dask-awkward's column report of the
    # collection read for the sample.
    report = dak.report_necessary_columns(dataset.samples[0].events())
    (read,) = report.values()
    assert set(read) == {"Jet_Px", "Jet_Py", "Jet_Pz", "MET_px", "MET_py", "NMuon",
                         "Muon_Px", "Muon_Py", "EventWeight"}

    # The distributed specs agree and count the cut flow.
    specs = compute_specs(dataset, client=client)
    assert specs.samples["hzz"].read == len(keep) and specs.samples["hzz"].events == keep.sum()
    assert specs["HT"].count == keep.sum()
    assert specs["HT"].mean == pytest.approx(float(np.mean(ak.to_numpy(ak.sum(good, axis=1))[keep])))
    assert len(specs.partitions["hzz"]) == 4 and sum(map(sum, specs.partitions["hzz"])) == keep.sum()
    features = build_features(dataset, make_layout(dataset, specs, config.features), specs)
    assert sum(len(features[s]) for s in ("train", "validation", "test")) == keep.sum()


def test_counter_counts_the_selected_objects_and_is_replaced_by_the_multiplicity_column():
    config = from_dict(hzz(
        derived={"Jet_pt": JET_PT},
        selection={"objects": {"Jet": "Jet_pt > 40"}},
        features={"branches": ["NJet", "Jet_E", "MET_px"], "pad": 2, "normalize": "none"},
    ))
    dataset, events = preprocessed(config)
    assert [b.name for b in dataset.branches] == ["Jet_E", "MET_px"]
    assert any("'NJet'" in n and "Jet.n" in n for n in dataset.notes)
    arrays = hzz_arrays()
    n_good = ak.to_numpy(ak.sum(np.sqrt(arrays["Jet_Px"] ** 2 + arrays["Jet_Py"] ** 2) > 40, axis=1))
    layout = make_layout(dataset, _unit_specs(dataset), config.features)
    m = partition_matrix(events.values, layout)
    np.testing.assert_array_equal(m[:, layout.names.index("Jet.n")], n_good)

    kept = from_dict(hzz(derived={"Jet_pt": JET_PT}, selection={"objects": {"Jet": "Jet_pt > 40"}},
                         features={"branches": ["NJet", "Jet_E"],
                                   "collections": {"Jet": {"multiplicity": False, "mask": False}}}))
    dataset, events = preprocessed(kept)
    np.testing.assert_array_equal(ak.to_numpy(events.values["NJet"]), n_good)
    layout = make_layout(dataset, _unit_specs(dataset), kept.features)
    assert not any(".n" in n or ".mask" in n for n in layout.names)


@pytest.mark.parametrize(("sections", "match"), [
    ({"derived": {"HT": "sum(Jet_Pt)"}}, r"derived.HT: unknown name 'Jet_Pt'.*"),
    ({"derived": {"x": "Jet_Px * Muon_Px"}}, r"derived.x: .*Jet.*Muon"),
    ({"selection": {"events": "Jet_Px > 3"}}, r"selection.events.*one value per event.*any"),
    ({"selection": {"objects": {"Jets": "Jet_Px > 3"}}}, r"no collection 'Jets'.*Jet, "),
    ({"selection": {"objects": {"Jet": "MET_px > 3"}}}, r"selection.objects.Jet.*per object of Jet"),
    ({"derived": {"a": "b + 1", "b": "a * 2"}}, r"circle \(a -> b -> a\)"),
    ({"derived": {"NJet": "NMuon"}}, r"already has a branch 'NJet'"),
    ({"features": {"collections": {"Jet": {"pad": "q101"}}}}, r"features.collections.Jet.pad"),
    ({"derived": {"x": "__import__('os').system('echo hacked')"}}, r"derived.x"),
    ({"derived": {"x": "Jet_Px.__class__"}}, r"derived.x"),
])
def test_bad_expressions_are_refused_before_reading(sections, match):
    with pytest.raises(HepdaskError, match=match):
        open_dataset(from_dict(hzz(**sections)))


def test_label_from_an_expression_is_never_a_feature():
    raw = hzz(features={"branches": ["*"]})
    raw["samples"][0]["label"] = "MCleptonPDGid == 13"
    dataset, events = preprocessed(from_dict(raw))
    names = [b.name for b in dataset.branches]
    assert "MCleptonPDGid" not in names and "EventWeight" not in names
    expected = ak.to_numpy(hzz_arrays()["MCleptonPDGid"] == 13).astype(np.int64)
    np.testing.assert_array_equal(events.label, expected)
    raw["samples"][0]["label"] = "MET_px"
    with pytest.raises(HepdaskError, match=r"samples.hzz.label.*class number"):
        preprocessed(from_dict(raw))


def test_nanoaod_selection_reads_only_those_columns(tmp_path):
    nano = shared_file("root", "nanoAOD_2015_CMS_Open_Data_ttbar.root")
    config = tmp_path / "nano.toml"
    config.write_text(f"""
name = "nano"
output = "{tmp_path / 'runs'}"
[[samples]]
name = "ttbar"
files = ["{nano}"]
label = 1
[data]
tree = "Events"
[features]
branches = ["Jet_*", "Muon_*", "MET_*"]
pad = "q99"
[cluster]
n_workers = 1
dashboard_address = "127.0.0.1:0"
""")
    from hepdask.config import load_config

    dataset = open_dataset(load_config(config))
    (read,) = dak.report_necessary_columns(dataset.samples[0].events()).values()
    assert read and all(c.split("_")[0] in ("Jet", "Muon", "MET") for c in read)
    assert {"Jet_pt", "Muon_pt", "MET_pt"} <= set(read) and len(read) < 200
    result = subprocess.run([sys.executable, "-m", "hepdask", "specs", str(config)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Jet_pt" in result.stdout and "Muon_pt" in result.stdout and "Electron_" not in result.stdout
    assert "ttbar: 200 read, 200 selected" in result.stdout


def test_nanoaod_all_branches(client):
    nano = str(shared_file("root", "nanoAOD_2015_CMS_Open_Data_ttbar.root"))
    config = from_dict({"samples": [{"name": "tt", "files": [nano], "label": 1}],
                        "data": {"tree": "Events"}, "features": {"branches": ["*"], "pad": 2}})
    dataset = open_dataset(config)
    tree = uproot.open(nano)["Events"]
    assert len(tree.keys()) == 947
    counters = [n for n in dataset.notes if "counts the" in n]
    assert len(dataset.branches) + len(counters) == 947 and not any("not numeric" in n
                                                                    for n in dataset.notes)
    specs = compute_specs(dataset, client=client)
    layout = make_layout(dataset, specs, config.features)
    assert specs.samples["tt"].events == 200 and layout.width > 947
    features = build_features(dataset, layout, specs)
    X = client.compute(features.train.X, sync=True)
    assert X.shape[1] == layout.width and X.dtype == np.float32
