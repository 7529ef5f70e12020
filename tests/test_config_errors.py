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


# -- user files and optional dependencies, checked when the config is loaded ----------------


@pytest.mark.parametrize("source, key, spec, words", [
    (None, "train.keras.model", "missing.py:build", ["train.keras.model", "missing.py", "does not exist"]),
    ("def other(n):\n    pass\n", "train.keras.model", "model.py:build",
     ["train.keras.model", "no function 'build'", "it defines other"]),
    ("def build(n:\n    pass\n", "train.keras.model", "model.py:build",
     ["train.keras.model", "model.py", "line 1", "not valid Python"]),
    (None, "train.xgboost.model", "missing.py:make", ["train.xgboost.model", "does not exist"]),
    (None, "train.sklearn.estimator", "missing.py:make", ["train.sklearn.estimator", "does not exist"]),
    (None, "train.sklearn.estimator", "sklearn.linear_model.SGDClasifier",
     ["train.sklearn.estimator", "cannot import", "Did you mean 'sklearn.linear_model.SGDClassifier'"]),
    (None, "train.sklearn.estimator", "sklaern.linear_model.SGDClassifier",
     ["train.sklearn.estimator", "cannot import", "no module 'sklaern'"]),
])
def test_user_files_are_checked_when_the_config_is_loaded(toy_data, tmp_path, source, key, spec,
                                                          words):
    """The user's model file (and the sklearn class path) is checked by load_config, without
    running the file: before the specs pass, not after it."""
    if source is not None:
        (tmp_path / "model.py").write_text(source)
    *parents, leaf = key.split(".")
    engine = parents[1]
    path = spec if spec.startswith("sklaern.") or spec.startswith("sklearn.") else f"{tmp_path / spec}"
    raw = good(toy_data["dir"]) | {"train": {"engine": engine, engine: {leaf: path}}}
    with pytest.raises(HepdaskError) as err:
        from_dict(raw)
    for word in words:
        assert word in str(err.value)


def test_a_good_user_file_is_not_run_when_the_config_is_loaded(toy_data, tmp_path):
    (tmp_path / "model.py").write_text("raise SystemExit('ran')\ndef build(n):\n    pass\n")
    raw = good(toy_data["dir"]) | {"train": {"engine": "keras",
                                             "keras": {"model": f"{tmp_path}/model.py:build"}}}
    assert from_dict(raw).train.keras.model.endswith("model.py:build")


