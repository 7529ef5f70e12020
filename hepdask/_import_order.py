"""What must be imported before TensorFlow, which makes these segfault when they come after it.

Imported first by ``hepdask/__init__``, so that any later order works.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import sys


class _BeforeTensorFlow(importlib.abc.MetaPathFinder):
    """Imports torch's triton right before TensorFlow, whoever imports TensorFlow (the Keras
    engine, tf2onnx under the ONNX export): triton segfaults when first imported after it
    (triton 3.8 with tensorflow-cpu 2.21, measured), which a torch optimizer then does. Costs
    nothing until TensorFlow is imported, 0.2 s then."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow":
            sys.meta_path.remove(self)
            with contextlib.suppress(ImportError):
                importlib.import_module("triton")
        return None  # the usual finders find TensorFlow


if "tensorflow" not in sys.modules:
    # The XRootD bindings segfault when first imported after TensorFlow too (xrootd 6.2 with
    # tensorflow-cpu 2.21, measured); imported first they are fine, so load them now (16 ms)
    # for root:// files read after a Keras model is built, and before torch is imported for
    # its engine. See dataset.open_tree otherwise.
    with contextlib.suppress(ImportError):
        import XRootD.client  # noqa: F401
    sys.meta_path.insert(0, _BeforeTensorFlow())
