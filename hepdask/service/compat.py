"""The MLaaS4HEP server's endpoints, with its request shapes, so that its clients and curl
recipes run unchanged (with a bearer token when auth is on).

``/status_docker`` keeps the Docker words that the ancestor's scripts read (``"Created"``,
``"Up 8 seconds"``, ``"Exited (0) 2 minutes ago"``) and adds the structured ``state``. The jobs
behind these endpoints are the same as the ``/jobs`` API's: ``process_name`` is the job id.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import fastapi
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from .api import ERRORS, UPLOAD_BODY, Service, UploadOut, WorkflowRequest
from .state import JobRecord

__all__ = ["compat_router", "docker_status", "human_duration"]

#: The exit code Docker shows for a job that did not exit by itself: SIGTERM's 128 + 15 for a
#: cancelled job, 255 (the daemon lost it) for one the service stopped.
EXIT_CODES = {"succeeded": 0, "cancelled": 143, "interrupted": 255}


class Submitted(BaseModel):
    process_name: str = Field(description="the job id, for /status_docker, /logs and /model")
    job_id: str


class DockerStatus(BaseModel):
    process_name: str
    status: str = Field(description="Docker's words: Created, Up 8 seconds, Exited (0) 2 "
                                    "minutes ago")
    state: str = Field(description="queued, running, succeeded, failed, cancelled or "
                                   "interrupted")


def human_duration(seconds: float) -> str:
    """A duration as Docker writes it in ``docker ps``: "Less than a second", "1 second",
    "N seconds", "About a minute", "N minutes", "About an hour", "N hours", "N days", ..."""
    if seconds < 1:
        return "Less than a second"
    if int(seconds) == 1:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{int(seconds // 3600) // (24 * 365)} years"


def docker_status(job: JobRecord, now: float | None = None) -> str:
    """The job's state in the words ``docker ps`` would use for its container."""
    now = time.time() if now is None else now
    if job.state == "queued":
        return "Created"
    if job.state == "running":
        return f"Up {human_duration(now - (job.started or now))}"
    code = EXIT_CODES.get(job.state, job.exit_code or 1)
    if code < 0:  # killed by a signal, as a shell reports it
        code = 128 - code
    ago = human_duration(now - (job.finished or now))
    return f"Exited ({code}) {ago} ago"


def compat_router(service: Service, user: Callable) -> fastapi.APIRouter:
    """``/upload``, ``/submit``, ``/status_docker``, ``/logs``, ``/model``, ``/delete_specs``,
    ``/delete_folder``."""
    router = fastapi.APIRouter(tags=["MLaaS4HEP"], responses=ERRORS)

    me = fastapi.Depends(user)

    def job(process_name: str, who=me) -> JobRecord:
        return service.job(who, process_name)

    this_job = fastapi.Depends(job)

    @router.post("/upload", status_code=201, response_model=UploadOut,
                 openapi_extra=UPLOAD_BODY, summary="Upload a workflow folder (.tar.gz) as NAME")
    async def upload(request: fastapi.Request, name: str, who=me) -> dict:
        return await service.upload(who, name, request)

    @router.post("/submit", status_code=201, response_model=Submitted,
                 summary="Train the workflow of the upload folder \"name\"")
    def submit(request: WorkflowRequest, who=me) -> dict:
        submitted = service.submit_workflow(who, request)
        return {"process_name": submitted.job_id, "job_id": submitted.job_id}

    @router.get("/status_docker", response_model=DockerStatus,
                summary="The job's status in Docker's words, and its state")
    def status(record: JobRecord = this_job) -> dict:
        return {"process_name": record.job_id, "status": docker_status(record),
                "state": record.state}

    @router.get("/logs", response_class=FileResponse, summary="The job's log, as a file")
    def logs(record: JobRecord = this_job) -> fastapi.Response:
        path = service.runner.log_path(record.job_id)
        if not path.is_file():
            return fastapi.Response(b"", media_type="text/plain")
        return FileResponse(path, media_type="text/plain", filename=f"{record.job_id}.log")

    @router.get("/model", response_class=FileResponse,
                summary="The trained model with its parameters (the run's bundle), as .tar.gz")
    def model(record: JobRecord = this_job) -> FileResponse:
        return FileResponse(service.bundle_archive(record), media_type="application/gzip",
                            filename=f"{record.job_id}.tar.gz")

    @router.get("/delete_specs", summary="Remove the cached specs of a folder and of its jobs")
    def delete_specs(name: str, who=me) -> dict:
        return service.delete_specs(who, name)

    @router.get("/delete_folder", summary="Delete an upload folder (409 while a job reads it)")
    def delete_folder(name: str, who=me) -> dict:
        return service.delete_upload(who, name)

    return router
