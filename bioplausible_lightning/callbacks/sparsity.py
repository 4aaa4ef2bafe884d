"""Watch activity and weight sparsity emerge, on a fixed probe batch."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import move_data_to_device
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn

from .._validation import check_callable, check_fraction, check_min_int, check_nonnegative
from ..metrics.activity import activity_sparsity, weight_sparsity
from ..metrics.layers import ACTIVATION_TYPES, WEIGHT_LAYER_TYPES, default_weight_getter, unit_dim
from .base import TRAINER_INTERVAL, Interval, Monitor

ForwardFn = Callable[[pl.LightningModule, Any], Any]


def default_forward(pl_module: pl.LightningModule, batch: Any) -> Any:
    """``pl_module(x)`` with ``x`` the first element of a ``(x, y, ...)`` batch."""
    inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
    return pl_module(inputs)


@contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Restore the global RNG state (CPU and ``device``) on exit: sampling never shifts the
    random stream training sees (dropout in a custom forward, a DataLoader iterator's seed)."""
    devices = [] if device.type == "cpu" else [device.index or 0]
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        yield


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """``module.eval()`` for the duration, then every submodule's own flag restored."""
    training = [m for m in module.modules() if m.training]
    module.eval()
    try:
        yield
    finally:
        for m in training:
            m.training = True


def _first_loader(loaders: Any) -> Any:
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    return loaders


def _output_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


