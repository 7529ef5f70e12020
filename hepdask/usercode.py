"""Functions from users' Python files, named ``"path/to/file.py:function"`` in a config."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

from .errors import HepdaskError

__all__ = ["load_function"]


def load_function(spec: str, key: str, *, arguments: tuple[str, ...] | None = ()):
    """The function named by ``spec``, with a clear error for each way it can be wrong.

    ``arguments`` describes what the function is called with (e.g. ``("the number of input
    features",)``); it must accept exactly that many positional arguments. ``None`` leaves
    the signature to the caller.
    """
    path, _, name = spec.rpartition(":")
    file = Path(path)
    if not file.is_file():
        raise HepdaskError(f"{key}: the file {file} does not exist (from {spec!r}).")
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
