"""A PyTorch network trained in this process on mini-batches streamed from the cluster.

The batches are those of the Keras engine (:class:`~hepdask.stream.BatchStream`: every sample
in its proportion, true reshuffled epochs, weights and class balancing, missing values as 0),
and so are the checkpoints, ``--resume``, early stopping on ``val_loss`` with the best weights
restored, and the history (:mod:`._network`).

The network is the built-in dense one (``[train.torch]`` hidden, activation, dropout) or the
``torch.nn.Module`` that ``function(n_features)`` of a user file returns. It gives one output
per event for two classes, or one per class, as logits (no final sigmoid or softmax); a model
whose last layer is ``torch.nn.Sigmoid`` or ``torch.nn.Softmax`` is taken to give
probabilities. The same file may define

- ``loss()``: the loss, called as ``loss(outputs, targets)`` with targets shaped like the
  outputs (0/1 floats) for one output and class numbers (int64) for several; a torch loss's
  ``reduction`` is set to ``"none"``, as hepdask weights each event's loss itself;
- ``optimizer(parameters)``: the ``torch.optim`` optimizer of the model's parameters.

The bundle holds the weights (``model.pt``, a state dict) and the definition of the network:
the built-in one's keys in ``bundle.json``, or the user file, copied as ``torch_model.py``
(it must import only installed packages). torch is imported only when this engine runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import logging
import os
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from ..config import TORCH_ACTIVATIONS, TORCH_OPTIMIZERS, StreamConfig, TorchConfig
from ..errors import HepdaskError
from ..features import Features
from ..outputs import atomic_path
from ..specs import Specs
from ..stream import BatchStream, StreamedModel, Transform
from ..usercode import call_function, load_function
from ._network import EpochState, end_epoch, open_checkpoints, open_streams, split_history

__all__ = ["TorchModel", "import_torch", "train_torch", "trainer_threads"]

log = logging.getLogger("hepdask")

KEY = "train.torch.model"
MODEL_FILE = "torch_model.py"  # a user model's file, in the bundle


def import_torch():
    """torch, or a clear message on how to install it."""
    # The XRootD bindings' exit handler looks at every object, torch's deprecated reduce_op
    # class too, which would print a FutureWarning as each run ends.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.reduce_op` is deprecated",
                            category=FutureWarning)
    if ("tensorflow" in sys.modules and "triton" not in sys.modules
            and importlib.util.find_spec("triton") is not None):
        raise HepdaskError(
            "TensorFlow was imported in this process before the torch engine ran, and torch's "
            "triton crashes the process when it is first imported after TensorFlow. Run the "
            "torch engine in a new process (restart the notebook's kernel), or import hepdask (or "
            "triton) before TensorFlow."
        )
    try:
        import torch
    except ImportError:
        raise HepdaskError(
            "The torch engine needs PyTorch, which is not installed. Install it with: pip "
            "install 'hepdask[torch]'   (the CPU or CUDA build from https://pytorch.org for a "
            "GPU machine)."
        ) from None
    return torch


@dataclass
class TorchModel(StreamedModel):
    """A trained network (on the CPU, in eval mode) with the transform its inputs need.

    ``definition`` rebuilds it: ``{"kind": "builtin", "n_inputs", "hidden", "activation",
    "dropout", "n_outputs", "probabilities"}`` or ``{"kind": "file", "function", "n_inputs",
    "n_outputs", "probabilities"}`` with the file's text in ``source``.
    """

    network: object  # torch.nn.Module
    feature_names: tuple[str, ...]
    transform: Transform
    stream: StreamConfig
    history: dict = field(default_factory=dict)
    best_iteration: int | None = None
    definition: dict = field(default_factory=dict)
    source: str | None = None

    filename = "model.pt"

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The signal probability for two classes, else one per class."""
        torch = import_torch()
        with torch.inference_mode():
            out = self.network(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)))
            scores = _probabilities(torch, out, self.definition["probabilities"]).numpy()
        scores = scores.reshape(len(X), -1)
        return scores[:, -1] if scores.shape[1] <= 2 else scores

    def importance(self) -> dict[str, float]:
        return {}  # no model-agnostic importance is computed for networks

    def bundle_info(self) -> dict:
        return {**super().bundle_info(), "network": self.definition}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / self.filename
        with atomic_path(path) as tmp:
            import_torch().save(self.network.state_dict(), tmp)
        if self.source is not None:
            with atomic_path(Path(directory) / MODEL_FILE) as tmp:
                tmp.write_text(self.source)
        return path

    @classmethod
    def load(cls, directory: str | Path, info: dict, feature_names: tuple[str, ...]
             ) -> TorchModel:
        """The saved network, ready to score."""
        directory = Path(directory)
        definition = info["network"]
        source = (directory / MODEL_FILE).read_text() if definition["kind"] == "file" else None
        state = import_torch().load(directory / cls.filename, map_location="cpu",
                                    weights_only=True)
        model = cls._loaded(None, feature_names, info)
        model.definition, model.source = definition, source
        model.network = _rebuild(definition, source, state)
        return model

    def __getstate__(self) -> dict:
        """Pickled (for the workers of ``hepdask predict``) as weights and definition: a user
        model's class lives in a module that the workers cannot import."""
        buffer = io.BytesIO()
        import_torch().save(self.network.state_dict(), buffer)
        return {**self.__dict__, "network": buffer.getvalue()}

    def __setstate__(self, state: dict) -> None:
        weights = import_torch().load(io.BytesIO(state["network"]), map_location="cpu",
                                      weights_only=True)
        self.__dict__.update(state, network=_rebuild(state["definition"], state["source"],
                                                     weights))


