"""The protocol every learning rule follows: a rule is a *gradient source*.

A rule looks at one mini-batch, writes an update into ``p.grad`` of the parameters it
trains (sign convention: the optimizer *descends*, so a Hebbian increase ``Δw`` is written
as ``p.grad = -Δw``) and reports what it measured.  It never calls ``backward()``.  The
module then clips and steps the optimizers, so schedulers, clipping, accumulation and
checkpointing work the same for every rule.  Adding a rule means one new file with a
subclass of :class:`LearningRule`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torch import Tensor, nn
from torch.optim import Optimizer

from ..losses import PerSampleLoss

OptimizerFactory = Callable[[Iterable[Any]], Optimizer]
T = TypeVar("T")


class PerModel(Generic[T]):
    """One value cached for one model, by a weak reference to the model itself.

    ``id(model)`` is not enough: a new model can get the id of a freed one, and the rule would
    then train the old model's layers.
    """

    def __init__(self) -> None:
        self._model: weakref.ref[nn.Module] | None = None
        self._value: T | None = None

    def get(self, model: nn.Module) -> T | None:
        """The cached value if it was computed for this very ``model``, else ``None``."""
        return self._value if self._model is not None and self._model() is model else None

    def set(self, model: nn.Module, value: T) -> T:
        self._model, self._value = weakref.ref(model), value
        return value

    def clear(self) -> None:
        self._model = self._value = None


@dataclass
class RuleOutput:
    """What one estimate measured.

    Attributes:
        loss: Mean loss of the batch (the average over perturbed replicas, which equals the
            unperturbed loss up to O(σ²) for antithetic pairs, or the clean replica's loss).
        logits: Logits for the batch, ``(B, C)`` (averaged over replicas likewise).
        finite: False when some replica's loss was not finite (or the batch was empty); then
            no ``.grad`` was written.
        rpe: The reward prediction error of each direction, ``(K,)``, or None for a rule that
            does not measure one (see :meth:`PerturbationRule.reward_prediction_error`).
    """

    loss: Tensor
    logits: Tensor
    finite: bool
    rpe: Tensor | None = None


@dataclass
class OwnOptimizer:
    """Parameters a rule steps with an optimizer of its own, instead of the module's.

    A Hebbian update is not a gradient: its size is set by the rule's plasticity rate, and an
    adaptive optimizer such as Adam would rescale every weight's update to the same size
    (turning the slow decay of unused weights into a random walk).  Such rules name the
    parameters and the optimizer that keeps their update as written.
    """

    params: list[dict[str, Any]]
    factory: OptimizerFactory


class LearningRule:
    """Base class of every rule; subclasses implement :meth:`estimate` and :meth:`targets`."""

    def targets(self, model: nn.Module, warn_unowned: bool = True) -> list[tuple[str, nn.Module]]:
        """``(name, layer)`` pairs this rule trains in ``model``; raises if there are none."""
        raise NotImplementedError

    def estimate(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        inputs: Tensor,
        targets: Tensor,
        grad_scale: float = 1.0,
    ) -> RuleOutput:
        """Add ``grad_scale`` × the rule's update (as a descent direction) to ``p.grad``."""
        raise NotImplementedError

    def own_optimizers(self, model: nn.Module) -> list[OwnOptimizer]:
        """Parameter groups the rule steps itself (default: none, the module's optimizer)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """State that makes a resumed run bit-identical (RNG, step counters, thresholds)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
