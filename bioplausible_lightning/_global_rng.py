"""The global torch RNG in checkpoints, so that a model drawing from it (``Dropout``) resumes
exactly: Lightning does not checkpoint it.

The state saved with a checkpoint is the one the uninterrupted run had when the checkpoint was
written, and it must be put back where that run stood then: a resumed fit creates a new
DataLoader iterator, and creating one draws from the global RNG.  So the module sets the state
when the checkpoint is loaded (before that iterator: right for a checkpoint written at or
after an epoch's last batch, after which the uninterrupted run made the next epoch's
iterator) and, for a fit resumed inside an epoch (whose iterator the uninterrupted run had
already made), again at ``on_train_start``, once the iterator exists
(:func:`resumed_inside_epoch`).  Which case a checkpoint is comes from the fit loop's
restart state, so the rule is tested for every kind of checkpoint Lightning writes (after a
batch, at the epoch's last batch, at a validation mid-epoch or at the epoch end).  A run
that is never interrupted is unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn


def global_rng_state() -> dict[str, Any]:
    """The CPU generator's state and, where CUDA is in use, the current device's (under DDP
    each process draws on its own device, and the checkpoint is rank 0's)."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Put back a :func:`global_rng_state`, the CUDA state onto the current device."""
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if cuda is None:
        return
    if torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
    else:
        rank_zero_warn(
            "The checkpoint holds a CUDA RNG state but no GPU is visible: it is not "
            "restored, so CUDA random draws differ from the uninterrupted run's.",
            category=UserWarning,
        )


def resumed_inside_epoch(trainer: Any) -> bool:
    """Whether the fit resumes inside an epoch that Lightning's loop has not counted as
    completed: its DataLoader iterator, made on resuming, stands for one the uninterrupted run
    had made before the checkpoint.  (When the loop counts the resumed epoch as completed, a
    checkpoint written after its last batch, it goes on with that iterator as the next
    epoch's, as the uninterrupted run made one after the checkpoint.)"""
    loop = trainer.fit_loop
    epochs = loop.epoch_progress.total
    return bool(loop.restarted_mid_epoch and epochs.completed < epochs.started)
