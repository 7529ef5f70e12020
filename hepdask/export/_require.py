"""The optional packages of ``hepdask[onnx]``, imported when an export needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import HepdaskError

__all__ = ["require"]


def require(name: str, purpose: str) -> ModuleType:
    """The module ``name``, or a clear message on how to install it (for ``purpose``)."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise HepdaskError(
            f"Exporting {purpose} to ONNX needs the Python package {name.split('.')[0]!r}, "
            f"which is not installed ({err}). Install the ONNX tools with: "
            "pip install 'hepdask[onnx]'"
        ) from None
