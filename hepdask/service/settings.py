"""What the operator of a service decides: where its state lives, what jobs may read, how many
run at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServiceSettings"]


@dataclass(frozen=True)
class ServiceSettings:
    """The service's settings (``python -m hepdask service`` flags).

    Attributes
    ----------
    state
        The state directory: ``service.db`` (the default database), ``uploads/<user>/`` (each
        user's folders) and ``jobs/<job_id>/`` (each job's config, log, events and run
        directory). Nothing is written outside it.
    database
        An SQLAlchemy URL (e.g. ``postgresql://...``); ``sqlite:///<state>/service.db`` when
        None.
    max_jobs
        Jobs running at once; the others wait in the queue, oldest first.
    allow_user_code
        Whether jobs may run users' Python files (model files, ``file.py:function``
        estimators): they are arbitrary code, run with the service's rights.
    data_roots
        Directories, beside each user's own folder, that configs may read.
    redirectors
        URL prefixes (``root://eospublic.cern.ch//eos/opendata/``, ``https://...``) that
        configs may read, and the XRootD redirectors they may name.
    max_upload_mb
        Larger uploads are refused with 413 while they arrive.
    admins
        Users who see and manage every user's jobs.
    """

    state: Path
    database: str | None = None
    max_jobs: int = 1
    allow_user_code: bool = False
    data_roots: tuple[Path, ...] = ()
    redirectors: tuple[str, ...] = ()
    max_upload_mb: float = 1024.0
    admins: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        # absolute: jobs run in the users' folders, not in the directory the service started in
        object.__setattr__(self, "state", Path(self.state).resolve())

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.state / 'service.db'}"

    @property
    def uploads(self) -> Path:
        return self.state / "uploads"

    @property
    def jobs(self) -> Path:
        return self.state / "jobs"
