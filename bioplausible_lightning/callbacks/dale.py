"""Watch whether presynaptic units keep one sign (Dale's law) during training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from .._validation import check_bool, check_callable, check_nonnegative
from ..metrics.dale import count_sign_flips, dale_statistics, sign_pattern
from ..metrics.layers import WEIGHT_LAYER_TYPES, WeightGetter, default_weight_getter
from ..metrics.layers import presynaptic_layout as _layout
from .base import TRAINER_INTERVAL, Interval, Monitor


class DaleLawMonitor(Monitor):
    """Sign consistency, E/I ratio and sign flips of every weight tensor.

    Reads weights only (no forward pass): ``nn.Linear`` / ``nn.Conv*`` through ``.weight``
    (the effective weight of a parametrised layer, e.g. ``sign ⊙ exp(θ)`` under Dale's
    law), anything else through
    ``weight_getter``.  To count sign flips it keeps one ``int8`` sign per weight (on the
    weight's device) from the previous sample; pass ``track_sign_flips=False`` to save it.

    Logged keys, per layer ``<layer>``: ``dale/<layer>/sign_consistency`` (fraction of
    presynaptic units whose non-zero outgoing weights share one sign), ``ei_ratio``
    (excitatory / inhibitory units), ``excitatory_fraction``, ``sign_flips`` (weights whose
    sign reversed since the previous sample), ``nonfinite``; overall: ``dale/sign_consistency``
    (all units pooled), ``dale/sign_flips``, ``dale/nonfinite``.

    Args:
        log_every_n_steps: Sample every this many optimizer steps; default ``"trainer"``:
            the Trainer's ``log_every_n_steps`` (None: epoch ends only).
        log_on_epoch_end: Also sample at the end of every training epoch.
        layer_types: Module types to monitor; default Linear and Conv layers (every
            module when a ``weight_getter`` is given).
        name_pattern: Regular expression a module's name must contain (``re.search``).
        weight_getter: ``module -> weight | None`` in torch layout ``(out, in, *kernel)``, for
            modules that store their weight elsewhere; ``None`` skips the module.
        tol: Weights with ``|w| <= tol`` count as zero (absent synapses).
        track_sign_flips: Keep the previous sign pattern and log ``sign_flips``.
    """

    default_types = WEIGHT_LAYER_TYPES

    def __init__(
        self,
        log_every_n_steps: Interval = TRAINER_INTERVAL,
        log_on_epoch_end: bool = False,
        layer_types: Sequence[type[nn.Module]] | None = None,
        name_pattern: str | None = None,
        weight_getter: WeightGetter | None = None,
        tol: float = 0.0,
        track_sign_flips: bool = True,
    ) -> None:
        check_callable(
            "weight_getter", weight_getter, optional=True,
            hint="module -> Tensor | None; None reads `.weight` of known layers",
        )  # fmt: skip
        if layer_types is None and weight_getter is not None:
            layer_types = (nn.Module,)
        super().__init__(log_every_n_steps, log_on_epoch_end, layer_types, name_pattern)
        check_nonnegative("tol", tol)
        check_bool("track_sign_flips", track_sign_flips)
        self.weight_getter = weight_getter or default_weight_getter
        self.tol = tol
        self.track_sign_flips = track_sign_flips
        self._patterns: dict[str, Tensor] = {}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "patterns": dict(self._patterns)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._patterns = dict(state_dict.get("patterns", {}))

    def accepts(self, module: nn.Module) -> bool:
        with torch.no_grad():
            weight = self.weight_getter(module)
        return isinstance(weight, Tensor) and weight.ndim >= 2

    def searched_for(self) -> str:
        getter = getattr(self.weight_getter, "__name__", repr(self.weight_getter))
        return f"{super().searched_for()} whose weight_getter ({getter}) returns a >= 2-D tensor"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # the first sample then reports the flips since the start of training
        if self.track_sign_flips and trainer.is_global_zero:
            with torch.no_grad():
                for name, module in self.layers:
                    weight = self.weight_getter(module)
                    if weight is not None:
                        self._patterns.setdefault(name, sign_pattern(weight))

    def collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        metrics: dict[str, float] = {}
        consistent = units = flips = nonfinite = 0.0
        have_flips = False
        with torch.no_grad():
            for name, module in self.layers:
                weight = self.weight_getter(module)
                if weight is None:
                    continue
                dim, groups = _layout(module)
                stats = dale_statistics(weight, dim, groups, self.tol)
                prefix = f"dale/{name}/"
                for key in ("sign_consistency", "ei_ratio", "excitatory_fraction", "nonfinite"):
                    metrics[prefix + key] = stats[key]
                consistent += stats["consistent_units"]
                units += stats["units"]
                nonfinite += stats["nonfinite"]
                if self.track_sign_flips:
                    pattern = sign_pattern(weight)
                    previous = self._patterns.get(name)
                    if previous is not None and previous.shape == pattern.shape:
                        n = float(count_sign_flips(previous, pattern))
                        metrics[prefix + "sign_flips"] = n
                        flips += n
                        have_flips = True
                    self._patterns[name] = pattern
        if units:
            metrics["dale/sign_consistency"] = consistent / units
            metrics["dale/nonfinite"] = nonfinite
        if have_flips:
            metrics["dale/sign_flips"] = flips
        return metrics


__all__ = ["DaleLawMonitor"]
