"""What a submitted config may read and write: only its user's folder, the operator's data roots
and redirectors, and user code only when the operator allows it.

:func:`confine` checks every key of a config that names a file, before the job is queued, and
returns the config with those paths made absolute, so that the job reads exactly what was
checked whatever its working directory. ``.txt`` lists are replaced by their checked entries:
a list re-uploaded after the check cannot point the queued job elsewhere.
"""

from __future__ import annotations

import copy
import glob
import os
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from ..dataset import is_url, read_list
from ..errors import HepdaskError, RequestError
from .settings import ServiceSettings

__all__ = ["confine", "convert_workflow"]

#: The keys naming user code as ``"file.py:function"``.
CODE_KEYS = (("xgboost", "model"), ("keras", "model"), ("sklearn", "estimator"))


class _Rules:
    """The allowed roots of one user, and the checks of one path against them."""

    def __init__(self, base: Path, settings: ServiceSettings, user_root: Path):
        self.base = os.path.abspath(base)
        self.settings = settings
        self.user_root = os.path.realpath(user_root)
        self.read_roots = [self.user_root, *(os.path.realpath(r) for r in settings.data_roots)]

    def _refuse(self, key: str, value: str, why: str, roots: Sequence[str]) -> RequestError:
        allowed = ", ".join(roots) or "none"
        return RequestError(
            f"Config key {key} names {value!r}, {why}: a job of this service may only read "
            f"files under {allowed} (the user's uploads and the operator's data roots) and "
            f"URLs under {', '.join(self.settings.redirectors) or 'no redirector'}. Upload "
            "the files, or ask the operator to add a --data-root or --redirector.", 403)

    def local(self, key: str, path: str, *, write: bool = False) -> str:
        """``path`` made absolute against the base, after checking that it (symlinks resolved)
        is under an allowed root, or under the user's root when the job ``write``s there."""
        roots = [self.user_root] if write else self.read_roots
        if "\0" in path or ".." in PurePosixPath(path).parts:
            raise self._refuse(key, path, "with a '..' component", roots)
        absolute = os.path.normpath(os.path.join(self.base, path))
        if not _inside(os.path.realpath(absolute), roots):
            why = ("outside the user's folder, where a job may write" if write else
                   "outside the allowed folders")
            raise self._refuse(key, path, f"which is {absolute} ({os.path.realpath(absolute)} "
                                          f"once links are resolved), {why}", roots)
        return absolute

    def url(self, key: str, url: str) -> str:
        """``url`` when it starts with one of the operator's redirectors."""
        prefixes = self.settings.redirectors
        rest = url.partition("://")[2]
        if ".." in rest.split("/") or "::" in url or not any(
                url == p or url.startswith(p if p.endswith("/") else p + "/") for p in prefixes):
            raise RequestError(
                f"Config key {key} names the URL {url!r}, which is not under the redirectors "
                f"this service reads ({', '.join(prefixes) or 'none'}; '..' and '::' are "
                "refused): copy the files into an upload, or ask the operator to add a "
                "--redirector.", 403)
        return url

    def pattern(self, key: str, pattern: str, redirector: str | None) -> list[str]:
        """One entry of a sample's ``files``, as :func:`~hepdask.dataset.expand_files` reads it,
        checked; a ``.txt`` list becomes its checked entries."""
        if redirector and pattern.startswith("/store/") and not os.path.exists(pattern):
            self.url(key, f"{redirector.rstrip('/')}/{pattern}")
            return [pattern]
        if is_url(pattern):
            return [self.url(key, pattern)]
        if pattern.endswith(".txt") and not glob.has_magic(pattern):
            listing = self.local(key, pattern)
            try:
                entries = read_list(listing, key)
            except HepdaskError as err:
                raise RequestError(str(err), 422) from None
            where = f"{key} ({pattern})"
            return [path for entry in entries for path in self.pattern(where, entry, redirector)]
        if not glob.has_magic(pattern):
            return [self.local(key, pattern)]
        parts = PurePosixPath(pattern).parts
        fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        self.local(key, str(PurePosixPath(*parts[:fixed])) if fixed else ".")
        absolute = self.local(key, pattern)  # the '..' check on the whole pattern
        for match in glob.glob(absolute):
            self.local(key, match)
        return [absolute]

    def code(self, key: str, spec: str) -> str:
        """A ``"file.py:function"`` or a class path outside scikit-learn: refused unless the
        operator allows user code, then (for a file) confined and made absolute."""
        if not self.settings.allow_user_code:
            what = ("the Python file " + repr(spec.rpartition(":")[0]) if ":" in spec else
                    f"the class {spec!r}, whose module is imported")
            raise RequestError(
                f"Config key {key} is {spec!r}: it runs user code ({what}), which is arbitrary "
                "Python run with the service's rights. This service runs no user code: its "
                "operator must start it with --allow-user-code to allow it. Use a built-in "
                "model (train.keras.hidden, a sklearn.* estimator, train.xgboost.params) "
                "instead.", 403)
        if ":" not in spec:
            return spec
        path, _, function = spec.rpartition(":")
        return f"{self.local(key, path)}:{function}"


