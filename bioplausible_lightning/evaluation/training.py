"""Train one LightningModule quietly for a fixed budget: the unit every protocol repeats.

Budgets are fixed (epochs or steps), never early-stopped, so that the rule and backprop get
exactly the same number of updates on exactly the same batches.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import nn

from .._validation import check_min_int

#: Wraps a freshly built model into a LightningModule (the rule or the backprop baseline).
ModuleFactory = Callable[[nn.Module], L.LightningModule]


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-fit banners and known-harmless warnings (tens of fits per run)."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*lr scheduler dict contains the key.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def fit(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    max_epochs: int | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    validate: bool = False,
    accelerator: str = "auto",
) -> L.Trainer:
    """Fit ``module`` for exactly ``max_epochs`` epochs or ``max_steps`` optimizer steps.

    No logger, no checkpoints, no progress bar; validation only when ``validate``.
    """
    if (max_epochs is None) == (max_steps is None):
        raise ValueError(
            f"max_epochs={max_epochs!r}, max_steps={max_steps!r} is invalid: give exactly one."
        )
    for name, value in (("max_epochs", max_epochs), ("max_steps", max_steps)):
        check_min_int(name, value, optional=True)
    with quiet_lightning():
        L.seed_everything(seed, workers=True, verbose=False)
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=1,
            max_epochs=max_epochs if max_epochs is not None else -1,
            max_steps=max_steps if max_steps is not None else -1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=1.0 if validate else 0,
            callbacks=list(callbacks),
        )
        trainer.fit(module, datamodule=datamodule)
    return trainer


__all__ = ["ModuleFactory", "fit", "quiet_lightning"]