class SparsityMonitor(Monitor):
    """Activity sparsity (zero fraction, Hoyer, Treves–Rolls population and lifetime
    sparseness) and weight sparsity per layer.

    Activity is measured on one fixed probe batch, in eval mode, under ``no_grad``, with
    forward hooks that exist only during that pass (zero cost between samples) and with
    the global RNG restored afterwards.  The probe is ``probe_batch`` if given, else the
    first batch of the first validation loader, else the first training batch.

    Logged keys, per selected module ``<layer>``: ``sparsity/<layer>/zero_fraction``,
    ``hoyer``, ``population_sparseness``, ``lifetime_sparseness``, ``dead_fraction``,
    ``nonfinite`` (activity), and for layers with a weight ``weight_sparsity``.

    Args:
        log_every_n_steps: Sample every this many optimizer steps; default ``"trainer"``:
            the Trainer's ``log_every_n_steps`` (None: epoch ends only).
        log_on_epoch_end: Also sample at every validation epoch end (or, without validation,
            training epoch end).
        layer_types: Module types to monitor; default: weight layers (Linear, Conv)
            and elementwise activations (ReLU, GELU, k-WTA, ...).
        name_pattern: Regular expression a module's name must contain (``re.search``).
        activity_tol: ``|x| <= activity_tol`` counts as a silent unit.
        weight_rel_threshold: ``|w| < weight_rel_threshold * max|w|`` counts as a zero weight.
        probe_batch: Fixed batch to measure on (same structure as a training batch).
        probe_size: Use at most this many samples of the probe batch.
        forward_fn: ``(pl_module, batch) -> output``; default ``pl_module(batch[0])``.
    """

    default_types = WEIGHT_LAYER_TYPES + ACTIVATION_TYPES

    def __init__(
        self,
        log_every_n_steps: Interval = TRAINER_INTERVAL,
        log_on_epoch_end: bool = True,
        layer_types: Sequence[type[nn.Module]] | None = None,
        name_pattern: str | None = None,
        activity_tol: float = 1e-6,
        weight_rel_threshold: float = 1e-2,
        probe_batch: Any = None,
        probe_size: int = 256,
        forward_fn: ForwardFn | None = None,
    ) -> None:
        super().__init__(log_every_n_steps, log_on_epoch_end, layer_types, name_pattern)
        check_nonnegative("activity_tol", activity_tol)
        check_fraction("weight_rel_threshold", weight_rel_threshold)
        check_min_int("probe_size", probe_size, 2, hint="lifetime sparseness needs two samples")
        self.activity_tol = activity_tol
        self.weight_rel_threshold = weight_rel_threshold
        self.probe_size = probe_size
        check_callable("forward_fn", forward_fn, optional=True)
        self.forward_fn = forward_fn or default_forward
        self.probe_batch = probe_batch
        self._probe: Any = None
        self._unit_dims: dict[str, int] = {}
        self._captured: dict[str, list[dict[str, float]]] = defaultdict(list)

    # -- selection ------------------------------------------------------------------------
    def select_layers(self, pl_module: nn.Module) -> list[tuple[str, nn.Module]]:
        layers = super().select_layers(pl_module)
        # an activation's units are those of the weight layer before it (features last
        # after a Linear, channels on dim 1 after a convolution)
        previous, dims = 1, {}
        for name, module in pl_module.named_modules():
            dim = unit_dim(module)
            if dim is not None and isinstance(module, WEIGHT_LAYER_TYPES):
                previous = dim
            dims[name] = previous if dim is None else dim
        self._unit_dims = {name: dims[name] for name, _ in layers}
        return layers

    # -- probe ----------------------------------------------------------------------------
    def _prepare(self, batch: Any, pl_module: pl.LightningModule) -> Any:
        def cut(t: Tensor) -> Tensor:
            return t[: self.probe_size].detach().clone() if t.ndim else t.detach().clone()

        return move_data_to_device(apply_to_collection(batch, Tensor, cut), pl_module.device)

    def _resolve_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``probe_batch``, else the first batch of the first validation loader (if any)."""
        if self._probe is not None:
            return
        if self.probe_batch is not None:
            self._probe = self._prepare(self.probe_batch, pl_module)
            return
        loader = _first_loader(trainer.val_dataloaders)
        if loader is not None:
            # creating a DataLoader iterator draws a seed from the global RNG
            with preserved_rng(torch.device("cpu")):
                batch = next(iter(loader), None)
            if batch is not None:
                self._probe = self._prepare(batch, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.is_global_zero:
            self._resolve_probe(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if self._probe is None and trainer.is_global_zero:
            self._probe = self._prepare(batch, pl_module)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.log_on_epoch_end and not trainer.sanity_checking and trainer.is_global_zero:
            self._resolve_probe(trainer, pl_module)  # also covers Trainer.validate()
            self.sample(trainer, pl_module)

    # -- measurement ----------------------------------------------------------------------
    def _hook(self, name: str, module: nn.Module, inputs: Any, output: Any) -> None:
        activity = _output_tensor(output)
        if activity is None or activity.ndim == 0:
            return
        dim = self._unit_dims.get(name, 1)
        if activity.ndim == 1 or not -activity.ndim <= dim < activity.ndim:
            dim = -1
        self._captured[name].append(activity_sparsity(activity, dim, self.activity_tol))

    def collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        if self._probe is None:
            return {}
        self._captured.clear()
        handles = [m.register_forward_hook(partial(self._hook, name)) for name, m in self.layers]
        precision = trainer.precision_plugin  # the dtype/autocast the model is trained in
        try:
            with (
                torch.no_grad(),
                preserved_rng(pl_module.device),
                evaluation_mode(pl_module),
                precision.val_step_context(),
            ):
                self.forward_fn(pl_module, precision.convert_input(self._probe))
        finally:
            for handle in handles:
                handle.remove()
        metrics: dict[str, float] = {}
        with torch.no_grad():
            for name, module in self.layers:
                # a module called several times per forward (a shared ReLU) averages its calls
                for key, values in _mean_dicts(self._captured.get(name, [])).items():
                    metrics[f"sparsity/{name}/{key}"] = values
                weight = default_weight_getter(module)
                if weight is not None:
                    metrics[f"sparsity/{name}/weight_sparsity"] = weight_sparsity(
                        weight, self.weight_rel_threshold
                    )
        self._captured.clear()
        return metrics


def _mean_dicts(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    out = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        out[key] = sum(values) if key == "nonfinite" else math.fsum(values) / len(values)
    return out


__all__ = ["SparsityMonitor"]