def _inside(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def confine(raw: dict, *, base: Path, settings: ServiceSettings, user_root: Path) -> dict:
    """A copy of the config mapping ``raw`` whose paths are checked and made absolute.

    Parameters
    ----------
    raw
        The config as parsed from TOML (or converted from MLaaS4HEP), before validation.
    base
        The job's working directory: relative paths are taken from it.
    settings
        The operator's data roots, redirectors and whether user code may run.
    user_root
        The user's folder: readable, and the only place a job may write (``[prepare]``).

    Checked: ``samples.*.files`` (files, globs, ``.txt`` lists and their entries, logical
    ``/store/`` names through ``data.redirector``, URLs), ``data.redirector``,
    ``prepare.directory`` (written, so under ``user_root``) and ``prepare.csv``, and the user
    code of ``train.xgboost.model``, ``train.keras.model`` and ``train.sklearn.estimator``.
    Paths are compared once symbolic links are resolved; any ``..`` is refused. A refusal is
    a :class:`~hepdask.errors.RequestError` 403 naming the key, the path and the allowed
    roots. The output and cluster keys are left to the caller, which overrides them.
    """
    rules = _Rules(base, settings, user_root)
    out = copy.deepcopy(raw)
    data = _table(out, "data")
    redirector = data.get("redirector")
    if isinstance(redirector, str):
        rules.url("data.redirector", redirector)
    for i, sample in enumerate(out.get("samples") or []):
        if not isinstance(sample, dict):
            continue
        key = f"samples.{sample.get('name', i)}.files"
        files = sample.get("files")
        files = [files] if isinstance(files, str) else files
        if isinstance(files, list) and all(isinstance(f, str) for f in files):
            sample["files"] = [p for f in files for p in rules.pattern(key, f, redirector)]
    prepare = _table(out, "prepare")
    if prepare.get("dataset") is not None or "directory" in prepare:
        from ..config import PrepareConfig

        directory = prepare.get("directory", PrepareConfig.directory)
        if isinstance(directory, str):
            prepare["directory"] = rules.local("prepare.directory", directory, write=True)
    if isinstance(prepare.get("csv"), str):
        prepare["csv"] = rules.local("prepare.csv", prepare["csv"])
    train = _table(out, "train")
    for engine, name in CODE_KEYS:
        table = _table(train, engine)
        spec = table.get(name)
        if not isinstance(spec, str):
            continue
        if ":" in spec or not spec.startswith("sklearn."):
            table[name] = rules.code(f"train.{engine}.{name}", spec)
    return out


def _table(parent: dict, key: str) -> dict:
    """``parent[key]`` when it is a table, else an empty one (validation reports a wrong type)."""
    value = parent.get(key)
    return value if isinstance(value, dict) else {}


def convert_workflow(folder: Path, *, files: str, labels: str, model: str,
                     params: str | None = None, preproc: str | None = None,
                     settings: ServiceSettings, user_root: Path,
                     timeout: float = 300.0) -> tuple[dict, list[str]]:
    """The confined config of an MLaaS4HEP workflow in the upload ``folder``, and the notes of
    its conversion (:func:`hepdask.mlaas4hep.convert`).

    The model file is user code, and converting runs it (``model()`` tells the engine), so a
    workflow is refused (403) unless the operator allows user code; the conversion then runs
    in a ``python -P -m hepdask convert-mlaas4hep`` subprocess in ``folder`` (a crashing or
    hanging model cannot take the service down), and its config goes through :func:`confine`.
    """
    rules = _Rules(folder, settings, user_root)
    rules.code("model", f"{model}:model")
    given = {"files": files, "labels": labels, "model": model, "params": params,
             "preproc": preproc}
    args = [sys.executable, "-P", "-m", "hepdask", "convert-mlaas4hep", "-q"]
    for key, value in given.items():
        if value is None:
            continue
        if key in ("model", "params", "preproc") or os.path.isfile(os.path.join(folder, value)):
            rules.local(key, value)
        if key == "files" and os.path.isfile(os.path.join(folder, value)):
            # refused before the model runs; confine checks the converted samples again
            for entry in read_list(rules.local(key, value), key):
                rules.pattern(f"files ({value})", entry, None)
        args += [f"--{key}", value]
    try:
        done = subprocess.run(args, cwd=folder, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise RequestError(f"Converting the workflow {Path(folder).name} took more than "
                           f"{timeout:.0f} s (its model file runs): check {model}.", 422) from None
    if done.returncode:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        errors = [ln.removeprefix("hepdask: error: ") for ln in lines
                  if ln.startswith("hepdask: error: ")]
        reason = errors[-1] if errors else (lines[-1] if lines else f"exit {done.returncode}")
        raise RequestError(f"The MLaaS4HEP workflow {Path(folder).name} cannot be converted: "
                           f"{reason}", 422)
    notes = [ln.removeprefix("# Note: ") for ln in done.stdout.splitlines()
             if ln.startswith("# Note: ")]
    raw = tomllib.loads(done.stdout)
    return confine(raw, base=folder, settings=settings, user_root=user_root), notes
