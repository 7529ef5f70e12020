"""A Python client of ``python -m hepdask service``, behind ``hepdask submit``, ``jobs``, ``logs``,
``fetch``, ``upload`` and ``cancel``.

Only the standard library (``urllib``): a notebook or a login node needs nothing beyond hepdask
itself to submit a training and fetch its model. Every refusal of the service becomes a
:class:`~hepdask.errors.RequestError` (a :class:`~hepdask.errors.HepdaskError`) with the
service's own paragraph and the HTTP status, so a script can tell 404 from 401.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import HepdaskError, RequestError

__all__ = ["DEFAULT_URL", "FINAL_STATES", "Client", "describe", "read_token"]

DEFAULT_URL = "http://127.0.0.1:8765"
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
_CHUNK = 1 << 20


def read_token(path: str | Path) -> str:
    """The bearer token of a token file: the first word of its first line that is neither
    blank nor a ``#`` comment, so both a file of one bare token and the service's own
    ``TOKEN USER [admin]`` lines work."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise HepdaskError(f"Cannot read the token file {path}: {err.strerror or err}. Give the "
                           "file holding your bearer token (--token-file or "
                           "$HEPDASK_TOKEN_FILE).") from None
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            return words[0]
    raise HepdaskError(f"The token file {path} holds no token: put the bearer token the "
                       "service's operator gave you on its first line.")


def describe(job: dict) -> str:
    """One line for a job: its id, state and, while it runs, its phase and progress (what
    ``hepdask submit --wait`` prints whenever it changes)."""
    line = f"{job['job_id']}: {job['state']}"
    progress = job.get("progress") or {}
    if job["state"] == "queued" and job.get("queue_position") is not None:
        line += f" (position {job['queue_position']} in the queue)"
    elif job["state"] == "running" and progress.get("status"):
        line += f", {progress['status']}"
    return line


class _Multipart(io.RawIOBase):
    """A ``multipart/form-data`` body with one file field, read from disk as it is sent, so an
    upload of any size needs no more memory than one chunk."""

    def __init__(self, path: Path, field: str, filename: str):
        self.boundary = uuid.uuid4().hex
        head = (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                f"filename=\"{filename}\"\r\nContent-Type: application/gzip\r\n\r\n").encode()
        tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.length = len(head) + path.stat().st_size + len(tail)
        self._parts: list[BinaryIO] = [io.BytesIO(head), path.open("rb"), io.BytesIO(tail)]

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while self._parts:
            data = self._parts[0].read(_CHUNK if size is None or size < 0 else size)
            if data:
                return data
            self._parts.pop(0).close()
        return b""

    def close(self) -> None:
        for part in self._parts:
            part.close()
        super().close()


