"""Bad configs and bad inputs give one clear message naming the key, file or branch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import shared_file, toy_config

from hepdask import HepdaskError, load_config
from hepdask.config import apply_overrides, from_dict
from hepdask.dataset import open_dataset


def good(data_dir):
    return {"samples": [{"name": "s", "files": [f"{data_dir}/sig_0.root"], "label": 1},
                        {"name": "b", "files": [f"{data_dir}/bkg_0.root"], "label": 0}]}


@pytest.mark.parametrize("patch, words", [
    ({"trian": {}}, ["'trian'", "Did you mean 'train'"]),
    ({"train": {"xgboost": {"num_boost_rounds": 5}}},
     ["train.xgboost.num_boost_rounds", "Did you mean 'train.xgboost.num_boost_round'"]),
    ({"data": {"step_size": "big"}}, ["data.step_size", "an integer", "'big'"]),
    ({"data": {"step_size": 0}}, ["data.step_size", "positive"]),
    ({"features": {"normalize": "standrd"}}, ["features.normalize", "Did you mean 'standard'"]),
    ({"features": {"pad": "all"}}, ["features.pad", "\"max\""]),
    ({"split": {"train": 0.9}}, ["split.train/validation/test", "sum to 1"]),
    ({"train": {"engine": "xgbost"}}, ["train.engine", "Did you mean 'xgboost'"]),
    ({"features": {"branches": 3}}, ["features.branches", "list of strings"]),
])
def test_bad_config_values(toy_data, patch, words):
    raw = good(toy_data["dir"]) | patch
    with pytest.raises(HepdaskError) as err:
        from_dict(raw)
    for word in words:
        assert word in str(err.value)


def test_sample_errors(toy_data):
    raw = good(toy_data["dir"])
    del raw["samples"][0]["label"]
    with pytest.raises(HepdaskError, match=r"lacks the required key.*'label'"):
        from_dict(raw)
    with pytest.raises(HepdaskError, match="no \\[\\[samples\\]\\]"):
        from_dict({"samples": []})


def test_overrides(toy_data, tmp_path):
    config = load_config(toy_config(tmp_path, toy_data["dir"]),
                         ["train.xgboost.num_boost_round=7", "samples.1.tree=events",
                          "name=other", "features.branches=['mass']"])
    assert config.train.xgboost.num_boost_round == 7
    assert config.samples[1].tree == "events"
    assert config.name == "other" and config.features.branches == ("mass",)
    with pytest.raises(HepdaskError, match=r"key.sub=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(HepdaskError, match=r"samples.0.files"):
        apply_overrides({"samples": [{}]}, ["samples.5.label=1"])


def test_missing_file_and_glob(toy_data, tmp_path):
    raw = good(toy_data["dir"])
    raw["samples"][0]["files"] = [str(tmp_path / "nope.root")]
    with pytest.raises(HepdaskError, match=r"samples.s.files names .*nope.root, which does not exist"):
        open_dataset(from_dict(raw))
    raw["samples"][0]["files"] = [str(tmp_path / "nothing_*.root")]
    with pytest.raises(HepdaskError, match="matches no file"):
        open_dataset(from_dict(raw))


def test_file_list_txt(toy_data, tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text(f"# signal files\n{toy_data['dir']}/sig_0.root\n\n{toy_data['dir']}/sig_1.root  # second\n")
    raw = good(toy_data["dir"])
    raw["samples"][0]["files"] = [str(listing)]
    dataset = open_dataset(from_dict(raw))
    assert [f.entries for f in dataset.samples[0].files] == [3000, 2000]


def test_missing_branch_suggests(toy_data):
    raw = good(toy_data["dir"]) | {"features": {"branches": ["mas", "met"]}}
    with pytest.raises(HepdaskError) as err:
        open_dataset(from_dict(raw))
    text = str(err.value)
    assert "'mas'" in text and "features.branches" in text and "Closest: mass" in text
    assert "sig_0.root" in text
    raw = good(toy_data["dir"])
    raw["samples"][1]["weight"] = "wieght"
    with pytest.raises(HepdaskError, match=r"samples.b.weight: unknown name 'wieght'. Did you mean 'weight'"):
        open_dataset(from_dict(raw))


def test_wrong_tree_and_not_root(toy_data, tmp_path):
    raw = good(toy_data["dir"]) | {"data": {"tree": "Events"}}
    with pytest.raises(HepdaskError, match="has no tree 'Events'; its trees are \\['events'\\]"):
        open_dataset(from_dict(raw))
    junk = tmp_path / "junk.root"
    junk.write_text("this is not a ROOT file\n")
    raw = good(toy_data["dir"])
    raw["samples"][0]["files"] = [str(junk)]
    with pytest.raises(HepdaskError, match=r"junk.root .*as a ROOT file"):
        open_dataset(from_dict(raw))


def test_string_branch_skipped_or_refused():
    zmumu = str(shared_file("root", "uproot-Zmumu.root"))
    samples = [{"name": "z", "files": [zmumu], "label": 1}]
    dataset = open_dataset(from_dict({"samples": samples, "features": {"branches": ["*"]}}))
    names = [b.name for b in dataset.branches]
    assert "Type" not in names and "M" in names
    assert any("'Type'" in note and "not numeric" in note for note in dataset.notes)
    with pytest.raises(HepdaskError, match=r"'Type'.*not numeric"):
        open_dataset(from_dict({"samples": samples, "features": {"branches": ["Type", "M"]}}))


def test_cli_prints_one_paragraph_not_a_traceback(toy_data, tmp_path):
    config = toy_config(tmp_path, toy_data["dir"], extra="\n[evaluate]\nams_b_reg = 3\n")
    result = subprocess.run([sys.executable, "-m", "hepdask", "run", str(config)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "hepdask: error: Unknown config key 'evaluate.ams_b_reg'. Did you mean 'evaluate.ams_breg'?" \
        in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written
