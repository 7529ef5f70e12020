"""hepdask: train classifiers on ROOT data that does not fit in one process, on Dask.

The steps of a run (config → dataset → specs → features → train → evaluate)
are available one by one through :class:`Pipeline`; ``python -m hepdask run``
does them all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _import_order  # noqa: F401  (first: see there)
from .errors import HepdaskError

if TYPE_CHECKING:
    from .bundle import Bundle
    from .config import Config, load_config
    from .pipeline import Pipeline

__all__ = ["Bundle", "Config", "HepdaskError", "Pipeline", "__version__", "load_config"]

__version__ = "0.1.0"

# Imported on first use: the pipeline pulls in Dask, awkward and scikit-learn (seconds), which
# `hepdask --help` and the service's clients never need.
_LAZY = {"Bundle": "bundle", "Config": "config", "load_config": "config", "Pipeline": "pipeline"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hepdask' has no attribute {name!r}")