class Client:
    """Submit, follow and fetch trainings on a hepdask service.

    Parameters
    ----------
    url
        The service, e.g. ``http://127.0.0.1:8765`` (``hepdask service``'s default).
    token, token_file
        The bearer token, or a file holding it (the first word of its first line that is not
        a ``#`` comment); neither for a service without auth.
    timeout
        Seconds to wait for each answer (uploads and downloads: for each chunk).

    Examples
    --------
    In a notebook, with the service on this machine:

    >>> from hepdask import Bundle
    >>> from hepdask.service.client import Client, describe
    >>> service = Client("http://127.0.0.1:8765", token_file="~/.hepdask-token")
    >>> job = service.submit("configs/higgs.toml", cpus=2)
    >>> job = service.wait(job["job_id"], on_update=lambda j: print(describe(j)))
    higgs_1: queued (position 1 in the queue)
    higgs_1: running, train: round 1 of 200 (validation-logloss 0.6512)
    ...
    >>> job["state"], job["summary"]["auc"]
    ('succeeded', 0.9117)
    >>> bundle = Bundle.load(service.fetch(job["job_id"], "models/higgs"))
    """

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None,
                 token_file: str | Path | None = None, timeout: float = 60.0) -> None:
        if token is not None and token_file is not None:
            raise HepdaskError("Give the service's bearer token either as a string or as a "
                               "token file, not both.")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._token = read_token(Path(token_file).expanduser()) if token_file else token

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- jobs ------------------------------------------------------------------------------

    def submit(self, config: str | Path, *, name: str | None = None, cpus: float | None = None,
               memory: str | None = None, device: str | None = None,
               upload: str | None = None) -> dict:
        """Queue a run of ``config`` and return its job.

        Parameters
        ----------
        config
            A TOML file, or the TOML text itself. Relative paths in it are taken from your
            folder on the service (or the upload folder ``upload``), never from this machine.
        name
            The job's name (its id is ``NAME_N``); default the config's ``name``.
        cpus, memory, device
            What the job needs (``2``, ``"4GB"``, ``"gpu"``); the service refuses more than
            its cluster offers.
        upload
            The name of one of your uploads to run in: the config's relative paths are taken
            from that folder.
        """
        if isinstance(config, str) and ("\n" in config or "=" in config):
            text = config
        else:
            try:
                text = Path(config).read_text()
            except OSError as err:
                raise HepdaskError(f"Cannot read the config {config}: {err.strerror or err}. "
                                   "Give a TOML file (or its text) to submit.") from None
        query = {"name": name, "cpus": cpus, "memory": memory, "device": device,
                 "upload": upload}
        return self._json("POST", "/jobs", query=query, body=text.encode(),
                          content_type="application/toml")

    def jobs(self, *, all: bool = False) -> list[dict]:
        """Your jobs, newest first; with ``all`` every user's (admins only)."""
        return self._json("GET", "/jobs", query={"all": "true" if all else None})["jobs"]

    def job(self, job_id: str) -> dict:
        """One job, with its ``progress`` (phase, step of total, latest metrics) and, while
        queued, its ``queue_position``."""
        return self._json("GET", f"/jobs/{_quote(job_id)}")

    def wait(self, job_id: str, *, poll: float = 2.0, timeout: float | None = None,
             on_update: Callable[[dict], None] | None = None) -> dict:
        """Poll a job until it is final (succeeded, failed, cancelled or interrupted).

        Polls quickly at first and backs off to one request every ``poll`` seconds, so short
        jobs return at once and long ones cost the service little. ``on_update(job)`` is called
        with the first answer and with every one whose state or progress changed. After
        ``timeout`` seconds a HepdaskError says so; the job keeps running either way.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay, seen = min(0.25, poll), None
        while True:
            job = self.job(job_id)
            progress = job.get("progress") or {}
            key = (job["state"], job.get("queue_position"), progress.get("status"),
                   progress.get("step"))
            if key != seen:
                seen = key
                if on_update is not None:
                    on_update(job)
            if job["state"] in FINAL_STATES:
                return job
            if deadline is not None and time.monotonic() + delay > deadline:
                raise HepdaskError(f"Job {job_id} is still {job['state']} after {timeout:g} s; "
                                   "it keeps running on the service: wait again, or cancel "
                                   "it.")
            time.sleep(delay)
            delay = min(poll, delay * 1.5)

    def logs(self, job_id: str, *, follow: bool = False) -> Iterator[str] | str:
        """The job's log (stdout and stderr of its ``hepdask run``): the whole text, or with
        ``follow`` an iterator of its lines that ends when the job does."""
        path = f"/jobs/{_quote(job_id)}/logs"
        if not follow:
            with self._open("GET", path) as response:
                return response.read().decode(errors="replace")
        return self._follow(path)

    def _follow(self, path: str) -> Iterator[str]:
        """Lines of the streamed log; a stream silent for longer than ``timeout`` is opened
        again from the byte it had reached, so a quiet job is followed to its end."""
        offset = 0
        while True:
            with self._open("GET", path, query={"follow": "true", "offset": offset or None}
                            ) as response:
                try:
                    for line in response:
                        offset += len(line)
                        yield line.decode(errors="replace")
                    return  # the service ends the stream when the job ends
                except TimeoutError:
                    continue

    def cancel(self, job_id: str) -> dict:
        """Cancel a queued or running job (its processes are stopped); returns the job."""
        return self._json("POST", f"/jobs/{_quote(job_id)}/cancel")

    def resume(self, job_id: str) -> dict:
        """Queue an interrupted, failed or cancelled job again; Keras runs continue from their
        last checkpoint."""
        return self._json("POST", f"/jobs/{_quote(job_id)}/resume")

    def resubmit(self, job_id: str) -> dict:
        """A new job with the same config; returns the new job."""
        return self._json("POST", f"/jobs/{_quote(job_id)}/resubmit")

    def delete(self, job_id: str) -> None:
        """Delete a job and its files (a running job is cancelled first)."""
        self._json("DELETE", f"/jobs/{_quote(job_id)}")

    def fetch(self, job_id: str, directory: str | Path, *, max_bytes: int = 64 * 2**30) -> Path:
        """Download a succeeded job's run directory into the new folder ``directory``.

        The bundle is streamed to a temporary file, then unpacked with the service's own
        checks on uploads (no absolute paths, ``..``, links or devices; at most ``max_bytes``
        unpacked), so a tampered answer cannot write outside ``directory``. An existing folder
        of that name is replaced once the new one is complete. Returns the folder, which
        :meth:`hepdask.Bundle.load` and ``hepdask predict`` open.
        """
        from .uploads import unpack

        dest = Path(directory).expanduser()
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.",
                                         suffix=".tar.gz") as archive:
            with self._open("GET", f"/jobs/{_quote(job_id)}/bundle") as response:
                shutil.copyfileobj(response, archive, _CHUNK)
            archive.flush()
            unpack(Path(archive.name), dest, max_bytes=max_bytes)
        return dest

    # -- uploads ---------------------------------------------------------------------------

    def upload(self, folder_or_targz: str | Path, name: str) -> dict:
        """Upload a folder (or a ``.tar.gz`` of one) as your folder ``name`` on the service.

        A folder is packed into a temporary ``.tar.gz`` first, then either is sent as the
        multipart field ``file`` (as ``curl -F file=@wf.tar.gz`` does), read from disk while it
        is sent. Links in the folder are refused here, since the service refuses them.
        """
        source = Path(folder_or_targz).expanduser()
        if source.is_dir():
            with tempfile.TemporaryDirectory(prefix="hepdask-upload-") as tmp:
                archive = Path(tmp) / f"{source.name}.tar.gz"
                with tarfile.open(archive, "w:gz") as tar:
                    tar.add(source, arcname=source.name, filter=_plain_member(source))
                return self._upload(archive, name)
        if not source.is_file():
            raise HepdaskError(f"Nothing to upload at {source}: give a folder or a .tar.gz of "
                               "one.")
        return self._upload(source, name)

    def uploads(self) -> list[dict]:
        """Your upload folders: name, size and when they were uploaded."""
        return self._json("GET", "/uploads")["uploads"]

    def _upload(self, archive: Path, name: str) -> dict:
        body = _Multipart(archive, "file", archive.name)
        with body:
            return self._json("POST", "/uploads", query={"name": name}, body=body,
                              content_type=f"multipart/form-data; boundary={body.boundary}",
                              length=body.length)

    # -- HTTP ------------------------------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs) -> dict:
        with self._open(method, path, **kwargs) as response:
            data = response.read()
        return json.loads(data) if data else {}

    def _open(self, method: str, path: str, *, query: dict | None = None,
              body: bytes | BinaryIO | None = None, content_type: str | None = None,
              length: int | None = None):
        """The service's answer to one request (a file-like response), or the error paragraph
        the service sent, or one saying that no service answers at this URL."""
        params = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        request = urllib.request.Request(url, data=body, method=method)
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        if length is not None:
            request.add_header("Content-Length", str(length))
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            with err:
                raise _refusal(err, method, path) from None
        except urllib.error.URLError as err:
            raise _unreachable(self.url, err.reason) from None
        except TimeoutError:
            raise HepdaskError(f"The hepdask service at {self.url} did not answer {method} "
                               f"{path} within {self.timeout:g} s; it may be overloaded: try "
                               "again, or raise the client's timeout.") from None
        except ConnectionError as err:  # it went away while answering
            raise _unreachable(self.url, err) from None


def _unreachable(url: str, reason: object) -> HepdaskError:
    reason = getattr(reason, "strerror", None) or reason
    return HepdaskError(
        f"No hepdask service answers at {url} ({reason}). Start one with `python -m hepdask "
        "service` (it listens on 127.0.0.1:8765 unless --host/--port say otherwise), or point "
        "the client at the right one (--server URL or $HEPDASK_SERVER).")


def _refusal(err: urllib.error.HTTPError, method: str, path: str) -> RequestError:
    """The service's ``{"error": paragraph}`` (or its plain text) as a RequestError."""
    text = err.read().decode(errors="replace")
    with contextlib.suppress(ValueError, AttributeError):
        text = json.loads(text)["error"]
    if not isinstance(text, str) or not text.strip():
        text = str(err.reason)
    return RequestError(f"{text.strip()} (HTTP {err.code} to {method} {path})", err.code)


def _quote(job_id: str) -> str:
    return urllib.parse.quote(job_id, safe="")


def _plain_member(root: Path) -> Callable[[tarfile.TarInfo], tarfile.TarInfo]:
    def check(member: tarfile.TarInfo) -> tarfile.TarInfo:
        if not (member.isfile() or member.isdir()):
            raise HepdaskError(f"{member.name} in {root} is a link or a special file, which the "
                               "service refuses in uploads: replace it by a copy of the file "
                               "it points to, or leave it out.")
        return member
    return check
