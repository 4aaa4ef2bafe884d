"""Memory-lean training: apply a rule's update to the weights as it is formed, MeZO-style.

The usual protocol (rule → ``p.grad`` → torch optimizer) allocates one ``.grad`` buffer per
parameter: for a perturbation rule, whose forward passes keep no autograd graph, that
buffer is most of what training costs beyond inference.  With
``PerturbationModule(..., inplace_update=True)`` the training step installs an
:class:`InPlaceSGD` *update sink* (:func:`~bioplausible_lightning.rules.layers.redirected_updates`):
every estimate a rule writes through :mod:`bioplausible_lightning.rules.layers` is applied
to its parameter at once, ``p ← p − lr · g``, layer by layer, and no ``.grad`` is ever
allocated.  Outer-product updates are applied unformed (``addmm_`` / ``addcmul_`` into the
weight): low-rank weight perturbation (``Σ_k c_k U_k V_kᵀ / √r``, directions regenerated
from the seed) and node perturbation's ``δ xᵀ`` on unparametrised ``nn.Linear`` layers need
no weight-sized temporary at all; the other cases (dense directions, convolutions,
additive updates through a parametrisation) form one layer's update at a time.

What it supports, and what is refused with a ``ValueError`` (naming the parameter, the
value and what is allowed):

* the optimizer: plain SGD, ``torch.optim.SGD`` with ``momentum=0``, ``weight_decay=0``,
  ``nesterov=False``, ``maximize=False`` (any ``lr``, per parameter group; LR schedulers
  and the dopamine step-size adapter work, since the step reads the groups' ``lr``).  Its
  result equals ``torch.optim.SGD``'s normal path up to float rounding (bit for bit where a
  parameter's update is formed before it is applied, e.g. node perturbation's biases);
* rules that write gradients (node and weight perturbation, composites of them); not a rule
  with its own optimizer (the Hebbian rules);
* ``gradient_clip_val=None`` (no total norm exists before the last layer is updated) and
  ``accumulate_grad_batches=1`` (accumulating needs the buffers this avoids);
* several processes only where every process applies the same update without a gradient
  all-reduce: seed-shared :class:`~bioplausible_lightning.WeightPerturbation` (the default
  ``distributed="shared_seed"``).  Node perturbation and ``distributed="all_reduce"`` average
  full gradients and are refused under DDP.

Checkpoints are unchanged (plain SGD keeps no state; the rule's generator is saved as
always), so resuming is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .rules.layers import add_outer_products, owned_parameters, redirected_updates
from .rules.rule import LearningRule

#: SGD settings the in-place update implements, with the values it requires.
PLAIN_SGD = {"momentum": 0, "weight_decay": 0, "nesterov": False, "maximize": False}


class InPlaceSGD:
    """An update sink that applies every gradient term to its parameter: ``p ← p − lr · g``.

    The learning rate of each parameter is read from ``optimizer``'s parameter groups when
    the sink is made (once per training step); a parameter the optimizer does not hold is
    left unchanged, as its ``.grad`` would be by the optimizer.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._lr: dict[int, float] = {}
        for group in optimizer.param_groups:
            lr = float(group["lr"])
            for p in group["params"]:
                self._lr[id(p)] = lr

    @torch.no_grad()
    def add(self, param: Tensor, grad: Tensor) -> None:
        lr = self._lr.get(id(param))
        if lr is not None:  # what torch.optim.SGD does with a plain-SGD group
            param.add_(grad.view(param.shape).to(param.dtype), alpha=-lr)

    @torch.no_grad()
    def add_outer(self, param: Tensor, u: Tensor, v: Tensor) -> None:
        lr = self._lr.get(id(param))
        if lr is None:
            return
        if not param.is_contiguous():
            self.add(param, u @ v.T)
            return
        add_outer_products(param.view(param.shape[0], -1), u, v, alpha=-lr)  # no temporary


