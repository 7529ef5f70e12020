"""The jobs and uploads API of ``hepdask service``, and the core both it and the
MLaaS4HEP-compatible endpoints (:mod:`~hepdask.service.compat`) use.

Every submitted config takes one path (:meth:`Service.submit`): the user's paths are confined
to their folders and the operator's data roots (:func:`~hepdask.service.confine.confine`), the
keys that say where and on what the job runs (``name``, ``output``, ``[cluster]``) are the
service's, and the whole config is validated as ``hepdask run`` would before the job is queued,
so a mistake is a 422 with hepdask's paragraph rather than a failed job. A job, upload or model
of another user is a 404 (not 403: its existence is not told), unless the user is an admin.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import shutil
import tarfile
import threading
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import fastapi
from fastapi.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..bundle import Bundle
from ..config import from_dict
from ..errors import HepdaskError, RequestError
from ..mlaas4hep import to_toml
from ..outputs import atomic_path
from ..serve import ErrorResponse, read_body
from .auth import User
from .confine import confine, convert_workflow
from .runner import Runner
from .settings import ServiceSettings
from .state import FINAL, JobRecord, Store
from .uploads import check_name, receive, unpack, user_dir

__all__ = ["Service", "WorkflowRequest", "job_json", "jobs_router", "uploads_router"]

log = logging.getLogger("hepdask")

MAX_CONFIG_BYTES = 1 << 20
UNPACKED_FACTOR = 10  # an upload may unpack to this many times --max-upload-mb

#: The answer of a refused request, for the schema.
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (401, 403, 404, 409, 413, 422)}

#: Hints on resources: (the hints as given, checked) -> (the hints as recorded, with how they
#: were mapped under "cluster"; the job config's [cluster] table). Raises RequestError 422.
Place = Callable[[dict], tuple[dict, dict]]


class WorkflowRequest(BaseModel):
    """An MLaaS4HEP submission, as its ``/submit`` took it: paths inside the upload folder."""

    name: str = Field(description="the upload folder (POST /upload?name=NAME) holding the files")
    files: str = Field("files.txt", description="a text file listing the ROOT files")
    labels: str = Field("labels.txt", description="one class label per file (a text file), or "
                                                  "the branch holding each event's label")
    model: str = Field("model.py", description="a Python file defining model() or model(idim)")
    params: str | None = Field(None, description="params.json")
    preproc: str | None = Field(None, description="preproc.json")
    device: str | None = Field(None, description="cpu or gpu")
    memory: str | None = Field(None, description="memory per worker, e.g. \"3gb\"")
    cpus: str | int | float | None = Field(None, description="cores, e.g. \"2\"")


class JobOut(BaseModel):
    job_id: str
    name: str
    owner: str
    kind: str = Field(description="config (a TOML config) or mlaas4hep (a workflow)")
    state: str = Field(description="queued, running, succeeded, failed, cancelled or "
                                   "interrupted (the service stopped while it ran)")
    submitted: str
    started: str | None
    finished: str | None
    exit_code: int | None
    error: str | None = Field(description="why the job failed, in one paragraph")
    hints: dict[str, Any] = Field(description="cpus, memory, device as asked, and under "
                                              "\"cluster\" how they were mapped")
    summary: dict[str, Any] = Field(description="the main metrics, once succeeded")
    links: dict[str, str]


class JobDetail(JobOut):
    progress: dict[str, Any] = Field(description="phase, status, step of total, the latest "
                                                 "metrics and their history per step")
    queue_position: int | None = Field(description="1 for the next job to start, when queued")


class JobList(BaseModel):
    jobs: list[JobOut]


class UploadOut(BaseModel):
    name: str
    size: int = Field(description="bytes received")
    created: float | str | None = None
    files: list[str] | None = Field(None, description="the files unpacked (on upload)")


class UploadList(BaseModel):
    uploads: list[UploadOut]


class FileOut(BaseModel):
    path: str
    size: int


class FileList(BaseModel):
    files: list[FileOut]


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat()


def job_json(job: JobRecord) -> dict:
    """A job as the API shows it (times in ISO 8601, UTC)."""
    base = f"/jobs/{job.job_id}"
    links = {"self": base, "logs": f"{base}/logs", "files": f"{base}/files",
             "status_docker": f"/status_docker?process_name={job.job_id}"}
    if job.state == "succeeded":
        links.update(bundle=f"{base}/bundle", model="/models")
    return {"job_id": job.job_id, "name": job.name, "owner": job.owner, "kind": job.kind,
            "state": job.state, "submitted": _iso(job.submitted), "started": _iso(job.started),
            "finished": _iso(job.finished), "exit_code": job.exit_code, "error": job.error,
            "hints": job.hints, "summary": job.summary, "links": links}


class Service:
    """What the routes share: the settings, the store, the runner, and the loaded models.

    Parameters
    ----------
    place
        Maps a job's resource hints to the cluster (see :data:`Place`).
    """

    def __init__(self, settings: ServiceSettings, store: Store, runner: Runner, *,
                 place: Place) -> None:
        self.settings, self.store, self.runner, self.place = settings, store, runner, place
        self._bundles: dict[str, Bundle] = {}
        self._lock = threading.Lock()

    # -- jobs ----------------------------------------------------------------------------------

    def job(self, user: User, job_id: str) -> JobRecord:
        """The job, if ``user`` may see it; else 404 (whether it exists or not)."""
        job = self.store.get(job_id)
        if job is None or not (user.admin or job.owner == user.name):
            raise RequestError(f"No job {job_id!r} of yours: list yours with GET /jobs.", 404)
        return job

    def jobs(self, user: User, *, all: bool = False) -> list[JobRecord]:
        if all and not user.admin:
            raise RequestError("Only admins list every user's jobs (all=true); without it "
                               "GET /jobs lists yours.", 403)
        return self.store.jobs(None if all else user.name)

    def queue_position(self, job: JobRecord) -> int | None:
        if job.state != "queued":
            return None
        queued = [j.job_id for j in reversed(self.store.jobs()) if j.state == "queued"]
        return queued.index(job.job_id) + 1 if job.job_id in queued else None

    def detail(self, job: JobRecord) -> dict:
        return {**job_json(job), "progress": self.runner.progress(job.job_id),
                "queue_position": self.queue_position(job)}

    def submit_config(self, user: User, text: bytes, *, name: str | None = None,
                      hints: dict | None = None, upload: str | None = None) -> JobRecord:
        """A job from a TOML config: it runs in the user's root folder (or in the upload folder
        ``upload``), where its relative paths are taken from."""
        try:
            raw = tomllib.loads(text.decode())
        except UnicodeDecodeError:
            raise RequestError("The config is not UTF-8 text: send the TOML file as it is "
                               "(curl --data-binary @config.toml).") from None
        except tomllib.TOMLDecodeError as err:
            raise RequestError(f"The config is not valid TOML: {err}. Fix it there and submit "
                               "it again.") from None
        root = user_dir(self.settings, user.name)
        cwd = self.folder(user, upload) if upload else root
        return self.submit(user.name, raw, name=name or raw.get("name") or "job",
                           kind="config", hints=hints or {}, cwd=cwd, upload=upload)

    def submit_workflow(self, user: User, request: WorkflowRequest) -> JobRecord:
        """A job from an MLaaS4HEP workflow in an upload folder, converted as
        ``hepdask convert-mlaas4hep`` does (:func:`~hepdask.service.confine.convert_workflow`:
        its model file is user code, refused unless the operator allows it)."""
        folder = self.folder(user, request.name)
        raw, notes = convert_workflow(
            folder, files=request.files, labels=request.labels, model=request.model,
            params=request.params, preproc=request.preproc, settings=self.settings,
            user_root=user_dir(self.settings, user.name))
        hints = {"cpus": request.cpus, "memory": request.memory, "device": request.device}
        return self.submit(user.name, raw, name=request.name, kind="mlaas4hep", hints=hints,
                           cwd=folder, upload=request.name, notes=notes)

    def submit(self, owner: str, raw: dict, *, name: str, kind: str, hints: dict, cwd: Path,
               upload: str | None, notes: list[str] | tuple[str, ...] = ()) -> JobRecord:
        """Confine, override, validate, record and queue a config mapping."""
        name = check_name(str(name), "job name")
        recorded, cluster = self.place(_hints(hints))
        root = user_dir(self.settings, owner)
        raw = confine(raw, base=Path(cwd), settings=self.settings, user_root=root)
        overridden = [k for k in ("output", "cluster") if k in raw]
        raw.update(name=name, cluster=cluster, output=str(self.settings.jobs))
        raw.pop("source", None)
        try:
            from_dict(raw)
        except HepdaskError as err:
            raise RequestError(str(err)) from None
        job = self.store.add_job(name=name, owner=owner, kind=kind, hints=recorded,
                                 cwd=str(cwd), upload=upload)
        raw["output"] = str(self.runner.job_dir(job.job_id))
        lines = [f"hepdask service: job {job.job_id} of {owner}, in {cwd}"]
        if overridden:
            lines.append(f"hepdask service: the config's {' and '.join(overridden)} are the "
                         "service's: the job runs on its cluster and writes its run directory "
                         "in the job's folder.")
        lines += [f"hepdask service: {note}" for note in notes]
        try:
            text = to_toml(raw, comments=[f"Job {job.job_id} of {owner} (hepdask service)",
                                          *notes])
        except TypeError as err:
            self.store.delete(job.job_id)
            raise RequestError(f"The config holds a value hepdask does not read ({err}): "
                               "use strings, numbers, booleans, lists and tables.") from None
        log_path = self.runner.log_path(job.job_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as f:
            f.write("\n".join(lines) + "\n")
        return self.runner.submit(job, text)

    def resubmit(self, job: JobRecord) -> JobRecord:
        """A new job with the config ``job`` ran (checked again: settings may have changed)."""
        path = self.runner.job_dir(job.job_id) / "config.toml"
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            raise RequestError(f"Job {job.job_id} has no config left to run again.", 409) from None
        hints = {k: v for k, v in job.hints.items() if k != "cluster"}
        return self.submit(job.owner, raw, name=job.name, kind=job.kind, hints=hints,
                           cwd=Path(job.cwd), upload=job.upload)

    def delete(self, job: JobRecord) -> None:
        """Cancel the job if it is active, then forget it and remove its folder."""
        if job.state not in FINAL:
            self.runner.cancel(job.job_id)  # returns once its processes have ended
        self.store.delete(job.job_id)
        with self._lock:
            self._bundles.pop(job.job_id, None)
        shutil.rmtree(self.runner.job_dir(job.job_id), ignore_errors=True)

    def log_text(self, job: JobRecord, offset: int = 0) -> bytes:
        try:
            with open(self.runner.log_path(job.job_id), "rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""

    async def follow_log(self, job: JobRecord, offset: int = 0):
        """The log from byte ``offset``, as it grows, until the job is final."""
        path = self.runner.log_path(job.job_id)
        while True:
            current = await run_in_threadpool(self.store.get, job.job_id)
            final = current is None or current.state in FINAL  # None: deleted meanwhile
            chunk = await run_in_threadpool(self._read_from, path, offset)
            offset += len(chunk)
            if chunk:
                yield chunk
            elif final:
                return
            else:
                await asyncio.sleep(0.5)

    @staticmethod
    def _read_from(path: Path, offset: int) -> bytes:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(1 << 20)
        except FileNotFoundError:
            return b""

    def succeeded(self, job: JobRecord) -> Path:
        if job.state != "succeeded":
            raise RequestError(f"Job {job.job_id} is {job.state}: its bundle exists once it has "
                               "succeeded.", 409)
        return self.runner.run_dir(job.job_id)

    def bundle_archive(self, job: JobRecord) -> Path:
        """The run directory as ``<job_id>/...`` in a ``.tar.gz``, made once (a succeeded run
        no longer changes) beside it in the job's folder."""
        run_dir = self.succeeded(job)
        archive = self.runner.job_dir(job.job_id) / "bundle.tar.gz"
        with self._lock:
            if not archive.is_file():
                with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
                    tar.add(run_dir, arcname=job.job_id, filter=_no_links)
        return archive

    def files(self, job: JobRecord) -> list[dict]:
        run_dir = self.runner.run_dir(job.job_id)
        out = []
        for directory, _, names in os.walk(run_dir):
            for name in sorted(names):
                path = Path(directory, name)
                if path.is_file() and not path.is_symlink():
                    out.append({"path": path.relative_to(run_dir).as_posix(),
                                "size": path.stat().st_size})
        return sorted(out, key=lambda f: f["path"])

    def artefact(self, job: JobRecord, path: str) -> Path:
        """One file of the run directory; nothing outside it, whatever ``path`` says."""
        run_dir = self.runner.run_dir(job.job_id)
        parts = PurePosixPath(path).parts
        candidate = Path(os.path.realpath(run_dir.joinpath(*parts))) if parts else run_dir
        inside = candidate.is_relative_to(os.path.realpath(run_dir))
        if ".." in parts or PurePosixPath(path).is_absolute() or not inside \
                or not candidate.is_file():
            raise RequestError(f"Job {job.job_id} has no file {path!r}: GET "
                               f"/jobs/{job.job_id}/files lists them.", 404)
        return candidate

    def bundles_for(self, user: User) -> dict[str, Bundle]:
        """The models of the user's succeeded jobs (everyone's for an admin), by job id;
        each bundle is loaded once."""
        out = {}
        for job in reversed(self.store.jobs(None if user.admin else user.name)):
            if job.state != "succeeded":
                continue
            with self._lock:
                bundle = self._bundles.get(job.job_id)
            if bundle is None:
                try:
                    bundle = Bundle.load(self.runner.run_dir(job.job_id), name=job.job_id)
                except HepdaskError as err:
                    log.warning("The model of job %s cannot be served: %s", job.job_id, err)
                    continue
                with self._lock:
                    self._bundles[job.job_id] = bundle
            out[job.job_id] = bundle
        return out

    # -- uploads -------------------------------------------------------------------------------

    def folder(self, user: User, name: str) -> Path:
        """The user's upload folder ``name``; 404 when there is none."""
        folder = user_dir(self.settings, user.name) / check_name(name, "upload name")
        if not folder.is_dir():
            raise RequestError(f"You have no upload {name!r}: upload it first (POST "
                               f"/upload?name={name}); GET /uploads lists yours.", 404)
        return folder

    def _busy(self, owner: str, name: str) -> None:
        """409 while a queued or running job reads the upload folder ``name``."""
        busy = [j.job_id for j in self.store.jobs(owner) if j.upload == name and j.state not in FINAL]
        if busy:
            raise RequestError(f"The upload {name!r} is read by the job(s) {', '.join(busy)}, "
                               "which are queued or running: wait for them or cancel them.", 409)

    async def upload(self, user: User, name: str, request: fastapi.Request) -> dict:
        """Stream the ``.tar.gz`` body to the state directory and unpack it as the folder
        ``name`` (replaced only once the new one is complete)."""
        name = check_name(name, "upload name")
        await run_in_threadpool(self._busy, user.name, name)
        root = await run_in_threadpool(user_dir, self.settings, user.name)
        archive = root / f".incoming-{uuid.uuid4().hex}.tar.gz"
        limit = int(self.settings.max_upload_mb * 2**20)
        try:
            size = await receive(request, archive, limit=limit)
            files = await run_in_threadpool(unpack, archive, root / name,
                                            max_bytes=limit * UNPACKED_FACTOR)
        finally:
            archive.unlink(missing_ok=True)
        await run_in_threadpool(self.store.add_upload, owner=user.name, name=name,
                                path=str(root / name), size=size)
        return {"name": name, "size": size, "files": files}

    def delete_upload(self, user: User, name: str) -> dict:
        folder = self.folder(user, name)
        self._busy(user.name, name)
        shutil.rmtree(folder)
        self.store.delete_upload(user.name, name)
        return {"name": name, "deleted": True}

    def delete_specs(self, user: User, name: str) -> dict:
        """Remove the cached specs.json of the folder ``name`` and of its jobs' runs, so that
        the next run computes them again."""
        folder = self.folder(user, name)
        removed = []
        candidates = [folder / "specs.json"]
        for job in self.store.jobs(user.name):
            if job.upload == name and job.state in FINAL:
                candidates.append(self.runner.run_dir(job.job_id) / "specs.json")
                with self._lock:
                    (self.runner.job_dir(job.job_id) / "bundle.tar.gz").unlink(missing_ok=True)
        for path in candidates:
            if path.is_file():
                path.unlink()
                removed.append(str(path.relative_to(self.settings.state)))
        return {"name": name, "removed": removed}


