"""hepdask: train classifiers on ROOT data that does not fit in one process, on Dask.

The steps of a run (config → dataset → specs → features → train → evaluate)
are available one by one through :class:`Pipeline`; ``python -m hepdask run``
does them all.
"""

from __future__ import annotations

from . import _import_order  # noqa: F401  (first: see there)
from .bundle import Bundle
from .config import Config, load_config
from .errors import HepdaskError
from .pipeline import Pipeline

__all__ = ["Bundle", "Config", "HepdaskError", "Pipeline", "__version__", "load_config"]

__version__ = "0.1.0"
