"""Where training runs: ``train.device = "auto" | "cpu" | "cuda"``.

The network engines (torch, keras) train in this process, so the GPU that counts is this
machine's, as their library sees it; XGBoost trains on the workers, so it is theirs. "auto"
takes the GPU when there is one (for XGBoost: when every worker sees one) and the CPU
otherwise; "cuda" without a GPU is an error, raised before any data are read. The device used
is recorded in ``metrics.json``.
"""

from __future__ import annotations

import ctypes
import logging

from .errors import HepdaskError

__all__ = ["check_cuda", "keras_device", "torch_device", "worker_gpus", "xgboost_device"]

log = logging.getLogger("hepdask")

_FALLBACK = ('Set train.device = "cpu" to train on the CPU, or "auto", which takes a GPU when '
             "one is visible and the CPU otherwise.")


def _no_gpu(engine: str, why: str) -> HepdaskError:
    return HepdaskError(f'Config key train.device is "cuda", but {why}, so the {engine} engine '
                        f"cannot train on a GPU. {_FALLBACK}")


def check_cuda(engine: str) -> None:
    """The error for ``train.device = "cuda"`` when this process's ``engine`` (torch or keras)
    sees no GPU; nothing otherwise. Imports the library (as training would)."""
    (torch_device if engine == "torch" else keras_device)("cuda")


def torch_device(device: str) -> str:
    """``"cuda"`` or ``"cpu"``: what ``device`` means for torch in this process."""
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        why = (f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build "
               "(see https://pytorch.org/get-started/locally/)" if torch.version.cuda is None
               else f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() "
               "is False: no NVIDIA GPU or driver here, or CUDA_VISIBLE_DEVICES hides it)")
        raise _no_gpu("torch", why)
    return "cpu"


def keras_device(device: str) -> str:
    """``"cuda"`` or ``"cpu"``: what ``device`` means for TensorFlow in this process."""
    if device == "cpu":
        return "cpu"
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "cuda"
    if device == "cuda":
        raise _no_gpu("keras", "TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') "
                               "is empty; tensorflow-cpu never sees one: install tensorflow "
                               "with CUDA, pip install 'tensorflow[and-cuda]')")
    return "cpu"


def worker_gpus() -> int:
    """On a worker: the CUDA devices that XGBoost can train on (0 when its build has no CUDA,
    or the driver sees no device). Asks the CUDA driver itself: no GPU library is needed."""
    import xgboost

    if not xgboost.build_info().get("USE_CUDA"):
        return 0
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def xgboost_device(client, device: str) -> str:
    """``"cuda"`` or ``"cpu"`` for XGBoost's ``device`` parameter, from the workers' GPUs."""
    if device == "cpu":
        return "cpu"
    gpus = client.run(worker_gpus)
    with_gpu = sum(1 for n in gpus.values() if n)
    if gpus and with_gpu == len(gpus):
        return "cuda"
    if device == "cuda":
        raise _no_gpu("xgboost", (
            f"{with_gpu} of the {len(gpus)} workers see a GPU that XGBoost can use (it needs "
            "a CUDA build of xgboost, the PyPI wheel for Linux is one, and an NVIDIA driver on "
            "every worker, as XGBoost trains on all of them). Start one worker per GPU, e.g. "
            "with dask-cuda's `dask cuda worker SCHEDULER`, or `dask worker SCHEDULER "
            "--nworkers 1 --resources GPU=1` on each GPU machine"))
    if with_gpu:
        log.info("XGBoost trains on the CPU: only %d of the %d workers see a GPU", with_gpu,
                 len(gpus))
    return "cpu"
