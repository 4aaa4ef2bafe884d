"""Watch weight distributions: lognormal or normal, how skewed, how signed."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from .._validation import check_bool, check_callable, check_min_int
from ..metrics.distribution import sample_values, weight_distribution
from ..metrics.layers import WEIGHT_LAYER_TYPES, WeightGetter, default_weight_getter
from .base import TRAINER_INTERVAL, Interval, Monitor, logger_step


class WeightDistributionMonitor(Monitor):
    """Per-layer summary of the weight distribution and a lognormal goodness-of-fit.

    Scalars go to every logger; TensorBoard additionally gets histograms of ``w`` and of
    ``log10|w|``.  At the end of training an optional PNG (``|w|`` histograms on log axes,
    start vs end of training, one panel per layer) is written to the first logger's
    ``log_dir`` (else ``trainer.default_root_dir``); its path is kept in
    :attr:`figure_path`.

    Logged keys, per layer ``<layer>``: ``weights/<layer>/log_abs_mean``, ``log_abs_std``,
    ``log_abs_skewness``, ``log_abs_kurtosis`` (excess; moments of ``log|w|``),
    ``positive_fraction``, ``positive_mass`` (share of the ``|w|`` mass that is positive),
    ``ks_lognormal`` and ``ks_normal`` (KS distance of ``|w|`` to the
    fitted lognormal / normal: the smaller fits better), ``nonfinite``.

    Args:
        log_every_n_steps: Sample every this many optimizer steps; default ``"trainer"``:
            the Trainer's ``log_every_n_steps`` (None: epoch ends only).
        log_on_epoch_end: Also sample at the end of every training epoch.
        layer_types: Module types to monitor; default Linear and Conv layers (every
            module when a ``weight_getter`` is given).
        name_pattern: Regular expression a module's name must contain (``re.search``).
        weight_getter: ``module -> weight | None`` for modules that store weights elsewhere.
        max_samples: Statistics and histograms use at most this many weights per layer
            (a fixed random subset), bounding the cost for large layers.
        histograms: Send histograms to loggers that support them (TensorBoard).
        save_figure: Write the start-vs-end PNG when training ends.
        figure_name: File name of that PNG.
    """

    default_types = WEIGHT_LAYER_TYPES

    def __init__(
        self,
        log_every_n_steps: Interval = TRAINER_INTERVAL,
        log_on_epoch_end: bool = False,
        layer_types: Sequence[type[nn.Module]] | None = None,
        name_pattern: str | None = None,
        weight_getter: WeightGetter | None = None,
        max_samples: int = 20_000,
        histograms: bool = True,
        save_figure: bool = False,
        figure_name: str = "weight_distributions.png",
    ) -> None:
        check_callable(
            "weight_getter", weight_getter, optional=True,
            hint="module -> Tensor | None; None reads `.weight` of known layers",
        )  # fmt: skip
        if layer_types is None and weight_getter is not None:
            layer_types = (nn.Module,)
        super().__init__(log_every_n_steps, log_on_epoch_end, layer_types, name_pattern)
        check_min_int("max_samples", max_samples, 2)
        check_bool("histograms", histograms)
        check_bool("save_figure", save_figure)
        plain_png = isinstance(figure_name, str) and figure_name.endswith(".png")
        if not plain_png or os.path.basename(figure_name) != figure_name:
            raise ValueError(
                f"figure_name={figure_name!r} is invalid: allowed is a plain file name ending "
                "in '.png'."
            )
        self.weight_getter = weight_getter or default_weight_getter
        self.max_samples = max_samples
        self.histograms = histograms
        self.save_figure = save_figure
        self.figure_name = figure_name
        self.figure_path: str | None = None
        self._first: dict[str, Tensor] = {}
        self._first_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "first": dict(self._first),
                "first_epoch": self._first_epoch}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._first = dict(state_dict.get("first", {}))
        self._first_epoch = state_dict.get("first_epoch", 0)

    def accepts(self, module: nn.Module) -> bool:
        with torch.no_grad():
            weight = self.weight_getter(module)
        return isinstance(weight, Tensor) and weight.ndim >= 1

    def _weights(self) -> dict[str, Tensor]:
        out = {}
        with torch.no_grad():
            for name, module in self.layers:
                weight = self.weight_getter(module)
                if weight is not None:
                    out[name] = weight.detach()
        return out

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.save_figure and trainer.is_global_zero and not self._first:  # kept on resume
            self._first = {
                name: sample_values(w, self.max_samples).abs().float()
                for name, w in self._weights().items()
            }
            self._first_epoch = trainer.current_epoch

    def collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        metrics: dict[str, float] = {}
        tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        step = logger_step(trainer)
        for name, weight in self._weights().items():
            for key, value in weight_distribution(weight, self.max_samples).items():
                metrics[f"weights/{name}/{key}"] = value
            if self.histograms and tensorboards:
                values = sample_values(weight, self.max_samples).float()
                magnitude = values.abs()
                log_abs = magnitude[magnitude > 0].log10()
                for logger in tensorboards:
                    writer = logger.experiment
                    if values.numel():
                        writer.add_histogram(f"weights/{name}", values, global_step=step)
                    if log_abs.numel():
                        writer.add_histogram(f"weights/{name}/log10_abs", log_abs, global_step=step)
        return metrics

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not (self.save_figure and trainer.is_global_zero and self._first):
            return
        last = {
            name: sample_values(w, self.max_samples).abs().float()
            for name, w in self._weights().items()
        }
        directory = _log_dir(trainer)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, self.figure_name)
        labels = (
            f"start (epoch {self._first_epoch})",
            f"end (after {trainer.current_epoch} epochs)",
        )
        save_histogram_figure(self._first, last, labels, path)
        self.figure_path = path


def _log_dir(trainer: pl.Trainer) -> str:
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            return str(log_dir)
    return str(trainer.default_root_dir)


def save_histogram_figure(
    first: dict[str, Tensor], last: dict[str, Tensor], labels: tuple[str, str], path: str
) -> None:
    """One panel per layer: histograms of ``|w|`` on log-spaced bins, ``first`` vs ``last``.

    Uses ``matplotlib.figure.Figure`` directly (no pyplot), so no global figure state or
    GUI backend is touched.
    """
    import numpy as np
    from matplotlib.figure import Figure

    names = [n for n in first if n in last]
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        a = first[name][first[name] > 0].numpy()
        b = last[name][last[name] > 0].numpy()
        both = np.concatenate([a, b])
        if both.size == 0:
            ax.set_title(f"{name} (all zero)")
            continue
        lo, hi = both.min(), both.max()
        bins = np.logspace(np.log10(lo), np.log10(hi if hi > lo else lo * 10), 60)
        for data, label in ((a, labels[0]), (b, labels[1])):
            if data.size:
                # fraction per log-spaced bin: the shape a log axis shows undistorted
                weights = np.full(data.size, 1.0 / data.size)
                ax.hist(data, bins=bins, weights=weights, histtype="step", label=label)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("|w|")
        ax.set_ylabel("fraction of weights")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    if names:
        axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=100)


__all__ = ["WeightDistributionMonitor"]