def train_torch(client, features: Features, specs: Specs, config: TorchConfig,
                stream: StreamConfig, run_dir: str | Path, *, device: str = "cpu",
                resume: bool = False,
                on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
                ) -> TorchModel:
    """Train on ``features.train`` streamed from ``client``'s workers, on ``device`` ("cpu"
    or "cuda", see :mod:`hepdask.devices`); see the module docstring.

    ``on_epoch(epoch, epochs, logs)`` is called after each epoch (1-based).
    """
    torch = import_torch()
    transform, names, train, valid = open_streams(client, features, specs, stream, "torch")

    with _torch_settings(torch, config.threads or trainer_threads(client), seed=stream.seed,
                         cuda=torch.device(device).type == "cuda"):
        network, definition, source, functions = _build(torch, config, len(names),
                                                        specs.n_classes)
        loss = _loss(torch, definition, functions.get("loss"))
        network.to(device)
        optimizer = _optimizer(torch, network, config, functions.get("optimizer"))
        checkpoints, state = open_checkpoints(run_dir, resume=resume, epochs=config.epochs)
        if state is not None:
            saved = torch.load(checkpoints / state.last, map_location=device, weights_only=True)
            network.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
        state = state or EpochState()

        def save(path: Path) -> None:
            torch.save({"model": network.state_dict(), "optimizer": optimizer.state_dict()},
                       path)

        if state.stopped:
            log.info("The checkpointed run had already stopped early; not training further")
        elif state.epoch + 1 < config.epochs:
            log.info("Training torch on %s: %d events in %d batches of about %d, %d features, "
                     "%d epochs, %d threads", device, train.n_events, len(train),
                     stream.batch_size, len(names), config.epochs, torch.get_num_threads())
        for epoch in range(state.epoch + 1, config.epochs):
            if state.stopped:
                break
            torch.manual_seed(int(np.random.SeedSequence([stream.seed, epoch]).generate_state(1)[0]))
            network.train()
            if len(valid):
                valid.warm(0)  # computed while the network trains
            logs = _pass(torch, network, definition, loss, _tensors(train, epoch), device,
                         optimizer=optimizer)
            if epoch + 1 < config.epochs:
                train.warm(epoch + 1)  # computed during the validation pass
            if len(valid):
                network.eval()
                with torch.inference_mode():
                    logs |= {f"val_{k}": v for k, v in _pass(
                        torch, network, definition, loss, _tensors(valid, 0), device).items()}
            end_epoch(checkpoints, state, epoch, logs, patience=config.patience, suffix=".pt",
                      save=save, on_epoch=on_epoch, epochs=config.epochs)
    train.release()
    valid.release()
    best = checkpoints / "best.pt"
    if best.exists():
        network.load_state_dict(torch.load(best, map_location=device, weights_only=True)["model"])
    network.to("cpu").eval()
    return TorchModel(network, names, transform, stream, split_history(state.history),
                      state.best_epoch, definition, source)


