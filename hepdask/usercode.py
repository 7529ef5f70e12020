"""Functions from users' Python files, named ``"path/to/file.py:function"`` in a config, and
classes named by their import path (``"sklearn.linear_model.SGDClassifier"``)."""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
from pathlib import Path

from .errors import HepdaskError

__all__ = ["check_function_file", "import_class", "load_function"]


def check_function_file(spec: str, key: str) -> None:
    """Check, without running it, that the file of ``spec`` exists, is Python and defines the
    function: the common mistakes, caught when the config is loaded rather than after the
    specs pass. A name bound by an import or an assignment at the top level counts."""
    path, _, name = spec.rpartition(":")
    file = Path(path)
    if not file.is_file():
        raise HepdaskError(f"{key}: the file {file} does not exist (from {spec!r}; relative "
                           "paths are taken from the current directory).")
    try:
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except SyntaxError as err:
        raise HepdaskError(f"{key}: {file} is not valid Python: {err.msg}, line {err.lineno}."
                           ) from None
    except ValueError as err:  # null bytes: not a text file
        raise HepdaskError(f"{key}: {file} is not valid Python: {err}.") from None
    functions, bound = [], set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions.append(node.name)
        elif isinstance(node, ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound.update(t.id for t in targets if isinstance(t, ast.Name))
    if name not in functions and name not in bound and "*" not in bound:
        close = difflib.get_close_matches(name, functions, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise HepdaskError(f"{key}: {file} has no function {name!r}; it defines "
                           f"{', '.join(functions) or 'none'}.{hint}")


def import_class(path: str, key: str) -> type:
    """The class of the import path ``path`` (``"package.module.Class"``), with the closest
    name when the module or the class does not exist."""
    module_name, _, class_name = path.rpartition(".")
    wanted = ("Give the full class path, e.g. \"sklearn.linear_model.SGDClassifier\" or "
              "\"sklearn.neural_network.MLPClassifier\".")
    try:
        module = importlib.import_module(module_name) if module_name else None
    except ImportError as err:
        missing = err.name or module_name
        raise HepdaskError(f"{key}: cannot import {path!r}: there is no module {missing!r} "
                           f"here. {wanted}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        names = [n for n, v in vars(module).items() if isinstance(v, type)] if module else []
        close = difflib.get_close_matches(class_name, names, n=1)
        hint = f" Did you mean {module_name + '.' + close[0]!r}?" if close else ""
        raise HepdaskError(f"{key}: cannot import {path!r}: {module_name or 'it'} has no class "
                           f"{class_name!r}.{hint} {wanted}")
    return cls


def load_function(spec: str, key: str, *, arguments: tuple[str, ...] | None = ()):
    """The function named by ``spec``, with a clear error for each way it can be wrong.

    ``arguments`` describes what the function is called with (e.g. ``("the number of input
    features",)``); it must accept exactly that many positional arguments. ``None`` leaves
    the signature to the caller.
    """
    check_function_file(spec, key)
    path, _, name = spec.rpartition(":")
    file = Path(path)
    module_spec = importlib.util.spec_from_file_location(f"hepdask_user_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise HepdaskError(
            f"{key}: importing {file} failed with {type(err).__name__}: {err}."
        ) from err
    function = getattr(module, name, None)
    if not callable(function):
        found = [n for n, v in vars(module).items() if inspect.isfunction(v)
                 and v.__module__ == module.__name__]
        raise HepdaskError(
            f"{key}: {file} has no function {name!r}; it defines {', '.join(found) or 'none'}."
        )
    if arguments is None:
        return function
    try:
        inspect.signature(function).bind(*arguments)
    except TypeError:
        count = {1: "one argument", 2: "two arguments"}.get(len(arguments),
                                                           f"{len(arguments)} arguments")
        wanted = f"exactly {count}, {', '.join(arguments)}" if arguments else "no arguments"
        raise HepdaskError(
            f"{key}: {spec} must take {wanted}; it is declared as "
            f"{name}{inspect.signature(function)}."
        ) from None
    return function


def call_function(function, spec: str, key: str, *args, returns: str):
    """Call a user function, turning any exception into a message naming the function."""
    try:
        return function(*args)
    except Exception as err:
        shown = ", ".join(map(repr, args))
        raise HepdaskError(
            f"{key}: {spec}({shown}) raised {type(err).__name__}: {err}. The function must "
            f"return {returns}."
        ) from err