@contextmanager
def applied_in_place(optimizer: torch.optim.Optimizer, model: nn.Module) -> Iterator[None]:
    """Within the block, the rules' updates go straight into ``model``'s parameters through
    :class:`InPlaceSGD`; afterwards no parameter may hold a ``.grad`` (a rule that wrote one
    itself, bypassing :mod:`~bioplausible_lightning.rules.layers`, would otherwise be
    stepped by nobody)."""
    with redirected_updates(InPlaceSGD(optimizer)):
        yield
    written = [name for name, p in model.named_parameters() if p.grad is not None]
    if written:
        raise RuntimeError(
            f"inplace_update=True: the rule wrote .grad of {written} itself instead of "
            "through bioplausible_lightning.rules.layers (accumulate_weight_grad / "
            "accumulate_param_grad), so its update cannot be applied in place; use "
            "inplace_update=False with this rule."
        )


def check_module_config(
    rule: LearningRule,
    model: nn.Module,
    optimizer: Any,
    default_optimizer: Any,
    gradient_clip_val: float | None,
    accumulate_grad_batches: int,
) -> None:
    """Refuse, at construction, what ``inplace_update=True`` cannot implement."""
    if optimizer is default_optimizer:
        raise ValueError(
            "optimizer=default_optimizer (Adam) is invalid with inplace_update=True: the "
            "update is applied as plain SGD. Allowed: an optimizer callable building "
            "torch.optim.SGD without momentum or weight decay, e.g. "
            "optimizer=lambda params: torch.optim.SGD(params, lr=1e-2)."
        )
    if gradient_clip_val is not None:
        raise ValueError(
            f"gradient_clip_val={gradient_clip_val!r} is invalid with inplace_update=True: each "
            "layer is updated as soon as its estimate is formed, so there is no total norm "
            "to clip by. Allowed: None (or inplace_update=False)."
        )
    if accumulate_grad_batches != 1:
        raise ValueError(
            f"accumulate_grad_batches={accumulate_grad_batches!r} is invalid with "
            "inplace_update=True: accumulating over batches needs the .grad buffers it "
            "avoids. Allowed: 1 (or inplace_update=False)."
        )
    if rule.own_optimizers(model):
        raise ValueError(
            f"rule={type(rule).__name__} is invalid with inplace_update=True: it trains some "
            "layers with an optimizer of its own. Allowed: rules that write gradients "
            "(NodePerturbation, WeightPerturbation, composites of them)."
        )


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Refuse an optimizer other than plain ``torch.optim.SGD``."""
    if type(optimizer) is not torch.optim.SGD:
        raise ValueError(
            f"optimizer={type(optimizer).__name__} is invalid with inplace_update=True: the "
            "update is applied in place as plain SGD. Allowed: torch.optim.SGD with "
            f"{_plain()} (or inplace_update=False for any other optimizer)."
        )
    for index, group in enumerate(optimizer.param_groups):
        for key, allowed in PLAIN_SGD.items():
            if group.get(key, allowed) != allowed:
                raise ValueError(
                    f"{key}={group[key]!r} (torch.optim.SGD, parameter group {index}) is "
                    f"invalid with inplace_update=True: momentum and weight-decay state are "
                    f"what the in-place update leaves out. Allowed: {_plain()}."
                )


def check_distributed(rule: LearningRule, model: nn.Module, strategy: Any, world_size: int) -> None:
    """Refuse a multi-process run whose update differs between processes before an
    all-reduce of the gradients (which in-place updates have no buffers for)."""
    shared = {id(p) for p in rule.synchronized_parameters(model)}
    written = owned_parameters(rule.targets(model, warn_unowned=False))
    if written <= shared:
        return
    raise ValueError(
        f"inplace_update=True is invalid with rule={type(rule).__name__} under "
        f"strategy={type(strategy).__name__} with world_size={world_size}: its update depends "
        "on each process's data, so the processes must average full gradients before the "
        "step, which the in-place update has no buffers for. Allowed under several "
        "processes: WeightPerturbation(distributed='shared_seed') (the default: every "
        "process rebuilds the same update from averaged scalars); or inplace_update=False."
    )


def _plain() -> str:
    return ", ".join(f"{k}={v!r}" for k, v in PLAIN_SGD.items())


__all__ = [
    "InPlaceSGD",
    "applied_in_place",
    "check_distributed",
    "check_module_config",
    "check_optimizer",
]
