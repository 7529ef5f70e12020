"""Inference: the model bundle, ``hepdask predict`` (friend trees, parquet) and ``hepdask serve``,
checked against the scores of the evaluation step, event by event."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import servers
import uproot
from conftest import toy_config
from test_pipeline import HIGGS, REPO, SMALL, hepdask

from hepdask import HepdaskError, Pipeline, higgsml, load_config
from hepdask.bundle import Bundle
from hepdask.dataset import split_codes
from hepdask.predict import predict

pytestmark = pytest.mark.slow

TOY = [  # jagged jets with an object selection and an ordering, a derived branch, a cut
    'features.branches=["mass", "met", "mmc", "njet", "Jet_*", "ht"]',
    'derived.ht="sum(Jet_pt)"',
    'selection.events="mass > 70"',
    'selection.objects.Jet="Jet_pt > 40"',
    'features.collections.Jet.sort_by="Jet_pt"',
    "train.xgboost.num_boost_round=30",
]


@pytest.fixture(scope="module")
def higgs_data(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("higgs") / "data"
    higgsml.prepare(directory, download=False, synthetic_events=20_000, events_per_file=5000)
    return directory


def train(config: Path, overrides: list[str], output: Path, client):
    """A finished run, and each file's test events with their evaluation scores."""
    pipe = Pipeline(load_config(config, overrides), output=output, client=client, progress=False)
    pipe.run()
    scores, _, _ = pipe.scores("test")
    rows: list[tuple[str, int]] = []  # (file, entry) of each test-split row, in row order
    for sample in pipe.dataset().samples:
        prep = pipe.dataset().preprocess
        for part in sample.partitions:
            with uproot.open(part.file) as f:
                raw = f[sample.tree].arrays(prep.inputs(), entry_start=part.start,
                                            entry_stop=part.stop)
            _, selected = prep.feature_values(raw)
            test = (split_codes(part, pipe.config.split) == 2) & selected
            rows += [(part.file, int(e)) for e in np.arange(part.start, part.stop)[test]]
    assert len(rows) == len(scores) > 100
    return pipe, rows, scores


def higgs_overrides(data: Path, *extra: str) -> list[str]:
    return [*SMALL, f"prepare.directory='{data}'", f"samples.0.files=['{data}/signal_*.root']",
            f"samples.1.files=['{data}/background_*.root']", *extra]


@pytest.fixture(scope="module")
def xgb_run(higgs_data, client, tmp_path_factory):
    return train(HIGGS, higgs_overrides(higgs_data), tmp_path_factory.mktemp("xgb") / "higgs",
                 client)


@pytest.fixture(scope="module")
def keras_run(higgs_data, client, tmp_path_factory):
    pytest.importorskip("keras")
    return train(HIGGS.with_name("higgs-keras.toml"),
                 higgs_overrides(higgs_data, "train.keras.epochs=2",
                                 "train.stream.batch_size=500"),
                 tmp_path_factory.mktemp("keras") / "higgs-keras", client)


