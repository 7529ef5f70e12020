"""The service's guards against hostile input: names, uploads streamed over real HTTP, tarballs
with traversal, links, devices and bombs, and configs reading outside the allowed roots."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import os
import select
import shutil
import tarfile
import threading
import time
from pathlib import Path

import pytest

from hepdask.config import from_dict
from hepdask.errors import RequestError
from hepdask.service import ServiceSettings
from hepdask.service.confine import confine, convert_workflow
from hepdask.service.uploads import check_name, receive, unpack, user_dir

ROOT_FILE = Path(__file__).parent / "data" / "split_objects.root"
REDIRECTOR = "root://eospublic.cern.ch//eos/opendata/"


def tree(top: Path) -> set[str]:
    """Every path under ``top``, relative: what a test compares before and after."""
    return {str(p.relative_to(top)) for p in top.rglob("*")}


def settings_for(tmp_path: Path, **options) -> ServiceSettings:
    (tmp_path / "data").mkdir(exist_ok=True)
    return ServiceSettings(state=tmp_path / "state", data_roots=(tmp_path / "data",),
                           redirectors=(REDIRECTOR,), **options)


# --- names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a;rm -rf x", "..", "a..b", "a/b", "a b", "", ".hidden",
                                  "-x", "x" * 65, "wf\n"])
def test_bad_names_are_refused(name):
    with pytest.raises(RequestError) as err:
        check_name(name, "upload name")
    assert err.value.status == 422
    assert repr(name) in str(err.value) and "upload name" in str(err.value)


def test_good_names_and_user_folders(tmp_path):
    assert check_name("wf_1.v-2", "job name") == "wf_1.v-2"
    settings = settings_for(tmp_path)
    assert user_dir(settings, "alice") == settings.uploads / "alice"
    odd = {user_dir(settings, u) for u in ("..", "bob smith", "a/../b", "alice@cern.ch")}
    assert len(odd) == 4 and all(p.name.startswith("u-") and p.parent == settings.uploads
                                 for p in odd - {settings.uploads / "alice@cern.ch"})
    assert all(p.is_dir() for p in odd)


# --- unpack --------------------------------------------------------------------------------

def member(name: str, data: bytes | None = None, *, kind: bytes = tarfile.REGTYPE,
           link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    if data is not None:
        info.size = len(data)
    return info, data


def make_tar(path: Path, members) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.fixture
def hostile(tmp_path):
    """(settings, the folder archives are unpacked into, a function checking nothing changed)."""
    settings = settings_for(tmp_path)
    home = user_dir(settings, "alice")
    (tmp_path / "outside").mkdir()
    (tmp_path / "in").mkdir()
    before = tree(tmp_path)

    def unchanged():
        assert tree(tmp_path) - before <= {"in/" + p.name for p in (tmp_path / "in").iterdir()}
        assert not list(home.iterdir())

    return tmp_path, home, unchanged


@pytest.mark.parametrize("case, message", [
    ("traversal", "'..' component"), ("absolute", "absolute path"), ("symlink", "symbolic link"),
    ("hardlink", "hard link"), ("fifo", "device or fifo"), ("device", "device or fifo"),
])
def test_hostile_members_are_refused(hostile, case, message):
    tmp_path, home, unchanged = hostile
    evil = {
        "traversal": [member("wf/ok.txt", b"ok"), member("wf/../../../outside/x", b"evil")],
        "absolute": [member(str(tmp_path / "outside" / "x"), b"evil")],
        "symlink": [member("wf/passwd", kind=tarfile.SYMTYPE, link="/etc/passwd"),
                    member("wf/passwd", b"overwrite through the link")],
        "hardlink": [member("wf/shadow", kind=tarfile.LNKTYPE, link="/etc/shadow")],
        "fifo": [member("wf/pipe", kind=tarfile.FIFOTYPE)],
        "device": [member("wf/null", kind=tarfile.CHRTYPE)],
    }[case]
    archive = make_tar(tmp_path / "in" / f"{case}.tar.gz", evil)
    with pytest.raises(RequestError) as err:
        unpack(archive, home / "wf", max_bytes=2**20)
    assert err.value.status == 422
    assert message in str(err.value) and repr(evil[-1][0].name) in str(err.value)
    unchanged()


def test_bombs_and_member_counts_are_refused(hostile):
    tmp_path, home, unchanged = hostile
    # a 1 GB member described by its header alone: refused before any data is looked for
    bomb = tmp_path / "in" / "bomb.tar.gz"
    info = tarfile.TarInfo("wf/zeros.bin")
    info.size = 2**30
    with gzip.open(bomb, "wb") as out:
        out.write(info.tobuf(tarfile.GNU_FORMAT) + bytes(4096))
    assert bomb.stat().st_size < 10_000
    with pytest.raises(RequestError) as err:
        unpack(bomb, home / "wf", max_bytes=2**20)
    assert err.value.status == 413 and "'wf/zeros.bin'" in str(err.value)
    # many small files adding up
    many = make_tar(tmp_path / "in" / "sum.tar.gz",
                    [member(f"wf/{i}.bin", bytes(600)) for i in range(3)])
    with pytest.raises(RequestError) as err:
        unpack(many, home / "wf", max_bytes=1000)
    assert err.value.status == 413 and "'wf/1.bin'" in str(err.value)
    # too many members
    crowd = make_tar(tmp_path / "in" / "crowd.tar.gz",
                     [member(f"wf/{i}.txt", b"") for i in range(51)])
    with pytest.raises(RequestError) as err:
        unpack(crowd, home / "wf", max_bytes=2**20, max_members=50)
    assert err.value.status == 413 and "more than 50 members" in str(err.value)
    # not an archive at all
    junk = tmp_path / "in" / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(RequestError) as err:
        unpack(junk, home / "wf", max_bytes=2**20)
    assert err.value.status == 422 and "junk.tar.gz" in str(err.value)
    unchanged()


def workflow(folder: Path) -> Path:
    """An MLaaS4HEP-shaped folder: two ROOT files, their list and labels, params, a model."""
    (folder / "data").mkdir(parents=True)
    for name in ("sig.root", "bkg.root"):
        shutil.copy(ROOT_FILE, folder / "data" / name)
    (folder / "files.txt").write_text("# the samples\ndata/sig.root\ndata/bkg.root\n")
    (folder / "labels.txt").write_text("1\n0\n")
    (folder / "params.json").write_text(json.dumps({"nevts": 100, "epochs": 2,
                                                    "batch_size": 50}))
    (folder / "model.py").write_text(
        "from sklearn.linear_model import SGDClassifier\n\n\n"
        "def model():\n    return SGDClassifier(loss='log_loss')\n")
    return folder


def test_a_workflow_unpacks_without_its_top_folder_and_replaces_the_old_one(tmp_path):
    settings = settings_for(tmp_path)
    home = user_dir(settings, "alice")
    source = workflow(tmp_path / "src" / "wf")
    archive = tmp_path / "wf.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="wf")
    names = unpack(archive, home / "wf", max_bytes=2**26)
    assert names == ["data/bkg.root", "data/sig.root", "files.txt", "labels.txt", "model.py",
                     "params.json"]
    assert (home / "wf" / "files.txt").read_text() == (source / "files.txt").read_text()
    assert (home / "wf" / "data" / "sig.root").read_bytes() == ROOT_FILE.read_bytes()
    # a second upload of that name replaces the folder; "./" names (tar czf x.tar.gz .) work
    flat = make_tar(tmp_path / "flat.tar.gz", [member("./", kind=tarfile.DIRTYPE),
                                               member("./params.json", b"{}")])
    assert unpack(flat, home / "wf", max_bytes=2**20) == ["params.json"]
    assert tree(home) == {"wf", "wf/params.json"}  # no staging or old folder left
    # one top-level file is not a folder to strip
    single = make_tar(tmp_path / "one.tar.gz", [member("model.py", b"x = 1\n")])
    assert unpack(single, home / "one", max_bytes=2**20) == ["model.py"]


# --- receive over real HTTP -----------------------------------------------------------------

LIMIT = 16 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Starlette app whose one route stores the upload with :func:`receive`, served by
    uvicorn on loopback; yields (port, the file it writes)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    dest = tmp_path_factory.mktemp("uploads") / "upload.tar.gz"

    async def upload(request):
        try:
            size = await receive(request, dest, limit=LIMIT)
        except RequestError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        return JSONResponse({"size": size})

    app = Starlette(routes=[Route("/upload", upload, methods=["POST"])])
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield srv.servers[0].sockets[0].getsockname()[1], dest
    srv.should_exit = True
    thread.join(10)


BOUNDARY = "hepdaskBoundary7MA4YWxk"


def form(data: bytes, field: str = "file") -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            "filename=\"wf.tar.gz\"\r\nContent-Type: application/gzip\r\n\r\n").encode() + \
        data + f"\r\n--{BOUNDARY}--\r\n".encode()


FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def post(port: int, body: bytes, ctype: str = FORM_TYPE, **headers) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("POST", "/upload", body=body, headers={"Content-Type": ctype, **headers})
    resp = conn.getresponse()
    answer = resp.status, json.loads(resp.read())
    conn.close()
    return answer


def test_small_uploads_arrive_whole(server):
    port, dest = server
    data = os.urandom(LIMIT - 100) + b"\r\n--" + BOUNDARY.encode()[:5]  # boundary-like bytes
    assert post(port, form(data)) == (200, {"size": len(data)})
    assert dest.read_bytes() == data
    assert post(port, data[:5000], "application/gzip") == (200, {"size": 5000})
    assert dest.read_bytes() == data[:5000]


def test_bad_uploads_leave_nothing(server):
    port, dest = server
    dest.unlink(missing_ok=True)
    status, answer = post(port, form(b"abc", field="other"))
    assert status == 422 and "'file'" in answer["error"]
    status, answer = post(port, b"abc", "text/plain")
    assert status == 415
    status, answer = post(port, form(os.urandom(LIMIT + 1)))
    assert status == 413 and "--max-upload-mb" in answer["error"]
    assert not dest.exists()


def stream(port: int, ctype: str, head: bytes, total: int, *,
           length: int | None = None) -> tuple[int, dict, int]:
    """Send ``head`` then zeros in 4 KiB chunks (chunked unless ``length`` is given), and stop as
    soon as the server answers; returns the status, the answer and the bytes sent."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.putrequest("POST", "/upload")
    conn.putheader("Content-Type", ctype)
    if length is None:
        conn.putheader("Transfer-Encoding", "chunked")
    else:
        conn.putheader("Content-Length", str(length))
    conn.endheaders()
    sent, chunk = 0, head
    try:
        while sent < total:
            data = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if length is None else chunk
            conn.send(data)
            sent += len(chunk)
            chunk = bytes(4096)
            time.sleep(0.005)
            if select.select([conn.sock], [], [], 0)[0]:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    resp = conn.getresponse()
    answer = resp.status, json.loads(resp.read()), sent
    conn.close()
    return answer


