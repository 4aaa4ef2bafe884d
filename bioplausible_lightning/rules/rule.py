"""The protocol every learning rule follows: a rule is a *gradient source*.

A rule looks at one mini-batch, writes an update into ``p.grad`` of the parameters it
trains (sign convention: the optimizer *descends*, so a Hebbian increase ``Δw`` is written
as ``p.grad = -Δw``) and reports what it measured.  The backprop-free rules never call
``backward()``; :class:`~bioplausible_lightning.rules.Backprop` is the one rule that does,
in :meth:`LearningRule.finish`.  The module then clips and steps the optimizers, so
schedulers, clipping, accumulation and checkpointing work the same for every rule.  Adding
a rule means one new file with a subclass of :class:`LearningRule`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torch import Tensor, nn
from torch.optim import Optimizer

from .._validation import check_int
from ..distributed import Reducer, floating_tensors
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

    # A weak reference cannot be pickled, and a cache is not state: a copy (``torch.save``,
    # ``copy.deepcopy``, the process start of ``ddp_spawn``) starts empty and recomputes it
    # for the model it is used with, instead of pointing at the original's model.
    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
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
    """Base class of every rule; subclasses implement :meth:`estimate` and :meth:`targets`.

    Multi-process training (DDP) adds three hooks, all with defaults that are right for a
    rule whose update is a function of its process's data: :meth:`set_distributed` (the
    module tells the rule its rank), :meth:`synchronize` (make the rule's own state
    identical on every process after each batch) and :meth:`synchronized_parameters`
    (parameters whose ``.grad`` the rule itself makes identical, which the module then
    leaves out of its gradient all-reduce).
    """

    #: This process's rank and the number of processes (see :meth:`set_distributed`).
    _rank: int = 0
    _world_size: int = 1
    #: Whether the update comes from autograd alone (no forward hooks, no direct ``.grad``
    #: writes; :class:`~bioplausible_lightning.rules.Backprop`).  False (every other rule):
    #: the module runs a ``torch.compile``'d model's eager module for it and allows only
    #: strategies where every process holds the whole model (DDP).
    autograd_only: bool = False

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

    def finish(self, backward: Callable[..., Any]) -> None:
        """Complete the update of the last :meth:`estimate` that returned ``finite=True``,
        once every process found its batch finite (called on every process, before
        :meth:`synchronize`).  A rule whose update needs autograd runs
        ``backward(loss, **kwargs)`` here: the module passes its ``manual_backward``, inside
        which Lightning's DDP all-reduces the gradients.  Default: nothing, the estimate
        wrote ``.grad`` already."""

    def discard(self) -> None:
        """Forget what the last :meth:`estimate` left for :meth:`finish`: the step is
        skipped on every process (default: nothing)."""

    def own_optimizers(self, model: nn.Module) -> list[OwnOptimizer]:
        """Parameter groups the rule steps itself (default: none, the module's optimizer)."""
        return []

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Run as process ``rank`` of ``world_size`` (``(0, 1)``: a single process).

        :class:`~bioplausible_lightning.PerturbationModule` calls this in ``setup`` and resets
        it in ``teardown``.  Perturbation rules draw noise that is independent across ranks
        from it (a shared random stream and the rank), so averaging the ranks' estimates
        reduces their variance, and the stream stays checkpointable by one process.
        """
        check_int("rank", rank)
        check_int("world_size", world_size)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"rank={rank!r}, world_size={world_size!r} is invalid: allowed is "
                "world_size >= 1 and 0 <= rank < world_size."
            )
        self._rank, self._world_size = rank, world_size

    def synchronize(self, reducer: Reducer) -> None:
        """Make the rule identical on every process after a batch that all processes found
        finite (called under multi-process training only, on every process).

        Register the tensors to average with ``reducer.mean(tensors, then=callback)`` (a
        :class:`~bioplausible_lightning.distributed.Reducer`); the module runs one
        all-reduce for everything registered.  The default averages every floating-point
        tensor of :meth:`state_dict` and loads the result back: state learned from the data
        (the Hebbian thresholds) then follows the whole global batch, as with one process.
        Integer state must already agree (it only counts steps, which are taken on every
        process alike).
        """
        state = self.state_dict()
        tensors = floating_tensors(state)
        if tensors:
            reducer.mean(tensors, then=lambda: self.load_state_dict(state))

    def synchronized_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters whose ``.grad`` this rule makes identical on every process itself
        (from shared random seeds and averaged scalars), so the module does not all-reduce
        them (default: none)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """State that makes a resumed run bit-identical (RNG, step counters, thresholds)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
