"""A reward-prediction-error (RPE) adaptive step size for perturbation learning.

After *Dopamine-driven synaptic credit assignment in neural networks* (Nambusubramaniyan,
Safavi, Guru, Knoblauch, 2025): the learning rate of weight perturbation is adjusted by
the reward prediction error between the outcome expected of the perturbed model and the
one it actually got.  Every rule here measures that error for free (it is made of the loss
differences the estimate already needs, see
:meth:`~bioplausible_lightning.PerturbationRule.reward_prediction_error`), so the step size
is a small, optimizer-agnostic object, shaped like an LR scheduler, that
:class:`~bioplausible_lightning.PerturbationModule` steps with the rule's RPE after every
optimizer step::

    v_t = β v_{t−1} + (1 − β) · mean_k rpe_k²          (bias-corrected: v̂_t = v_t / (1 − β^t))
    s_t = clip((v̂_ref / v̂_t)^{γ/2}, min_scale, max_scale),   v̂_ref = v̂ at step ``warmup``
    lr_t = (the optimizer's / scheduler's lr) × s_t

Direction: the step size **grows when the RPE shrinks** below its early level (the
perturbations stop "surprising": a plateau, where a fixed step crawls) and **shrinks when
it grows** (steep, fast-changing loss: a fixed step overshoots).  Because
``rpe_k ≈ σ ∇L·z_k`` and ``E[(∇L·z)²] = ‖∇L‖²`` for unit-variance ``z``, ``√v̂`` tracks σ‖∇L‖
and, with ``γ = 1``, the update becomes a *normalised* gradient step of roughly constant
length — RPE-driven, measured without any extra forward pass.  ``γ < 1`` normalises
partially.

The scale is applied multiplicatively to each parameter group's ``lr`` (``lr ← lr · s_t /
s_{t−1}``), so it composes with any torch optimizer and with chainable LR schedulers
(StepLR, ExponentialLR, MultiStepLR, CosineAnnealingLR, ReduceLROnPlateau, ...) that also
multiply the current ``lr``.  Its state is a handful of Python floats, saved in checkpoints
by the module, so resumed runs are bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._validation import check_finite, check_in_range, check_instance, check_min, check_min_int


class DopamineStepSize:
    """Scale an optimizer's learning rate by the rule's reward prediction error.

    Args:
        optimizer: Any ``torch.optim.Optimizer`` (its groups' ``lr`` are scaled).
        beta: EMA factor of the mean-square RPE, in [0, 1).
        gamma: Strength, ``s = (v̂_ref / v̂)^{γ/2}``: 1 normalises the step fully, 0.5 half;
            a negative value reverses the direction (the step grows *with* the RPE, a
            "dopamine burst" reading), kept for ablations.
        warmup: Optimizer steps before adapting (>= 1); the RPE level at the end of the
            warm-up is the reference at which the scale is 1.
        min_scale: Lower bound of the scale, in (0, 1].
        max_scale: Upper bound of the scale (>= 1).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        beta: float = 0.9,
        gamma: float = 1.0,
        warmup: int = 5,
        min_scale: float = 0.1,
        max_scale: float = 10.0,
    ) -> None:
        check_instance("optimizer", optimizer, Optimizer)
        check_in_range("beta", beta, 0.0, 1.0, high_open=True)
        check_finite("gamma", gamma, nonzero=True)
        check_min_int("warmup", warmup, 1)
        check_in_range("min_scale", min_scale, 0.0, 1.0, low_open=True)
        check_min("max_scale", max_scale, 1, finite=False)
        self.optimizer = optimizer
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.warmup = warmup
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.num_steps = 0
        self.mean_square = 0.0  # the (biased) EMA v_t
        self.reference: float | None = None  # v̂ at the end of the warm-up
        self.scale = 1.0
        self.last_rpe = math.nan

    @property
    def rms(self) -> float:
        """Bias-corrected running RMS of the RPE, ``√v̂`` (NaN before the first step)."""
        if self.num_steps == 0:
            return math.nan
        return math.sqrt(self.mean_square / (1.0 - self.beta**self.num_steps))

    def step(self, rpe: Tensor | float) -> float:
        """Take one step's RPE (a scalar or the per-direction ``(K,)`` tensor); return the scale.

        A non-finite RPE is ignored (the scale and the running statistics stay as they were).
        """
        rpe = torch.as_tensor(rpe, dtype=torch.float64).detach().flatten()
        if rpe.numel() == 0 or not bool(torch.isfinite(rpe).all()):
            return self.scale
        mean_square = float(rpe.pow(2).mean())
        self.last_rpe = float(rpe.mean())
        self.num_steps += 1
        self.mean_square = self.beta * self.mean_square + (1.0 - self.beta) * mean_square
        current = self.mean_square / (1.0 - self.beta**self.num_steps)
        if self.num_steps == self.warmup:
            self.reference = current
        if self.reference is None or current <= 0.0:
            return self.scale
        ratio = (self.reference / current) ** (self.gamma / 2)
        self._set_scale(min(self.max_scale, max(self.min_scale, ratio)))
        return self.scale

    def _set_scale(self, scale: float) -> None:
        factor = scale / self.scale
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * factor
        self.scale = scale

    def get_last_lr(self) -> list[float]:
        """The current (scaled) ``lr`` of every parameter group, like an LR scheduler's."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer (whose scaled ``lr`` is in its own state)."""
        return {k: v for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vars(self).update(state)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(beta={self.beta}, gamma={self.gamma}, warmup={self.warmup}, "
            f"min_scale={self.min_scale}, max_scale={self.max_scale})"
        )


StepSizeAdapterCallable = Callable[[Optimizer], DopamineStepSize]


class AdapterRunner:
    """What :class:`~bioplausible_lightning.PerturbationModule` keeps for its adapter:
    builds it from the factory once the optimizer exists, collects the RPE of every batch,
    steps the adapter once per optimizer step (with the RPEs of all the batches that step
    accumulated), and carries its state through checkpoints (restored before or after
    ``configure_optimizers``, whichever comes first)."""

    def __init__(self, factory: StepSizeAdapterCallable | None) -> None:
        self.factory = factory
        self.adapter: DopamineStepSize | None = None
        self._pending: dict[str, Any] | None = None
        self._rpes: list[Tensor] = []
        self._stepped_at = 0

    def build(self, optimizer: Optimizer) -> None:
        if self.factory is None:
            return
        self.adapter = self.factory(optimizer)
        if self._pending is not None:
            self.adapter.load_state_dict(self._pending)

    def start(self, global_step: int) -> None:
        self._rpes, self._stepped_at = [], global_step

    def record(self, rpe: Tensor | None) -> None:
        if rpe is not None:
            self._rpes.append(rpe.detach())

    def after_batch(self, global_step: int) -> tuple[Tensor | None, float | None]:
        """``(this batch's mean RPE or None, the adapter's new scale or None)``."""
        if not self._rpes:
            return None, None
        last = self._rpes[-1].mean()
        if global_step == self._stepped_at:  # accumulating: no optimizer step yet
            return last, None
        self._stepped_at = global_step
        rpe, self._rpes = torch.cat(self._rpes), []
        return last, None if self.adapter is None else self.adapter.step(rpe)

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.adapter is None else self.adapter.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self._pending = state
        if self.adapter is not None and state is not None:
            self.adapter.load_state_dict(state)