def cli(args: list[str], block: tuple[str, ...] = (), cwd=None) -> subprocess.CompletedProcess:
    """``python -m hepdask ARGS``; the modules in ``block`` are made unimportable by setting
    ``sys.modules[name] = None`` before hepdask is imported (importlib.util.find_spec then
    answers None and ``import`` raises ImportError, as when the package is not installed)."""
    shim = ("import sys\n"
            f"for name in {list(block)!r}: sys.modules[name] = None\n"
            "from hepdask.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", shim, *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def assert_refused_up_front(result: subprocess.CompletedProcess, tmp_path, *words: str) -> None:
    """Exit 2 with one paragraph naming the key, before any cluster or run directory exists."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hepdask: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Local cluster" not in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, block, words", [
    ("\n[train]\nengine = \"keras\"\n[train.keras]\nmodel = \"nothere/model.py:build\"\n", (),
     ["train.keras.model", "nothere/model.py", "does not exist"]),
    ("\n[train]\nengine = \"keras\"\n", ("tensorflow",),
     ["train.engine = \"keras\"", "tensorflow", "pip install 'hepdask[keras]'"]),
    ("\n[train.xgboost.params]\nobjective = \"binary:logistic\"\nmax_dept = 4\n", (),
     ["train.xgboost.params.max_dept", "Did you mean 'train.xgboost.params.max_depth'",
      "check_params"]),
])
def test_cli_refuses_before_any_work(toy_data, tmp_path, extra, block, words):
    """A missing model file, TensorFlow not installed (blocked in a subprocess, see ``cli``) or
    a misspelt XGBoost parameter: exit 2 before the cluster starts, not after the specs."""
    config = toy_config(tmp_path, toy_data["dir"], extra=extra)
    assert_refused_up_front(cli(["run", str(config)], block), tmp_path, *words)


def test_optional_dependencies_are_checked_with_the_config(toy_data, monkeypatch):
    """find_spec is patched to say that dask-gateway, fsspec-xrootd and aiohttp are missing."""
    import importlib.util

    real = importlib.util.find_spec
    missing = {"dask_gateway", "fsspec_xrootd", "aiohttp"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in missing else real(name, *a))
    with pytest.raises(HepdaskError, match=r"cluster.kind = \"gateway\" needs .*dask-gateway"):
        from_dict(good(toy_data["dir"]) | {"cluster": {"kind": "gateway"}})
    raw = good(toy_data["dir"])
    raw["samples"][0]["files"] = ["root://eospublic.cern.ch//eos/x.root"]
    with pytest.raises(HepdaskError, match=r"samples.s.files names root://.*fsspec-xrootd"):
        from_dict(raw)
    raw["samples"][0]["files"] = ["https://example.org/x.root"]
    with pytest.raises(HepdaskError, match=r"samples.s.files names https://.*aiohttp"):
        from_dict(raw)


# -- numeric bounds -------------------------------------------------------------------------


@pytest.mark.parametrize("patch, words", [
    ({"cluster": {"n_workers": -1}}, ["cluster.n_workers", "-1", "at least 1"]),
    ({"cluster": {"n_workers": 0}}, ["cluster.n_workers", "at least 1"]),
    ({"cluster": {"threads_per_worker": 0}}, ["cluster.threads_per_worker", "at least 1"]),
    ({"cluster": {"memory_limit": "lots"}}, ["cluster.memory_limit", "'lots'", "\"4GiB\""]),
    ({"cluster": {"memory_limit": "0GB"}}, ["cluster.memory_limit", "'0GB'"]),
    ({"cluster": {"dashboard_address": "127.0.0.1:99999"}},
     ["cluster.dashboard_address", "99999", "0 to 65535"]),
    ({"cluster": {"address": "tcp://10.0.0.1:0"}}, ["cluster.address", "1 to 65535"]),
    ({"cluster": {"gateway": {"workers": 0}}}, ["cluster.gateway.workers", "at least 1"]),
    ({"cluster": {"gateway": {"adapt_minimum": 3, "adapt_maximum": 2}}},
     ["adapt_minimum (3)", "adapt_maximum (2)"]),
    ({"cluster": {"gateway": {"adapt_minimum": 0, "adapt_maximum": 0}}},
     ["cluster.gateway.adapt_maximum", "at least 1"]),
    ({"cluster": {"gateway": {"timeout": 0}}}, ["cluster.gateway.timeout", "greater than 0"]),
    ({"cluster": {"gateway": {"worker_memory": -2}}},
     ["cluster.gateway.worker_memory", "greater than 0"]),
    ({"train": {"xgboost": {"num_boost_round": 0}}}, ["train.xgboost.num_boost_round", "at least 1"]),
    ({"train": {"xgboost": {"early_stopping_rounds": -1}}},
     ["train.xgboost.early_stopping_rounds", "at least 0"]),
    ({"train": {"xgboost": {"scale_pos_weight": -1}}},
     ["train.xgboost.scale_pos_weight", "greater than 0"]),
    ({"train": {"keras": {"learning_rate": 0}}}, ["train.keras.learning_rate", "greater than 0"]),
    ({"train": {"keras": {"dropout": 1.0}}}, ["train.keras.dropout", "from 0 to below 1"]),
    ({"train": {"keras": {"hidden": [64, 0]}}}, ["train.keras.hidden.1", "at least 1"]),
    ({"train": {"keras": {"patience": -1}}}, ["train.keras.patience", "at least 0"]),
    ({"train": {"sklearn": {"epochs": 0}}}, ["train.sklearn.epochs", "at least 1"]),
    ({"evaluate": {"top_fraction": 1.5}}, ["evaluate.top_fraction", "greater than 0 and at most 1"]),
    ({"evaluate": {"bins": 0}}, ["evaluate.bins", "at least 1"]),
    ({"evaluate": {"ams_breg": -1}}, ["evaluate.ams_breg", "at least 0"]),
])
def test_numeric_keys_are_bounded(toy_data, patch, words):
    with pytest.raises(HepdaskError) as err:
        from_dict(good(toy_data["dir"]) | patch)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_cli_refuses_negative_workers_instead_of_hanging(toy_data, tmp_path):
    config = toy_config(tmp_path, toy_data["dir"])
    result = cli(["run", str(config), "--set", "cluster.n_workers=-1"])
    assert_refused_up_front(result, tmp_path, "cluster.n_workers", "-1", "at least 1")


# -- XGBoost parameters ---------------------------------------------------------------------


@pytest.mark.parametrize("params, words", [
    ({"max_dept": 4}, ["train.xgboost.params.max_dept",
                       "Did you mean 'train.xgboost.params.max_depth'", "check_params = false"]),
    ({"objective": "binary:logistc"}, ["train.xgboost.params.objective", "'binary:logistc'",
                                       "Did you mean 'binary:logistic'"]),
    ({"eval_metric": ["logloss", "aucc"]}, ["train.xgboost.params.eval_metric", "aucc"]),
    ({"tree_method": "hits"}, ["train.xgboost.params.tree_method", "'hits'"]),
    ({"booster": "dart", "rate_dorp": 0.1}, ["train.xgboost.params.rate_dorp",
                                            "Did you mean 'train.xgboost.params.rate_drop'"]),
])
def test_xgboost_params_are_checked_against_xgboost(toy_data, params, words):
    raw = good(toy_data["dir"]) | {"train": {"xgboost": {"params": params}}}
    with pytest.raises(HepdaskError) as err:
        from_dict(raw)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_known_xgboost_params_pass_and_the_check_can_be_turned_off(toy_data):
    params = {"objective": "multi:softprob", "booster": "dart", "rate_drop": 0.1, "eta": 0.1,
              "max_depth": 3, "reg_lambda": 2, "eval_metric": ["mlogloss", "auc"],
              "verbosity": 0, "max_bin": 64, "subsample": 0.8, "seed": 1}
    raw = good(toy_data["dir"]) | {"train": {"xgboost": {"params": params}}}
    assert from_dict(raw).train.xgboost.params == params
    raw["train"]["xgboost"].update(params={"new_param": 1}, check_params=False)
    assert from_dict(raw).train.xgboost.params == {"new_param": 1}
    # only the xgboost engine's parameters are checked
    raw["train"] = {"engine": "sklearn", "xgboost": {"params": {"max_dept": 4}}}
    from_dict(raw)


def test_mlaas4hep_model_file_is_checked_before_any_work(toy_data, tmp_path):
    (tmp_path / "files.txt").write_text(f"{toy_data['dir']}/sig_0.root\n{toy_data['dir']}/bkg_0.root\n")
    result = cli(["run", "--mlaas4hep", "--files", str(tmp_path / "files.txt"), "--labels", "1,0",
                  "--model", str(tmp_path / "nomodel.py")], cwd=tmp_path)
    assert_refused_up_front(result, tmp_path, "--model", "nomodel.py", "does not exist")
