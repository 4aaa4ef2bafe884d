"""What the three monitors share: when to sample, which layers, where results go.

A monitor samples every ``log_every_n_steps`` optimizer steps (by default the Trainer's own
``log_every_n_steps``) and, with ``log_on_epoch_end``, at the end of every training epoch, on
rank zero only: at most one sample per optimizer step, since the weights change only there
(gradient accumulation included).  A fit that ends before its first sample (fewer steps than
the interval) is sampled once at its end, so no monitor ends a fit empty-handed.  Results go
to every logger the Trainer has (Lightning's ``log_metrics``, as ``LearningRateMonitor``
does) and into :attr:`Monitor.history`, so a Trainer without a logger loses nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn

from .._validation import check_bool
from ..metrics.layers import type_names


def logger_step(trainer: pl.Trainer) -> int:
    """The step Lightning's own ``self.log`` uses, so monitor rows line up with the loss."""
    loop = getattr(trainer.fit_loop, "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step))


#: Default interval: the Trainer's ``log_every_n_steps``, read when training starts.
TRAINER_INTERVAL = "trainer"
Interval = int | None | Literal["trainer"]


def check_interval(log_every_n_steps: Interval) -> Interval:
    if log_every_n_steps is not None and log_every_n_steps != TRAINER_INTERVAL and (
        isinstance(log_every_n_steps, bool)
        or not isinstance(log_every_n_steps, int)
        or log_every_n_steps < 1
    ):
        raise ValueError(
            f"log_every_n_steps={log_every_n_steps!r} is invalid: allowed is an int >= 1, "
            f"{TRAINER_INTERVAL!r} for the Trainer's log_every_n_steps, or None to sample "
            "only at epoch ends."
        )
    return log_every_n_steps


def check_types(layer_types: Sequence[type] | None, default: tuple[type, ...]) -> tuple[type, ...]:
    if layer_types is None:
        return default
    types = tuple(layer_types) if isinstance(layer_types, (list, tuple)) else (layer_types,)
    if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise ValueError(
            f"layer_types={layer_types!r} is invalid: allowed is a non-empty sequence of "
            "nn.Module subclasses (e.g. (nn.Linear, nn.Conv2d)), or None for the default."
        )
    return types


def check_pattern(name_pattern: str | None) -> re.Pattern[str] | None:
    if name_pattern is None:
        return None
    try:
        return re.compile(name_pattern)
    except (re.error, TypeError) as err:
        raise ValueError(
            f"name_pattern={name_pattern!r} is invalid: allowed is a regular expression "
            f"(matched with re.search against module names) or None ({err})."
        ) from None


class Monitor(Callback):
    """Base class: interval, layer selection, logging and history.

    Subclasses implement :meth:`collect`, returning ``{key: value}`` for one sample.

    Attributes:
        history: One dict per sample: ``step``, ``epoch`` and every logged key.
        latest: The most recent value of every key logged so far.

    Both are saved in checkpoints (:meth:`state_dict`), so a resumed run continues them.
    """

    #: Types selected when the user passes ``layer_types=None``.
    default_types: tuple[type[nn.Module], ...] = ()

    def __init__(
        self,
        log_every_n_steps: Interval,
        log_on_epoch_end: bool,
        layer_types: Sequence[type[nn.Module]] | None,
        name_pattern: str | None,
    ) -> None:
        self.log_every_n_steps = check_interval(log_every_n_steps)
        check_bool("log_on_epoch_end", log_on_epoch_end)
        self.log_on_epoch_end = log_on_epoch_end
        self.layer_types = check_types(layer_types, self.default_types)
        self.name_pattern = check_pattern(name_pattern)
        self.history: list[dict[str, float]] = []
        self.latest: dict[str, float] = {}
        self.layers: list[tuple[str, nn.Module]] = []
        self._interval: int | None = None if log_every_n_steps == TRAINER_INTERVAL else (
            log_every_n_steps
        )
        self._last_sample: int | None = None  # global_step (optimizer steps) of the last one
        self._sampled_this_fit = False
        self._warned = False

    # -- selection ------------------------------------------------------------------------
    def accepts(self, module: nn.Module) -> bool:
        """Extra per-module condition (e.g. "has a weight"); all by default."""
        return True

    def select_layers(self, pl_module: nn.Module) -> list[tuple[str, nn.Module]]:
        """Named submodules matching ``layer_types``, ``name_pattern`` and :meth:`accepts`."""
        return [
            (name, module)
            for name, module in pl_module.named_modules()
            if name
            and isinstance(module, self.layer_types)
            and (self.name_pattern is None or self.name_pattern.search(name))
            and self.accepts(module)
        ]

    def searched_for(self) -> str:
        pattern = (
            "any name"
            if self.name_pattern is None
            else f"names matching {self.name_pattern.pattern!r}"
        )
        return f"modules of type ({type_names(self.layer_types)}) with {pattern}"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.log_every_n_steps == TRAINER_INTERVAL:
            self._interval = trainer.log_every_n_steps
        self.layers = self.select_layers(pl_module)
        if not self.layers and not self._warned:
            self._warned = True
            rank_zero_warn(
                f"{type(self).__name__} found no layer to monitor in {type(pl_module).__name__}: "
                f"searched for {self.searched_for()}. Pass `layer_types`/`name_pattern`"
                " (or `weight_getter`) matching your model; nothing will be logged.",
                category=UserWarning,
            )

    # -- when -----------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        n, step = self._interval, trainer.global_step
        if n is not None and step > 0 and step % n == 0 and step != self._last_sample:
            self.sample(trainer, pl_module)  # an optimizer step just happened

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sampled_this_fit = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.log_on_epoch_end:
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._sampled_this_fit:  # a run shorter than the interval: one sample at the end
            self.sample(trainer, pl_module)

    def sample(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Collect and log now, unless on another rank, nothing is selected, or the weights
        have not changed since the last sample."""
        if not trainer.is_global_zero or not self.layers:
            return
        if self._last_sample == trainer.global_step:  # no optimizer step since
            return
        metrics = self.collect(trainer, pl_module)
        if metrics:
            self._last_sample = trainer.global_step
            self._sampled_this_fit = True
            self.record(trainer, metrics)

    def collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        raise NotImplementedError

    # -- where ----------------------------------------------------------------------------
    def record(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        """Keep ``metrics`` in :attr:`history` and send them to every logger."""
        step = logger_step(trainer)
        self.history.append({"step": step, "epoch": trainer.current_epoch, **metrics})
        self.latest.update(metrics)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def values(self, key: str) -> list[float]:
        """Every recorded value of ``key``, in order (for plots and tests)."""
        return [row[key] for row in self.history if key in row]

    # -- checkpoints (Lightning's Callback state API) -------------------------------------
    @property
    def state_key(self) -> str:
        pattern = None if self.name_pattern is None else self.name_pattern.pattern
        return self._generate_state_key(
            log_every_n_steps=self.log_every_n_steps, name_pattern=pattern,
            layer_types=type_names(self.layer_types),
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "latest": dict(self.latest),
                "last_sample": self._last_sample}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.latest = dict(state_dict.get("latest", {}))
        self._last_sample = state_dict.get("last_sample")


# the check_* validators, logger_step and TRAINER_INTERVAL are the monitors' own helpers
__all__ = ["Monitor"]