@pytest.mark.parametrize("ctype", [FORM_TYPE, "application/octet-stream"])
def test_oversized_uploads_are_refused_while_they_stream(server, ctype):
    port, dest = server
    dest.unlink(missing_ok=True)
    head = form(b"")[:-len(f"\r\n--{BOUNDARY}--\r\n")] if ctype == FORM_TYPE else bytes(4096)
    total = 40 * LIMIT
    status, answer, sent = stream(port, ctype, head, total)  # chunked: no Content-Length
    assert status == 413 and "MiB" in answer["error"]
    assert sent < total / 4, "the upload was not refused while it arrived"
    assert not dest.exists()
    # a Content-Length over the limit is refused before the body is sent
    status, answer, sent = stream(port, ctype, b"", 0, length=total)
    assert status == 413 and sent == 0 and not dest.exists()


# --- confine --------------------------------------------------------------------------------

@pytest.fixture
def users(tmp_path):
    """(settings, alice's folder with a workflow, a config factory)."""
    settings = settings_for(tmp_path)
    alice, bob = user_dir(settings, "alice"), user_dir(settings, "bob")
    workflow(alice / "wf")
    shutil.copy(ROOT_FILE, bob / "x.root")
    shutil.copy(ROOT_FILE, tmp_path / "data" / "open.root")
    (tmp_path / "outside").mkdir()
    shutil.copy(ROOT_FILE, tmp_path / "outside" / "secret.root")

    def config(files, **tables):
        return {"name": "t", "samples": [{"name": "sig", "files": files, "label": 1}],
                "train": {"xgboost": {"check_params": False}}, **tables}

    return settings, alice, config


