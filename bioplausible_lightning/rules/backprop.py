"""Backpropagation as a learning rule: the baseline, and a part for composite rules.

The gradient of the batch's mean loss comes from ``backward()``.  :meth:`Backprop.estimate`
runs the forward pass with autograd; the backward runs in :meth:`Backprop.finish`, which the
module calls once *every* process found its loss finite: under DDP a backward on some
processes only would wait forever for the others' gradients, and Lightning's DDP
all-reduces the gradients inside it (the module hands ``manual_backward`` over as
``backward``).  ``BackpropModule(model)`` is the module with ``rule=Backprop()``.

With ``layers=`` it trains a layer group only (autograd reaches only those parameters, by
``backward(inputs=...)``), so that a :class:`~bioplausible_lightning.CompositeRule` can give
the other layers to other rules, e.g. Hebbian hidden layers and a backprop-trained readout.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from fnmatch import fnmatch
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_names
from ..losses import PerSampleLoss
from .rule import LearningRule, PerModel, RuleOutput

Backward = Callable[..., Any]


def layer_name(param_name: str) -> str:
    """The module a parameter belongs to, as the rules name layers: ``"fc.weight"`` and
    ``"fc.parametrizations.weight.original"`` are both ``"fc"``'s; a parameter of the model
    itself is ``""``'s."""
    owner = param_name.rsplit(".", 1)[0] if "." in param_name else ""
    if ".parametrizations." in f".{owner}.":
        owner = f".{owner}".split(".parametrizations.", 1)[0][1:]
    return owner


class Backprop(LearningRule):
    """The gradient of the batch's mean loss by autograd (the baseline of every comparison).

    Args:
        layers: Optional ``fnmatch`` patterns of the modules whose parameters it trains (a
            module's name as in ``model.named_modules()``; a parametrised weight belongs to
            its layer).  Default: every trainable parameter of the model, exactly like
            ``loss.backward()``.  With a group, autograd reaches only the group's
            parameters and the others are left to other rules of a
            :class:`~bioplausible_lightning.CompositeRule`.  A group trains on one process
            only: Lightning's DDP all-reduces inside ``backward()`` and waits for the
            gradient of every parameter, which a group's backward leaves out.
    """

    @property
    def autograd_only(self) -> bool:
        """Whole-model backprop: the module calls a ``torch.compile``'d model as compiled and
        lets any Lightning strategy handle the gradients.  A layer group (``layers=``) is
        named and trained like the other rules' layers, on the eager module."""
        return self.layers is None

    def __init__(self, layers: Sequence[str] | None = None) -> None:
        self.layers = check_names("layers", layers)
        self._pending: tuple[Tensor, list[Tensor] | None] | None = None
        self._targets: PerModel[list[tuple[str, nn.Module]]] = PerModel()

    def targets(self, model: nn.Module, warn_unowned: bool = True) -> list[tuple[str, nn.Module]]:
        """Every module that owns a trainable parameter (matching ``layers``)."""
        targets = self._targets.get(model)
        if targets is not None:
            return targets
        names: dict[str, None] = {}
        left = []
        for pname, p in model.named_parameters():
            if not p.requires_grad:
                continue
            name = layer_name(pname)
            if self.layers is None or any(fnmatch(name, pattern) for pattern in self.layers):
                names[name] = None
            else:
                left.append(pname)
        if not names:
            raise ValueError(
                "Backprop: no trainable parameter to train"
                + (f" in modules matching layers={list(self.layers)!r}" if self.layers else "")
                + " (all requires_grad=False, or no module name matches)."
            )
        if left and warn_unowned:
            warnings.warn(
                f"Backprop: these trainable parameters are outside layers={self.layers!r} and "
                f"will not be updated: {left}",
                stacklevel=3,
            )
        return self._targets.set(model, [(name, model.get_submodule(name)) for name in names])

    def trained_parameters(self, model: nn.Module) -> list[Tensor]:
        """The parameters it trains: those of :meth:`targets`."""
        names = {name for name, _ in self.targets(model)}
        return [p for pname, p in model.named_parameters()
                if p.requires_grad and layer_name(pname) in names]  # fmt: skip

    def estimate(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        inputs: Tensor,
        targets: Tensor,
        grad_scale: float = 1.0,
    ) -> RuleOutput:
        """The forward pass; ``grad_scale`` × the loss waits for :meth:`finish`."""
        self._pending = None
        self._check_distributed()
        group = None if self.layers is None else self.trained_parameters(model)
        with torch.enable_grad():
            logits = model(inputs)
            loss = loss_fn(logits, targets).mean()
            finite = bool(torch.isfinite(loss))
            if finite:
                self._pending = (loss * grad_scale, group)
        return RuleOutput(loss.detach(), logits.detach(), finite)

    def finish(self, backward: Backward = torch.autograd.backward) -> None:
        """``backward(grad_scale × loss)`` (with ``inputs=`` the group's parameters)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        loss, group = pending
        if group is None:
            backward(loss)
        else:
            backward(loss, inputs=group)

    def discard(self) -> None:
        self._pending = None

    def set_distributed(self, rank: int, world_size: int) -> None:
        super().set_distributed(rank, world_size)
        self._check_distributed()

    def _check_distributed(self) -> None:
        if self._world_size > 1 and self.layers is not None:
            raise ValueError(
                f"Backprop(layers={self.layers!r}) cannot train under multi-process training "
                f"(world_size={self._world_size}): Lightning's DDP all-reduces the gradients "
                "inside backward() and waits for those of every parameter, but a layer "
                "group's backward reaches only its own. Train on one device, or give Backprop "
                "the whole model (layers=None)."
            )

    def synchronized_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Every parameter it trains: Lightning's DDP has averaged their ``.grad`` inside
        ``backward()`` already, so the module does not all-reduce them again."""
        if self.layers is None:
            return [p for p in model.parameters() if p.requires_grad]
        return self.trained_parameters(model)