def _no_links(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return member if member.isfile() or member.isdir() else None


def _hints(hints: dict) -> dict:
    """The hints that were given, checked: cpus a positive number, memory a size (\"3gb\"),
    device cpu or gpu."""
    from dask.utils import parse_bytes

    out: dict[str, Any] = {}
    for key, value in hints.items():
        if value is None or value == "":
            continue
        try:
            if key == "cpus":
                number = float(value)
                if not number > 0:
                    raise ValueError
                out[key] = int(number) if number.is_integer() else number
            elif key == "memory":
                out[key] = str(value)
                out["memory_bytes"] = parse_bytes(str(value))
            elif key == "device":
                if str(value).lower() not in ("cpu", "gpu"):
                    raise ValueError
                out[key] = str(value).lower()
        except (TypeError, ValueError):
            wanted = {"cpus": "a positive number of cores, e.g. 2",
                      "memory": "a size such as \"3gb\" or \"512MiB\"",
                      "device": "\"cpu\" or \"gpu\""}[key]
            raise RequestError(f"The hint {key} = {value!r} is not {wanted}.") from None
    return out


def jobs_router(service: Service, user: Callable) -> fastapi.APIRouter:
    """``/jobs``: submit, list, follow, cancel, resume, resubmit, delete, fetch."""
    router = fastapi.APIRouter(prefix="/jobs", tags=["jobs"], responses=ERRORS)
    toml_body = {"requestBody": {"required": True, "content": {
        "application/toml": {"schema": {"type": "string"}},
        "text/plain": {"schema": {"type": "string"}}}}}

    me = fastapi.Depends(user)

    def visible(job_id: str, who=me) -> JobRecord:
        return service.job(who, job_id)

    this_job = fastapi.Depends(visible)

    @router.post("", status_code=201, response_model=JobOut, openapi_extra=toml_body,
                 summary="Submit a run: the body is its TOML config")
    async def submit(request: fastapi.Request, name: str | None = None,
                     cpus: str | None = None, memory: str | None = None,
                     device: str | None = None, upload: str | None = None,
                     who=me) -> dict:
        text = await read_body(request, MAX_CONFIG_BYTES)
        job = await run_in_threadpool(service.submit_config, who, text, name=name, upload=upload,
                                      hints={"cpus": cpus, "memory": memory, "device": device})
        return job_json(job)

    @router.post("/mlaas4hep", status_code=201, response_model=JobOut,
                 summary="Submit an MLaaS4HEP workflow of an upload folder (as POST /submit)")
    def submit_workflow(request: WorkflowRequest, who=me) -> dict:
        return job_json(service.submit_workflow(who, request))

    @router.get("", response_model=JobList, summary="My jobs, newest first (admins: all=true)")
    def jobs(all: bool = False, who=me) -> dict:
        return {"jobs": [job_json(j) for j in service.jobs(who, all=all)]}

    @router.get("/{job_id}", response_model=JobDetail,
                summary="A job, with its phase, progress and place in the queue")
    def job(job: JobRecord = this_job) -> dict:
        return service.detail(job)

    @router.get("/{job_id}/logs", response_class=PlainTextResponse,
                summary="The job's log; follow=true streams it until the job ends")
    async def logs(job: JobRecord = this_job, follow: bool = False,
                   offset: Annotated[int, fastapi.Query(ge=0)] = 0) -> Response:
        if follow:
            return StreamingResponse(service.follow_log(job, offset), media_type="text/plain")
        return Response(await run_in_threadpool(service.log_text, job, offset),
                        media_type="text/plain")

    @router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a queued or "
                 "running job (its processes are stopped)")
    def cancel(job: JobRecord = this_job) -> dict:
        return job_json(service.runner.cancel(job.job_id))

    @router.post("/{job_id}/resume", response_model=JobOut,
                 summary="Queue an interrupted, failed or cancelled job again, with --resume")
    def resume(job: JobRecord = this_job) -> dict:
        return job_json(service.runner.resume(job.job_id))

    @router.post("/{job_id}/resubmit", status_code=201, response_model=JobOut,
                 summary="A new job with the same config")
    def resubmit(job: JobRecord = this_job) -> dict:
        return job_json(service.resubmit(job))

    @router.delete("/{job_id}", summary="Delete a job and its files (cancelled first if active)")
    def delete(job: JobRecord = this_job) -> dict:
        service.delete(job)
        return {"deleted": job.job_id}

    @router.get("/{job_id}/bundle", response_class=FileResponse,
                summary="The run directory (model bundle, metrics, plots) as a .tar.gz")
    def bundle(job: JobRecord = this_job) -> FileResponse:
        return FileResponse(service.bundle_archive(job), media_type="application/gzip",
                            filename=f"{job.job_id}.tar.gz")

    @router.get("/{job_id}/files", response_model=FileList,
                summary="The files of the run directory (empty until the job succeeded)")
    def files(job: JobRecord = this_job) -> dict:
        return {"files": service.files(job)}

    @router.get("/{job_id}/files/{path:path}", response_class=FileResponse,
                summary="One file of the run directory: metrics.json, roc.png, ...")
    def artefact(path: str, job: JobRecord = this_job) -> FileResponse:
        return FileResponse(service.artefact(job, path))

    return router


def uploads_router(service: Service, user: Callable) -> fastapi.APIRouter:
    """``/uploads``: a user's folders, from ``.tar.gz`` archives."""
    router = fastapi.APIRouter(prefix="/uploads", tags=["uploads"], responses=ERRORS)
    me = fastapi.Depends(user)

    @router.post("", status_code=201, response_model=UploadOut, openapi_extra=UPLOAD_BODY,
                 summary="Upload a .tar.gz as the folder NAME (replacing one of that name)")
    async def upload(request: fastapi.Request, name: str, who=me) -> dict:
        return await service.upload(who, name, request)

    @router.get("", response_model=UploadList, summary="My upload folders")
    def uploads(who=me) -> dict:
        return {"uploads": service.store.uploads(who.name)}

    @router.delete("/{name}", summary="Delete an upload folder (409 while a job reads it)")
    def delete(name: str, who=me) -> dict:
        return service.delete_upload(who, name)

    return router


#: The documented body of an upload: multipart (curl -F file=@wf.tar.gz) or a raw .tar.gz.
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}},
    "application/gzip": {"schema": {"type": "string", "format": "binary"}}}}}