def refused(raw, settings, alice, key: str, *texts: str, status: int = 403) -> str:
    with pytest.raises(RequestError) as err:
        confine(raw, base=alice, settings=settings, user_root=alice)
    message = str(err.value)
    assert err.value.status == status and key in message, message
    assert all(t in message for t in texts), message
    return message


def test_configs_reading_outside_are_refused(users, tmp_path):
    settings, alice, config = users
    data = tmp_path / "data"
    refused(config(["/etc/passwd"]), settings, alice, "samples.sig.files", "'/etc/passwd'",
            str(alice), str(data))
    refused(config(["../bob/x.root"]), settings, alice, "samples.sig.files", "'..'")
    refused(config([str(settings.uploads / "bob" / "x.root")]), settings, alice,
            "samples.sig.files")
    refused(config(str(tmp_path / "outside" / "*.root")), settings, alice, "samples.sig.files")
    # symlinks inside a data root that lead out of it: a file, a folder, a glob's match
    (data / "evil.root").symlink_to(tmp_path / "outside" / "secret.root")
    (data / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    refused(config([str(data / "evil.root")]), settings, alice, "samples.sig.files",
            str(tmp_path / "outside" / "secret.root"))
    refused(config([str(data / "link" / "secret.root")]), settings, alice, "samples.sig.files")
    refused(config([str(data / "*.root")]), settings, alice, "samples.sig.files")
    # a .txt list naming an outside file
    (alice / "list.txt").write_text("wf/data/sig.root\n/etc/passwd\n")
    refused(config(["list.txt"]), settings, alice, "samples.sig.files (list.txt)",
            "'/etc/passwd'")
    (alice / "bad.txt").write_text("../bob/x.root\n")
    refused(config(["bad.txt"]), settings, alice, "samples.sig.files (bad.txt)", "'..'")
    refused(config(["missing.txt"]), settings, alice, "missing.txt", status=422)
    # URLs and redirectors
    for url in ("root://evil.org//eos/opendata/x.root", REDIRECTOR[:-1] + "X/x.root",
                REDIRECTOR + "../private/x.root", "file:///etc/passwd",
                "simplecache::" + REDIRECTOR + "x.root", "https://eospublic.cern.ch.evil/x"):
        refused(config([url]), settings, alice, "samples.sig.files", "not under the redirectors")
    refused(config(["/store/x.root"], data={"redirector": "root://cms-xrd-global.cern.ch/"}),
            settings, alice, "data.redirector")
    # [prepare] writes: only into the user's folder, though a data root may be read
    refused(config(["wf/data/*.root"], prepare={"dataset": "higgs", "directory": str(data)}),
            settings, alice, "prepare.directory", "where a job may write", str(alice))
    refused(config(["wf/data/*.root"], prepare={"csv": "/etc/passwd"}), settings, alice,
            "prepare.csv")


@pytest.mark.parametrize("key, spec", [
    ("train.keras.model", "wf/model.py:model"), ("train.xgboost.model", "wf/model.py:model"),
    ("train.sklearn.estimator", "wf/model.py:model"),
    ("train.sklearn.estimator", "subprocess.Popen"),
])
def test_user_code_needs_the_operator(users, tmp_path, key, spec):
    settings, alice, config = users
    engine, name = key.split(".")[1:]
    raw = config(["wf/data/sig.root"], train={engine: {name: spec}})
    refused(raw, settings, alice, key, "--allow-user-code", "arbitrary")
    allowing = settings_for(tmp_path, allow_user_code=True)
    out = confine(raw, base=alice, settings=allowing, user_root=alice)
    assert out["train"][engine][name] == (f"{alice}/wf/model.py:model" if ":" in spec else spec)
    if ":" in spec:
        raw["train"][engine][name] = "/etc/passwd.py:model"
        refused(raw, allowing, alice, key, "'/etc/passwd.py'")


def test_a_good_config_gets_absolute_paths(users, tmp_path, monkeypatch):
    settings, alice, config = users
    raw = config(["files.txt", "data/s*.root", str(tmp_path / "data" / "open.root"),
                  REDIRECTOR + "x.root", "/store/y.root"],
                 data={"redirector": REDIRECTOR},
                 prepare={"dataset": "higgs", "download": False},
                 train={"engine": "sklearn", "sklearn": {"estimator":
                                                         "sklearn.linear_model.SGDClassifier"},
                        "xgboost": {"check_params": False}})
    raw["samples"].append({"name": "higgs", "files": "data/higgs/*.root", "label": 0})
    wf = alice / "wf"  # the job's working directory: files.txt's entries are relative to it
    out = confine(raw, base=wf, settings=settings, user_root=alice)
    assert raw["samples"][0]["files"][0] == "files.txt"  # the input is not changed
    assert out["samples"][0]["files"] == [
        f"{wf}/data/sig.root", f"{wf}/data/bkg.root", f"{wf}/data/s*.root",
        str(tmp_path / "data" / "open.root"), REDIRECTOR + "x.root", "/store/y.root"]
    assert out["samples"][1]["files"] == [f"{wf}/data/higgs/*.root"]  # not there yet
    assert out["prepare"]["directory"] == f"{wf}/data/higgs"
    assert out["train"]["sklearn"]["estimator"] == "sklearn.linear_model.SGDClassifier"
    monkeypatch.chdir(tmp_path)  # elsewhere, the config still names the same files
    out["train"]["engine"] = "xgboost"
    for sample in out["samples"]:  # root:// needs the XRootD client, not installed everywhere
        sample["files"] = [f for f in sample["files"] if "://" not in f and "/store/" not in f]
    assert from_dict(out).prepare.directory == f"{wf}/data/higgs"


def test_an_mlaas4hep_workflow_is_converted_then_confined(users, tmp_path):
    settings, alice, _ = users
    folder = alice / "wf"
    with pytest.raises(RequestError) as err:
        convert_workflow(folder, files="files.txt", labels="labels.txt", model="model.py",
                         params="params.json", settings=settings, user_root=alice)
    assert err.value.status == 403 and "--allow-user-code" in str(err.value)
    allowing = settings_for(tmp_path, allow_user_code=True)
    with pytest.raises(RequestError) as err:
        convert_workflow(folder, files="files.txt", labels="labels.txt", model="../../bob/m.py",
                         settings=allowing, user_root=alice)
    assert err.value.status == 403 and "'..'" in str(err.value)
    (folder / "evil.txt").write_text("/etc/passwd\n")
    with pytest.raises(RequestError) as err:
        convert_workflow(folder, files="evil.txt", labels="1", model="model.py",
                         settings=allowing, user_root=alice)
    assert err.value.status == 403 and "files (evil.txt)" in str(err.value)
    raw, notes = convert_workflow(folder, files="files.txt", labels="labels.txt",
                                  model="model.py", params="params.json", settings=allowing,
                                  user_root=alice)
    assert [s["files"] for s in raw["samples"]] == [[f"{folder}/data/sig.root"],
                                                    [f"{folder}/data/bkg.root"]]
    assert [s["label"] for s in raw["samples"]] == [1, 0]
    assert raw["train"]["sklearn"]["estimator"] == f"{folder}/model.py:model"
    assert raw["data"]["max_events"] == 100 and any("epochs" in n for n in notes)
