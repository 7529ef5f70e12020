"""hepdask: train classifiers on ROOT data that does not fit in one process, on Dask.

The steps of a run (config → dataset → specs → features → train → evaluate)
are available one by one through :class:`Pipeline`; ``python -m hepdask run``
does them all.
"""

from __future__ import annotations

import contextlib
import sys

if "tensorflow" not in sys.modules:
    # The XRootD bindings segfault when first imported after TensorFlow (xrootd 6.2 with
    # tensorflow-cpu 2.21, measured); imported first they are fine, so load them now (16 ms)
    # for root:// files read after a Keras model is built, and before torch is imported for
    # its engine. See dataset.open_tree otherwise.
    with contextlib.suppress(ImportError):
        import XRootD.client  # noqa: F401

from .bundle import Bundle
from .config import Config, load_config
from .errors import HepdaskError
from .pipeline import Pipeline

__all__ = ["Bundle", "Config", "HepdaskError", "Pipeline", "__version__", "load_config"]

__version__ = "0.1.0"
