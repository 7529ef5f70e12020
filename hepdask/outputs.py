"""Writing run outputs: each file whole (:func:`atomic_path`), and each run directory whole.

A run is built in a staging directory beside its run directory (``<parent>/.<name>.staging``,
on the same file system) and swapped in only when it succeeded (:func:`commit`): an interrupted
or failed run leaves the previous run directory as it was, and its own files (with its run.log
and the Keras and torch checkpoints that ``--resume`` continues from) in the staging directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import HepdaskError, first_line

__all__ = ["atomic_path", "commit", "open_staging", "recover", "staging_path", "write_json",
           "write_text", "writing"]

log = logging.getLogger("hepdask")

_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK

_FULL = {errno.ENOSPC, errno.EDQUOT}
_REFUSED = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST}
# A library that failed to write without saying why (XGBoost) on a file system with less left
# than this is taken to have found it full.
_NEARLY_FULL = 1 << 20
# What makes an existing directory a run directory that a new run may replace.
_RUN_FILES = ("config.resolved.json", "specs.json", "bundle.json", "metrics.json", "run.log")
# What an unfinished run's staging directory keeps for the next one: the specs (still checked
# against the data) and the network checkpoints (for --resume; the trainer removes them otherwise).
_KEPT = ("specs.json", "checkpoints")


def staging_path(run_dir: str | os.PathLike) -> Path:
    """Where the run of ``run_dir`` is built: ``<parent>/.<name>.staging``."""
    run_dir = _named(run_dir)
    return run_dir.with_name(f".{run_dir.name}.staging")


def _named(run_dir: str | os.PathLike) -> Path:
    """``run_dir`` as given, or absolute where it has no name of its own (``.``, ``..``)."""
    run_dir = Path(run_dir)
    return run_dir.resolve() if run_dir.name in ("", "..") else run_dir


def _previous_path(run_dir: Path) -> Path:
    """Where the previous run waits during the swap."""
    return run_dir.with_name(f".{run_dir.name}.previous")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a failure to write ``path`` for lack of space or permission into a HepdaskError."""
    elsewhere = "another output directory (--output, or 'output' in the config)"
    try:
        yield
    except OSError as err:
        if err.errno in _FULL:
            why = f"the file system is full ({err.strerror}). Free space there, or give {elsewhere}"
        elif err.errno in _REFUSED:
            why = f"{err.strerror}. Give {elsewhere}"
        else:
            raise
        raise HepdaskError(f"Cannot write {path}: {why}.") from err
    except Exception as err:
        if isinstance(err, HepdaskError) or _free_bytes(Path(path)) >= _NEARLY_FULL:
            raise
        raise HepdaskError(f"Cannot write {path}: the file system is full ({first_line(err)})."
                           f" Free space there, or give {elsewhere}.") from err


def _free_bytes(path: Path) -> int:
    for directory in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(directory).free
    return _NEARLY_FULL


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    For libraries that write files themselves (``booster.save_model``,
    ``savefig``): the final name appears complete or not at all.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes files private; outputs are ordinary files
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and paths."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def recover(run_dir: str | os.PathLike) -> None:
    """Finish what a process that died during :func:`commit` left: the previous run goes back
    in place if the new one had not been moved in yet; else the previous run is removed."""
    run_dir = _named(run_dir)
    previous = _previous_path(run_dir)
    if not previous.is_dir():
        return
    with writing(run_dir):
        if run_dir.exists():
            shutil.rmtree(previous)
        else:
            os.rename(previous, run_dir)
            log.info("Restored %s, which a run that died while replacing it had moved aside",
                     run_dir)


def open_staging(run_dir: str | os.PathLike, *, seed: bool = False) -> bool:
    """Create (or clean) the staging directory of ``run_dir``, checked writable; True if it
    held an unfinished run's files, which are removed but for its specs.json and checkpoints/.

    ``seed`` starts from a copy of ``run_dir`` instead: for a pipeline that redoes steps of the
    run it has committed there.
    """
    run_dir = _named(run_dir)
    staging = staging_path(run_dir)
    recover(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise HepdaskError(f"The run directory {run_dir} is a file: give another output "
                           "directory (--output, or 'output' in the config).")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not any(
            (run_dir / name).exists() for name in _RUN_FILES):
        raise HepdaskError(
            f"{run_dir} exists and is not a hepdask run directory (it has none of "
            f"{', '.join(_RUN_FILES)}): a run replaces its directory as a whole, so give a new "
            "or an earlier run's directory (--output, or 'output' and 'name' in the config).")
    removed = []
    with writing(staging):
        if seed:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(run_dir, staging, symlinks=True)
        elif staging.is_dir():
            removed = [p for p in staging.iterdir() if p.name not in _KEPT]
            for path in removed:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        staging.mkdir(parents=True, exist_ok=True)
        probe = staging / ".probe"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    return bool(removed)


def commit(staging: str | os.PathLike, run_dir: str | os.PathLike) -> None:
    """Replace ``run_dir`` by the finished run in ``staging``: two renames on one file system.

    Between them the previous run waits at ``.<name>.previous``; :func:`recover` (called by the
    next run and by loading a bundle) finishes the swap if the process died there.
    """
    run_dir = _named(run_dir)
    recover(run_dir)
    previous = _previous_path(run_dir)
    with writing(run_dir):
        if run_dir.exists():
            os.rename(run_dir, previous)
        try:
            os.rename(staging, run_dir)
        except BaseException:
            if previous.exists() and not run_dir.exists():
                os.rename(previous, run_dir)
            raise
        shutil.rmtree(previous, ignore_errors=True)