@pytest.fixture(scope="module")
def toy_run(toy_data, client, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy")
    return train(toy_config(tmp, toy_data["dir"]), TOY, tmp / "toy", client)


def scheduler(client) -> list[str]:
    return ["--scheduler", client.scheduler.address, "-q"]


def friend_of(output: Path, source: str, tree: str) -> ak.Array:
    with uproot.open(output / Path(source).name) as f:
        return f[tree].arrays()


def assert_same_scores(run, output: Path, tree: str, exact: bool) -> None:
    """The friend trees' scores of the test events are the evaluation's."""
    _, rows, expected = run
    friends = {file: friend_of(output, file, tree)["score"].to_numpy()
               for file in {f for f, _ in rows}}
    got = np.array([friends[file][entry] for file, entry in rows])
    if exact:
        assert got.dtype == expected.dtype == np.float32
        assert np.array_equal(got, expected), np.abs(got - expected).max()
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("engine", ["xgboost", "keras"])
def test_predict_reproduces_the_evaluation_scores(engine, xgb_run, keras_run, client, tmp_path):
    run = xgb_run if engine == "xgboost" else keras_run
    pipe = run[0]
    files = sorted({f for f, _ in run[1]})
    result = hepdask(tmp_path, "predict", str(pipe.run_dir), *files, "-o", "scores",
                     *scheduler(client))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Scored 20000 events in 5 file(s)" in result.stdout
    output = tmp_path / "scores"
    assert sorted(p.name for p in output.iterdir()) == sorted(Path(f).name for f in files)
    assert_same_scores(run, output, pipe.config.name, exact=engine == "xgboost")
    for file in files:  # a friend: same entries, same order, readable beside the original
        with uproot.open(file) as f:
            original = f["events"].arrays(["PRI_tau_pt"])
        friend = friend_of(output, file, pipe.config.name)
        assert len(friend) == len(original) and friend.fields == ["score"]
        both = ak.zip({"events": original, pipe.config.name: friend}, depth_limit=1)
        assert len(both) == len(original)


def test_jagged_inputs_selections_and_parquet_with_passthrough(toy_run, client, tmp_path):
    pipe, rows, _ = toy_run
    bundle = Bundle.load(pipe.run_dir)
    assert bundle.inputs == ["mass", "met", "mmc", "njet", "Jet_pt", "Jet_eta"]
    assert bundle.outputs == ["selected"]
    files = sorted({f for f, _ in rows})
    done = predict(bundle, files, tmp_path / "root", client=client, friend_tree="toyscore")
    assert [d.output.name for d in done] == [Path(f).name for f in files]
    assert_same_scores(toy_run, tmp_path / "root", "toyscore", exact=True)
    predict(bundle, files, tmp_path / "pq", client=client, format="parquet", branch="bdt",
            passthrough=["mass", "Jet_pt"], step_size=700)
    for file in files:
        friend = friend_of(tmp_path / "root", file, "toyscore")
        table = ak.from_arrow(pq.read_table(tmp_path / "pq" / (Path(file).stem + ".parquet")))
        with uproot.open(file) as f:
            original = f["events"].arrays(["mass", "Jet_pt"])
        assert np.array_equal(table["bdt"].to_numpy(), friend["score"].to_numpy())
        assert np.array_equal(table["selected"].to_numpy(), friend["selected"].to_numpy())
        assert np.array_equal(friend["selected"].to_numpy(), original["mass"].to_numpy() > 70)
        assert ak.all(table["mass"] == original["mass"])
        assert ak.all(ak.all(table["Jet_pt"] == original["Jet_pt"], axis=1))


def test_predict_names_a_missing_branch_and_writes_nothing(xgb_run, client, tmp_path):
    pipe, rows, _ = xgb_run
    source = rows[0][0]
    with uproot.open(source) as f:
        arrays = f["events"].arrays()
    lacking = tmp_path / "old_format.root"
    with uproot.recreate(lacking) as f:
        kept = [k for k in arrays.fields if k != "PRI_tau_pt"]
        f.mktree("events", {k: arrays[k].type.content for k in kept})
        f["events"].extend({k: arrays[k] for k in kept})
    result = hepdask(tmp_path, "predict", str(pipe.run_dir), source, str(lacking), "-o", "out",
                     *scheduler(client))
    assert result.returncode == 2
    assert "'PRI_tau_pt'" in result.stderr and str(lacking) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_bundle_errors_are_clear(tmp_path, xgb_run):
    with pytest.raises(HepdaskError, match="no model bundle"):
        Bundle.load(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(xgb_run[0].run_dir, copy)
    (copy / "model.ubj").unlink()
    with pytest.raises(HepdaskError, match=r"model file .* is missing"):
        Bundle.load(copy)


# -- the HTTP service ------------------------------------------------------------------------


def call(url: str, path: str, body=None, *, token: str | None = None, raw: bytes | None = None,
         headers: dict | None = None):
    """(status, decoded JSON) of a GET (no body) or POST."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json", **(headers or {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, _decoded(response)
    except urllib.error.HTTPError as err:
        return err.code, _decoded(err)


def _decoded(response):
    """JSON, or the text of an HTML page."""
    text = response.read()
    return text.decode() if response.headers.get_content_type() == "text/html" else json.loads(text)


TOKEN = "s3cret-for-tests"


@pytest.fixture(scope="module")
def service(xgb_run, keras_run, toy_run, tmp_path_factory):
    """``hepdask serve`` of the three runs, with a token and small limits."""
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "token").write_text(TOKEN + "\n")
    port = servers.free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "hepdask", "serve", str(xgb_run[0].run_dir),
         str(keras_run[0].run_dir), f"toy={toy_run[0].run_dir}", "--port", str(port),
         "--token-file", str(tmp / "token"), "--max-request-mb", "0.5", "--max-events", "2000"],
        env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if call(url, "/health")[0] == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the service did not start: {process.stdout.read()[-3000:]}")
        time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(30)


def events_of(file: str, branches: list[str], start: int, stop: int) -> dict[str, list]:
    with uproot.open(file) as f:
        arrays = f["events"].arrays(branches, entry_start=start, entry_stop=stop)
    return {name: arrays[name].to_list() for name in branches}


@pytest.fixture(scope="module")
def predicted(xgb_run, keras_run, toy_run, client, tmp_path_factory):
    """``hepdask predict`` outputs of each run on its first file: what the service must match."""
    out = {}
    for name, run in (("higgs", xgb_run), ("higgs-keras", keras_run), ("toy", toy_run)):
        bundle = Bundle.load(run[0].run_dir, name=name)
        file = run[1][0][0]
        directory = tmp_path_factory.mktemp(name)
        predict(bundle, [file], directory, client=client, friend_tree="s")
        out[name] = (bundle, file, friend_of(directory, file, "s"))
    return out


@pytest.mark.parametrize("name", ["higgs", "higgs-keras", "toy"])
def test_service_predict_and_tfaas_json_give_the_predict_scores(service, predicted, name):
    bundle, file, friend = predicted[name]
    columns = events_of(file, bundle.inputs, 0, 300)
    expected = friend["score"].to_numpy()[:300]

    def same(scores) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        if name == "higgs-keras":
            np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
        else:
            assert np.array_equal(scores.astype(np.float32), expected)

    status, answer = call(service, "/predict", {"model": name, "columns": columns}, token=TOKEN)
    assert status == 200 and answer["model"] == name and answer["n_events"] == 300
    same(answer["scores"])
    if name == "toy":  # jagged branches as lists, and the event selection
        assert isinstance(columns["Jet_pt"][0], list)
        assert answer["selected"] == friend["selected"].to_list()[:300]
    records = [{k: columns[k][i] for k in columns} for i in range(20)]
    status, answer = call(service, "/predict", {"model": name, "events": records}, token=TOKEN)
    assert status == 200
    same(answer["scores"] + list(expected[20:]))
    keys = list(columns)
    one = [call(service, "/json", {"keys": keys, "values": [columns[k][i] for k in keys],
                                   "model": name}, token=TOKEN)[1] for i in range(5)]
    assert all(len(p) == 1 for p in one)  # TFaaS: the probabilities of one event
    rows = call(service, "/json", {"keys": keys, "model": name,
                                   "values": [[columns[k][i] for k in keys] for i in range(5)]},
                token=TOKEN)[1]
    if name == "higgs-keras":  # TensorFlow's float32 sums depend on the batch size
        np.testing.assert_allclose(rows, one, rtol=0, atol=1e-6)
    else:
        assert rows == one
    same([p[0] for p in one] + list(expected[5:]))


def test_service_refuses_bad_requests_and_keeps_serving(service, predicted):
    bundle, file, friend = predicted["toy"]
    good = {"model": "toy", "columns": events_of(file, bundle.inputs, 0, 10)}
    cases = [
        (call(service, "/predict", raw=b"{not json", token=TOKEN), 422, "not valid JSON"),
        (call(service, "/predict", {"columns": good["columns"]}, token=TOKEN), 422,
         "Several models"),
        (call(service, "/predict", {**good, "model": "nope"}, token=TOKEN), 404, "No model 'nope'"),
        (call(service, "/predict", {"model": "toy", "columns": {
            k: v for k, v in good["columns"].items() if k != "Jet_pt"}}, token=TOKEN), 422,
         "lack the branches ['Jet_pt']"),
        (call(service, "/predict", {"model": "toy", "columns": {
            **good["columns"], "mass": ["heavy"] * 10}}, token=TOKEN), 422, "'mass' must hold"),
        (call(service, "/predict", {"model": "toy", "columns": {
            **good["columns"], "Jet_pt": [1.0] * 10}}, token=TOKEN), 422,
         "'Jet_pt' must hold a list"),
        (call(service, "/predict", {"model": "toy", "columns": {
            **good["columns"], "met": [1.0] * 3}}, token=TOKEN), 422, "one value per event"),
        (call(service, "/predict", {"model": "toy", "events": [{"mass": 1.0}]}, token=TOKEN),
         422, "Event 0 lacks the branch 'met'"),
        (call(service, "/json", {"keys": ["mass"], "values": [1.0, 2.0], "model": "toy"},
              token=TOKEN), 422, "one value per key"),
        (call(service, "/predict", {"model": "toy", "columns": {
            k: v * 300 for k, v in good["columns"].items()}}, token=TOKEN), 413,
         "more than the 2000"),
        (call(service, "/predict", raw=b" " * (600 * 1024), token=TOKEN), 413, "0.5 MiB"),
    ]
    columns = good["columns"]
    hostile = [  # (body, the words of the 422 answer): none may be a 500
        (b'{"model": "toy", "columns": {"mass": [' + b"9" * 5000 + b"]}}", "more than 4300 digits"),
        (b"[" * 100_000 + b"]" * 100_000, "too deeply"),
        (b'{"model": "toy", "columns": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too deeply"),
        (b'{"model": "toy", "columns": {"mass": [NaN]}}', "NaN is not a JSON number"),
        (b'{"model": "toy", "columns": {"mass": [-Infinity]}}', "-Infinity is not a JSON number"),
        (json.dumps({**good, "columns": {**columns, "mass": [1e300] * 10}}).encode(),
         "beyond the range of float32"),
        (json.dumps({**good, "columns": {**columns, "mass": [1.0] * 10}}).encode().replace(
            b"[1.0,", b"[1e400,"), "beyond the range of float32"),
        (json.dumps({**good, "columns": {**columns, "mass": ["91.2"] * 10}}).encode(),
         "'mass' must hold a number per event"),
        (json.dumps({**good, "columns": {**columns, "Jet_pt": [["40"]] * 10}}).encode(),
         "'Jet_pt' must hold a list"),
        (json.dumps({**good, "columns": {**columns, "mass": [10**400] * 10}}).encode(),
         "'mass' must hold"),
        (json.dumps({**good, "model": ["toy"]}).encode(), "\"model\" must be a model's name"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"events"', "must be a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
    ]
    cases += [(call(service, "/predict", raw=body, token=TOKEN), 422, text)
              for body, text in hostile]
    cases.append((call(service, "/json", {"keys": [["mass"]], "values": [1.0], "model": "toy"},
                       token=TOKEN), 422, "branch names"))
    status, answer = call(service, "/predict", {**good, "columns": {**columns, "mass": [None] * 10}},
                          token=TOKEN)  # null: a missing value, as NaN in the ROOT files
    assert status == 200 and len(answer["scores"]) == 10, answer
    for (status, answer), want, text in cases:
        assert status == want, (want, text, answer)
        assert text in answer["error"], (text, answer)
        assert call(service, "/health")[0] == 200
    status, answer = call(service, "/predict", good, token=TOKEN)
    assert status == 200
    assert np.array_equal(np.float32(answer["scores"]), friend["score"].to_numpy()[:10])


def test_service_wants_the_token_and_publishes_its_schema(service):
    assert call(service, "/health") == (200, {"status": "ok",
                                              "models": ["higgs", "higgs-keras", "toy"]})
    for path, body in (("/models", None), ("/predict", {"model": "toy", "columns": {}}),
                       ("/json", {"keys": [], "values": []})):
        for token in (None, "wrong"):
            status, answer = call(service, path, body, token=token)
            assert status == 401 and "bearer token" in answer["error"], (path, token)
    status, models = call(service, "/models", token=TOKEN)
    assert status == 200
    toy = next(m for m in models if m["name"] == "toy")
    assert toy["engine"] == "xgboost" and toy["outputs"] == ["score", "selected"]
    assert toy["inputs"]["Jet_pt"] == "var * float32" and toy["inputs"]["mass"] == "float32"
    for path in ("/openapi.json", "/docs"):  # what the models take is behind the token too
        for token in (None, "wrong"):
            status, answer = call(service, path, token=token)
            assert status == 401 and "bearer token" in answer["error"], (path, token)
    status, page = call(service, "/docs", token=TOKEN)
    assert status == 200 and "swagger" in page.lower() and "/openapi.json" in page
    status, schema = call(service, "/openapi.json", token=TOKEN)
    assert status == 200
    assert {"/predict", "/json", "/models", "/health"} <= set(schema["paths"])
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert {"model", "events", "columns"} <= set(body["schema"]["properties"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_service_listens_on_loopback_unless_told_and_reads_its_token(tmp_path):
    from hepdask.cli import _parser
    from hepdask.serve import is_loopback
    from hepdask.service.auth import StaticTokens, User

    args = _parser().parse_args(["serve", "runs/higgs"])
    assert args.host == "127.0.0.1" and args.port == 8083 and args.token_file is None
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    (tmp_path / "token").write_text("  abc \n")  # serve's file: one bare token
    assert StaticTokens.from_file(tmp_path / "token")("abc") == User("default")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(HepdaskError, match="holds no token"):
        StaticTokens.from_file(tmp_path / "empty")
    with pytest.raises(HepdaskError, match="Cannot read the token file"):
        StaticTokens.from_file(tmp_path / "missing")