def trainer_threads(client) -> int:
    """torch's threads for a trainer beside ``client``'s workers: this process's CPUs less the
    threads of the workers on this machine (they compute the coming batches meanwhile), and
    at least half of the CPUs (the workers mostly wait for the trainer), at least one. OpenMP
    threads that share their cores slow down many times over (a 1024-512-256 network: 2,800
    events/s with two threads on two busy cores, 13,900 with one)."""
    here = {"127.0.0.1", "localhost", socket.gethostname()}
    with contextlib.suppress(OSError):
        here.add(socket.gethostbyname(socket.gethostname()))
    workers = client.scheduler_info().get("workers", {}).values()
    local = sum(w.get("nthreads", 1) for w in workers if w.get("host") in here)
    cpus = len(os.sched_getaffinity(0))
    return max(1, cpus - local, cpus // 2)


@contextlib.contextmanager
def _torch_settings(torch, threads: int, *, seed: int, cuda: bool) -> Iterator[None]:
    """Seeded (and on a GPU, deterministic algorithms) with ``threads`` CPU threads while
    training; torch's settings as they were afterwards.

    On the CPU a dense network's kernels are deterministic for a given thread count, and
    ``torch.use_deterministic_algorithms`` imports triton, which crashes the process when
    TensorFlow was imported first (a Keras run earlier in the same notebook or Python)."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_num_threads(threads)
    if cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)  # warn: some CUDA kernels
    torch.manual_seed(seed)  # the same initial weights run after run
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        if cuda:
            torch.use_deterministic_algorithms(before[1], warn_only=before[2])


def _build(torch, config: TorchConfig, n_inputs: int, n_classes: int):
    """(network, definition, source, the user file's optional functions) for ``config``."""
    if config.model is None:
        definition = {"kind": "builtin", "n_inputs": n_inputs, "hidden": list(config.hidden),
                      "activation": config.activation, "dropout": config.dropout,
                      "n_outputs": 1 if n_classes == 2 else n_classes, "probabilities": False}
        return _rebuild(definition, None), definition, None, {}
    build = load_function(config.model, KEY, arguments=("the number of input features",))
    network = call_function(build, config.model, KEY, n_inputs, returns="a torch.nn.Module")
    path, _, name = config.model.rpartition(":")
    if not isinstance(network, torch.nn.Module):
        raise HepdaskError(
            f"{KEY}: {config.model} returned {type(network).__name__}, not a torch.nn.Module. "
            "Return the network built from the number of input features, e.g. "
            "torch.nn.Sequential(torch.nn.Linear(n, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))."
        )
    n_outputs = _outputs(torch, network, n_inputs, config.model)
    if n_outputs not in (1, n_classes) or (n_outputs == 1 and n_classes > 2):
        raise HepdaskError(
            f"{KEY}: the network from {config.model} gives {n_outputs} outputs per event but "
            f"the data have {n_classes} classes. Give it one output (a logit) for two classes, "
            f"or {n_classes} outputs (one logit per class)."
        )
    definition = {"kind": "file", "function": name, "n_inputs": n_inputs,
                  "n_outputs": n_outputs, "probabilities": _ends_in_probabilities(torch, network)}
    namespace = build.__globals__  # the user file's module: its loss and optimizer, if any
    functions = {extra: (f"{path}:{extra}", namespace[extra]) for extra in ("loss", "optimizer")
                 if inspect.isfunction(namespace.get(extra))}
    return network, definition, Path(path).read_text(), functions


def _rebuild(definition: dict, source: str | None, state: dict | None = None):
    """The network of a definition (see :class:`TorchModel`), with the weights ``state``."""
    torch = import_torch()
    if definition["kind"] == "builtin":
        layers, width = [], definition["n_inputs"]
        for units in definition["hidden"]:
            layers += [torch.nn.Linear(width, units),
                       getattr(torch.nn, TORCH_ACTIVATIONS[definition["activation"]])()]
            if definition["dropout"]:
                layers.append(torch.nn.Dropout(definition["dropout"]))
            width = units
        network = torch.nn.Sequential(*layers, torch.nn.Linear(width, definition["n_outputs"]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_FILE
            path.write_text(source)
            spec = f"{path}:{definition['function']}"
            build = load_function(spec, KEY, arguments=("the number of input features",))
            network = call_function(build, spec, KEY, definition["n_inputs"],
                                    returns="a torch.nn.Module")
    if state is not None:
        network.load_state_dict(state)
        network.eval()
    return network


def _outputs(torch, network, n_inputs: int, source: str) -> int:
    """The outputs per event of ``network``, found by running it on two events of zeros."""
    was_training = network.training
    network.eval()
    try:
        with torch.inference_mode():
            out = network(torch.zeros(2, n_inputs))
    except Exception as err:
        raise HepdaskError(
            f"{KEY}: the network from {source} fails on a batch of {n_inputs} features "
            f"({type(err).__name__}: {err}). Build its first layer from the number of input "
            "features passed to the function."
        ) from err
    finally:
        network.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim not in (1, 2) or len(out) != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise HepdaskError(
            f"{KEY}: the network from {source} returns {shape} for 2 events; it must return "
            "a tensor of shape [N] or [N, outputs]."
        )
    return 1 if out.ndim == 1 else out.shape[1]


def _ends_in_probabilities(torch, network) -> bool:
    """Whether the last layer is a sigmoid or softmax: its outputs are then probabilities."""
    leaves = [m for m in network.modules() if not list(m.children())]
    return bool(leaves) and isinstance(leaves[-1], torch.nn.Sigmoid | torch.nn.Softmax)


def _probabilities(torch, out, probabilities: bool):
    """Class probabilities from the network's outputs: [N] or [N, K]."""
    out = out.reshape(len(out), -1)
    if out.shape[1] == 1:
        return out[:, 0] if probabilities else torch.sigmoid(out[:, 0])
    return out if probabilities else torch.softmax(out, dim=1)


def _loss(torch, definition: dict, user: tuple | None):
    """``loss(outputs, y) -> one loss per event`` (y: the labels as floats)."""
    one = definition["n_outputs"] == 1
    if user is not None:
        spec, function = user
        with contextlib.suppress(TypeError):  # loss() makes the loss; loss(outputs, y) is one
            inspect.signature(function).bind()
            function = call_function(function, spec, f"{KEY} (loss)", returns="a torch loss")
        if hasattr(function, "reduction"):
            function.reduction = "none"

        def loss(out, y):
            values = function(out, y.reshape(out.shape) if one else y.long())
            if values.ndim == 0:
                raise HepdaskError(
                    f"{KEY}: loss() in {spec.rpartition(':')[0]} returns one number per batch; "
                    "it must return one loss per event (e.g. reduction='none'), which hepdask "
                    "weights with the event weights."
                )
            return values.reshape(len(out), -1).sum(dim=1)

        return loss
    probabilities = definition["probabilities"]
    if one:
        if probabilities:
            return lambda out, y: torch.nn.functional.binary_cross_entropy(
                out.reshape(-1).clamp(1e-7, 1 - 1e-7), y, reduction="none")
        return lambda out, y: torch.nn.functional.binary_cross_entropy_with_logits(
            out.reshape(-1), y, reduction="none")
    if probabilities:
        return lambda out, y: torch.nn.functional.nll_loss(
            out.clamp_min(1e-12).log(), y.long(), reduction="none")
    return lambda out, y: torch.nn.functional.cross_entropy(out, y.long(), reduction="none")


def _optimizer(torch, network, config: TorchConfig, user: tuple | None):
    if user is None:
        cls = getattr(torch.optim, TORCH_OPTIMIZERS[config.optimizer])
        return cls(network.parameters(), lr=config.learning_rate)
    spec, factory = user
    optimizer = call_function(factory, spec, f"{KEY} (optimizer)", network.parameters(),
                              returns="a torch.optim.Optimizer")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise HepdaskError(
            f"{KEY}: optimizer(parameters) in {spec.rpartition(':')[0]} returned "
            f"{type(optimizer).__name__}, not a torch.optim.Optimizer; return e.g. "
            "torch.optim.Adam(parameters, lr=1e-3)."
        )
    return optimizer


def _pass(torch, network, definition: dict, loss, batches: Iterator, device: str, *,
          optimizer=None) -> dict[str, float]:
    """One pass over ``batches``, training when given the ``optimizer``: the weighted mean
    loss and AUC (one-vs-rest for several classes, with the accuracy) of the pass."""
    total = weight = 0.0
    scores, labels, weights = [], [], []
    for X, y, w in batches:
        X, y, w = (t.to(device, non_blocking=True) for t in (X, y, w))
        out = network(X)
        summed, events = (loss(out, y) * w).sum(), w.sum()
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            (summed / events.clamp_min(1e-12)).backward()
            optimizer.step()
        total, weight = total + summed.detach(), weight + events  # on the device: no sync
        scores.append(_probabilities(torch, out.detach(), definition["probabilities"]))
        labels.append(y)
        weights.append(w)
    p, y, w = (torch.cat(t).cpu().numpy() for t in (scores, labels, weights))
    if p.ndim > 1 and p.shape[1] == 2:
        p = p[:, 1]  # two softmax outputs: the signal's
    logs = {"loss": float(total) / max(float(weight), 1e-12)}
    if len(np.unique(y)) > 1:
        multi = p.ndim > 1
        logs["auc"] = float(roc_auc_score(y, p, sample_weight=w, multi_class="ovr",
                                          labels=np.arange(p.shape[1])) if multi
                            else roc_auc_score(y, p, sample_weight=w))
        if multi:
            logs["accuracy"] = float(np.average(p.argmax(axis=1) == y, weights=w))
    return logs


def _tensors(stream: BatchStream, epoch: int) -> Iterator:
    """The batches of ``epoch`` as tensors (sharing the arrays' memory). In this thread: the
    workers already compute the coming blocks ahead, and a thread assembling batches here
    would contend for the GIL with the network's every operation (measured: half the
    events/s)."""
    import torch

    for X, y, w in stream.epoch(epoch):
        yield torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(w)
