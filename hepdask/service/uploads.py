"""Users' folders: names checked, uploads streamed to disk under a size limit, archives unpacked
member by member after every member was checked.

A service unpacks what strangers send, so nothing here trusts the request: the body is never
held in memory, its size is checked as it arrives, and a tarball may only create plain files
and folders inside its own new folder. A failed upload or unpacking leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..errors import RequestError

if TYPE_CHECKING:
    from starlette.requests import Request

    from .settings import ServiceSettings

__all__ = ["check_name", "receive", "unpack", "user_dir"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Bodies sent raw (``curl --data-binary @wf.tar.gz -H 'Content-Type: application/gzip'``).
RAW_TYPES = ("application/gzip", "application/x-gzip", "application/octet-stream",
             "application/x-tar", "application/x-gtar", "application/x-compressed-tar")
#: What a multipart body may carry beside the file itself (boundaries, part headers).
FORM_OVERHEAD = 64 * 1024


def check_name(value: str, what: str) -> str:
    """``value`` when it is a safe folder or job name, else a 422 naming it and the rule.

    Names become directory names and job ids, so they are limited to what cannot climb out of
    a folder, hide as a dot file or mean something to a shell.
    """
    if not isinstance(value, str) or not NAME.fullmatch(value) or ".." in value:
        raise RequestError(
            f"The {what} {value!r} is not allowed: a {what} is 1 to 64 letters, digits, '_', "
            "'.' or '-', starting with a letter or digit, without '..' (no '/', ';', spaces or "
            "other characters).", 422)
    return value


def user_dir(settings: ServiceSettings, user: str) -> Path:
    """The folder of ``user``'s uploads (``uploads/<userdir>``), created: the user's name when it
    is a safe directory name, else ``u-`` and a hash of it, so that any name from an identity
    provider maps to one folder of its own."""
    safe = USER.fullmatch(user) and user not in (".", "..")
    folder = settings.uploads / (user if safe else
                                 "u-" + hashlib.sha256(user.encode()).hexdigest()[:16])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _too_large(limit: int) -> RequestError:
    return RequestError(
        f"The upload is larger than this service accepts ({limit / 2**20:.1f} MiB): send a "
        "smaller archive (only the files the workflow needs), or ask the operator to raise "
        "--max-upload-mb.", 413)


async def receive(request: Request, dest: Path, *, limit: int, field: str = "file") -> int:
    """Stream the request's upload to ``dest`` and return its size in bytes.

    The body is either ``multipart/form-data`` (the part named ``field``, as ``curl -F
    file=@wf.tar.gz`` sends it), parsed as it arrives by python-multipart's streaming parser,
    or the archive itself (``application/gzip``, ``application/octet-stream``, ...). A
    Content-Length over the limit is refused before reading; a body without one (chunked) is
    refused with 413 as soon as more than ``limit`` bytes arrived. ``dest`` is removed on any
    failure.
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, options = parse_options_header(request.headers.get("content-type"))
    form = ctype == b"multipart/form-data"
    if not form and ctype.decode("latin-1") not in RAW_TYPES:
        raise RequestError(
            f"The upload's Content-Type is {ctype.decode('latin-1') or 'missing'!r}: send the "
            f".tar.gz as multipart/form-data with the field {field!r} (curl -F "
            f"{field}=@wf.tar.gz) or as the body with Content-Type application/gzip.", 415)
    allowed = limit + (FORM_OVERHEAD if form else 0)
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > allowed):
        if length.isdigit():
            raise _too_large(limit)
        raise RequestError(f"The upload's Content-Length {length!r} is not a number.", 400)
    if form and not options.get(b"boundary"):
        raise RequestError("The multipart/form-data upload has no boundary in its Content-Type.",
                           400)

    out = None
    written = received = 0
    state = {"headers": {}, "field": b"", "value": b"", "mine": False, "done": False}

    def write(data: bytes) -> None:
        nonlocal written
        written += len(data)
        if written > limit:
            raise _too_large(limit)
        out.write(data)

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"] = state["value"] = b""

    def on_headers_finished() -> None:
        nonlocal out
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition"))
        state["mine"] = disposition.get(b"name") == field.encode() and not state["done"]
        state["headers"] = {}
        if state["mine"]:
            out = open(dest, "wb")  # closed below, on success or failure

    def on_part_end() -> None:
        if state["mine"]:
            state["mine"], state["done"] = False, True

    def field_data(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def value_data(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def part_data(data: bytes, start: int, end: int) -> None:
        if state["mine"]:
            write(data[start:end])

    parser = MultipartParser(options[b"boundary"], {
        "on_header_field": field_data, "on_header_value": value_data,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": part_data, "on_part_end": on_part_end}) if form else None
    try:
        if not form:
            out = open(dest, "wb")
        async for chunk in request.stream():
            received += len(chunk)
            if received > allowed:
                raise _too_large(limit)
            if parser is None:
                write(chunk)
            else:
                parser.write(chunk)
        if parser is not None:
            parser.finalize()
            if not state["done"]:
                raise RequestError(
                    f"The multipart/form-data upload has no complete field {field!r}: send the "
                    f"archive as that field (curl -F {field}=@wf.tar.gz).", 422)
    except FormParserError as err:
        _discard(out, dest)
        raise RequestError(f"The multipart/form-data upload is malformed: {err}.", 400) from None
    except BaseException:
        _discard(out, dest)
        raise
    out.close()
    return written


def _discard(out, dest: Path) -> None:
    if out is not None:
        out.close()
    dest.unlink(missing_ok=True)


def unpack(archive: Path, dest: Path, *, max_bytes: int, max_members: int = 100_000) -> list[str]:
    """Unpack the ``.tar.gz`` (or ``.tar``) ``archive`` as the folder ``dest``; return the
    relative names of its files.

    Every member is checked before anything is written: absolute names, ``..``, symbolic and
    hard links, devices and fifos are refused (422, naming the member), and so are more than
    ``max_members`` members or more than ``max_bytes`` unpacked (413: a tar bomb is refused by
    its headers, before its data are inflated). The members are then extracted into a folder
    beside ``dest``, with tarfile's ``"data"`` filter as a second guard, and that folder is
    renamed into place, so an existing ``dest`` is replaced only by a complete new one. When
    every member sits in one top-level folder (``tar czf wf.tar.gz wf/``), that folder is
    dropped: ``wf/files.txt`` becomes ``dest/files.txt``.
    """
    dest = Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _checked_members(tar, archive, max_bytes=max_bytes,
                                       max_members=max_members)
            members = _strip_top(members)
            staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
            try:
                tar.extractall(staging, members=members, filter="data")
                _replace(staging, dest)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except (tarfile.TarError, EOFError, OSError) as err:
        raise RequestError(
            f"The upload {Path(archive).name} cannot be unpacked as a .tar.gz or .tar archive "
            f"({type(err).__name__}: {err}): create it with tar czf NAME.tar.gz FOLDER/.",
            422) from None
    return sorted(m.name for m in members if m.isreg())


def _checked_members(tar: tarfile.TarFile, archive: Path, *, max_bytes: int,
                     max_members: int) -> list[tarfile.TarInfo]:
    """The members, with normalised names, each checked as its header is read (so a bomb is
    refused before the next header, which may lie a gigabyte further, is looked for)."""
    members, total = [], 0
    for count, member in enumerate(tar, start=1):
        name = member.name
        if count > max_members:
            raise RequestError(
                f"The archive {archive.name} has more than {max_members} members: this service "
                "unpacks at most that many. Pack fewer files (e.g. merge small ROOT files).", 413)
        parts = PurePosixPath(name).parts
        refuse = None
        if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute():
            refuse = "an absolute path"
        elif ".." in parts or ".." in PurePosixPath(name.replace("\\", "/")).parts:
            refuse = "a '..' component, which would write outside the folder"
        elif member.issym() or member.islnk():
            kind = "symbolic" if member.issym() else "hard"
            refuse = (f"a {kind} link (to {member.linkname!r}), which is not unpacked (pack "
                      "the files it points to: tar czhf follows links)")
        elif member.ischr() or member.isblk() or member.isfifo():
            refuse = "a device or fifo, which an upload may not create"
        elif not (member.isreg() or member.isdir()):
            refuse = "neither a file nor a folder"
        if refuse:
            raise RequestError(
                f"The archive {archive.name} has the member {name!r}, {refuse}: an upload may "
                "only hold plain files and folders with relative names.", 422)
        total += member.size if member.isreg() else 0
        if total > max_bytes:
            raise RequestError(
                f"The archive {archive.name} unpacks to more than {max_bytes / 2**20:.1f} MiB "
                f"(at the member {name!r}, {member.size} bytes): this service unpacks at most "
                "that much. Upload less data, or read large files from a data root or "
                "redirector.", 413)
        clean = "/".join(p for p in parts if p != ".")
        if clean:
            members.append(member.replace(name=clean, deep=False))
    return members


def _strip_top(members: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    """Without their common top-level folder, when they all have one (and it is a folder)."""
    tops = {m.name.split("/", 1)[0] for m in members}
    inside = [m for m in members if "/" in m.name]
    if len(tops) != 1 or not inside or any("/" not in m.name and not m.isdir() for m in members):
        return members
    return [m.replace(name=m.name.split("/", 1)[1], deep=False) for m in inside]


def _replace(staging: Path, dest: Path) -> None:
    """``staging`` renamed to ``dest``; an older ``dest`` is moved aside first and removed once
    the new one is in place."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        os.rename(dest, old / dest.name)
    try:
        os.rename(staging, dest)
    except BaseException:
        if old is not None:
            os.rename(old / dest.name, dest)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
