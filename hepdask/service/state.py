"""The service's memory: jobs and uploads in a database, so that a restart loses nothing.

Any SQLAlchemy URL works (``postgresql://...`` for a shared server); the default is an SQLite
file in the state directory, in WAL mode so that the HTTP threads read while the runner writes.
Every method opens its own short session, so one :class:`Store` serves every thread, and
returns plain :class:`JobRecord` copies that stay valid after the session ends.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from ..errors import RequestError

__all__ = ["FINAL", "STATES", "JobRecord", "Store"]

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
FINAL = frozenset(STATES[2:])  # the states a job leaves only when resumed


class _Base(DeclarativeBase):
    pass


class _Job(_Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str | None] = mapped_column(sa.String(100), unique=True, index=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    owner: Mapped[str] = mapped_column(sa.String(255), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    submitted: Mapped[float] = mapped_column(sa.Float)
    started: Mapped[float | None] = mapped_column(sa.Float)
    finished: Mapped[float | None] = mapped_column(sa.Float)
    exit_code: Mapped[int | None] = mapped_column(sa.Integer)
    error: Mapped[str | None] = mapped_column(sa.Text)
    hints: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    cwd: Mapped[str] = mapped_column(sa.Text)
    upload: Mapped[str | None] = mapped_column(sa.String(64))
    resume: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    summary: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    pid: Mapped[int | None] = mapped_column(sa.Integer)


class _Upload(_Base):
    __tablename__ = "uploads"
    __table_args__ = (sa.UniqueConstraint("owner", "name"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(255), index=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    path: Mapped[str] = mapped_column(sa.Text)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    created: Mapped[float] = mapped_column(sa.Float)


@dataclass(frozen=True)
class JobRecord:
    """A job as the database holds it (a detached copy: reading it needs no session).

    ``job_id`` (``NAME_N``, N the row's key) addresses the job everywhere; ``hints`` are the
    submitted cpus/memory/device and, under ``"cluster"``, how they were mapped; ``error`` is
    the one-paragraph reason of a failed or interrupted job; ``summary`` a few headline values
    of a succeeded job's metrics.json; ``resume`` says to run with ``--resume`` next time.
    """

    id: int
    job_id: str
    name: str
    owner: str
    kind: str
    state: str
    submitted: float
    started: float | None
    finished: float | None
    exit_code: int | None
    error: str | None
    hints: dict
    cwd: str
    upload: str | None
    resume: bool
    attempts: int
    summary: dict
    pid: int | None

    @classmethod
    def _of(cls, row: _Job) -> JobRecord:
        return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls)})


_UPDATABLE = frozenset(f.name for f in dataclasses.fields(JobRecord)) - {"id", "job_id"}


class Store:
    """Jobs and uploads in the database at ``url`` (tables are created when missing).

    Parameters
    ----------
    url
        An SQLAlchemy URL; an SQLite file's directory is created.
    """

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        options: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            # one connection per thread of the pool; waits (not fails) while another writes
            options["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if parsed.database in (None, "", ":memory:"):
                options["poolclass"] = StaticPool  # one in-memory database for every session
            else:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(parsed, **options)
        if parsed.get_backend_name() == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        _Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def add_job(self, *, name: str, owner: str, kind: str, hints: dict, cwd: str | Path,
                upload: str | None = None) -> JobRecord:
        """A new queued job; its id is ``f"{name}_{key}"``."""
        with self._session.begin() as session:
            row = _Job(name=name, owner=owner, kind=kind, state="queued", submitted=time.time(),
                       hints=dict(hints), cwd=str(cwd), upload=upload, resume=False, attempts=0,
                       summary={})
            session.add(row)
            session.flush()  # assigns the key
            row.job_id = f"{name}_{row.id}"
            session.flush()
            return JobRecord._of(row)

    def get(self, job_id: str) -> JobRecord | None:
        with self._session() as session:
            row = session.scalars(sa.select(_Job).where(_Job.job_id == job_id)).one_or_none()
            return None if row is None else JobRecord._of(row)

    def jobs(self, owner: str | None = None, *, state: str | None = None) -> list[JobRecord]:
        """``owner``'s jobs (every job when None), newest first; only those in ``state`` if
        given."""
        query = sa.select(_Job).order_by(_Job.id.desc())
        if owner is not None:
            query = query.where(_Job.owner == owner)
        if state is not None:
            query = query.where(_Job.state == state)
        with self._session() as session:
            return [JobRecord._of(row) for row in session.scalars(query)]

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        """Set ``fields`` of the job in one statement; returns the job as it is now."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise TypeError(f"Store.update: no job field(s) {sorted(unknown)}; the fields are "
                            f"{sorted(_UPDATABLE)}.")
        with self._session.begin() as session:
            done = session.execute(sa.update(_Job).where(_Job.job_id == job_id).values(**fields))
            if done.rowcount == 0:
                raise RequestError(f"There is no job {job_id!r}.", 404)
        job = self.get(job_id)
        assert job is not None
        return job

    def next_queued(self) -> JobRecord | None:
        """The oldest queued job (the next to start), or None."""
        query = sa.select(_Job).where(_Job.state == "queued").order_by(_Job.id).limit(1)
        with self._session() as session:
            row = session.scalars(query).first()
            return None if row is None else JobRecord._of(row)

    def delete(self, job_id: str) -> None:
        with self._session.begin() as session:
            session.execute(sa.delete(_Job).where(_Job.job_id == job_id))

    def add_upload(self, *, owner: str, name: str, path: str | Path, size: int) -> None:
        """Record ``owner``'s upload folder ``name``, replacing an earlier one of that name."""
        with self._session.begin() as session:
            session.execute(sa.delete(_Upload).where(_Upload.owner == owner, _Upload.name == name))
            session.add(_Upload(owner=owner, name=name, path=str(path), size=int(size),
                                created=time.time()))

    def uploads(self, owner: str) -> list[dict]:
        """``owner``'s uploads as ``{"name", "path", "size", "created"}``, by name."""
        query = sa.select(_Upload).where(_Upload.owner == owner).order_by(_Upload.name)
        with self._session() as session:
            return [{"name": u.name, "path": u.path, "size": u.size, "created": u.created}
                    for u in session.scalars(query)]

    def delete_upload(self, owner: str, name: str) -> None:
        with self._session.begin() as session:
            session.execute(sa.delete(_Upload).where(_Upload.owner == owner, _Upload.name == name))


def _sqlite_pragmas(connection, _record) -> None:
    """WAL: readers never wait for the writer, and a crash mid-write leaves the last commit."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
