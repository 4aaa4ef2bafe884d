"""Different rules for different layers, and the paper's rule as its first user.

:class:`CompositeRule` runs several rules on one batch, each on its own layers, and checks
that no layer is claimed twice.  :class:`HebbianPerturbation` is the rule the paper
describes: competitive Hebbian plasticity with homeostasis in the hidden layers (label-free,
from the network's own activity) and node or weight perturbation — a random tweak kept in
proportion to the gain — for the readout.  No error is sent backward through the network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from .._replicas import batch_coupled_modules
from .._validation import check_bool, check_instance, check_min_int, check_names
from ..distributed import Reducer
from ..losses import PerSampleLoss
from .backprop import Backprop
from .base import PerturbationRule
from .hebbian import CompetitiveHebbian
from .layers import (
    find_target_layers,
    refuse_untrainable_weight_layers,
    warn_unowned_parameters,
)
from .node import NodePerturbation
from .rule import LearningRule, OwnOptimizer, PerModel, RuleOutput


class CompositeRule(LearningRule):
    """Apply each rule of ``rules`` to its own layers (set each rule's ``layers=``).

    The reported loss and logits are those of the last rule (put the error-driven rule
    last); a step is finite only if every part's was.  A part may be
    :class:`~bioplausible_lightning.rules.Backprop` with ``layers=`` a layer group (on one
    process): its backward then reaches only that group.
    """

    def __init__(self, rules: Sequence[LearningRule]) -> None:
        rules = list(rules)
        if not rules or not all(isinstance(r, LearningRule) for r in rules):
            raise ValueError(f"rules={rules!r} is invalid: give one or more LearningRule objects.")
        self.rules = rules
        self._targets: PerModel[list[tuple[str, nn.Module]]] = PerModel()

    def parts(self, model: nn.Module) -> list[LearningRule]:
        """The sub-rules, ready for ``model`` (a subclass may configure them here)."""
        return self.rules

    def targets(self, model: nn.Module, warn_unowned: bool = True) -> list[tuple[str, nn.Module]]:
        targets = self._targets.get(model)
        if targets is None:
            seen: dict[str, str] = {}
            targets: list[tuple[str, nn.Module]] = []
            for rule in self.parts(model):
                for name, module in rule.targets(model, warn_unowned=False):
                    if name in seen:
                        raise ValueError(
                            f"{type(self).__name__}: layer {name!r} is claimed by both "
                            f"{seen[name]} and {type(rule).__name__}; give each rule "
                            "disjoint `layers=`."
                        )
                    seen[name] = type(rule).__name__
                    targets.append((name, module))
            if warn_unowned:
                warn_unowned_parameters(model, targets, type(self).__name__)
            self._targets.set(model, targets)
        return targets

    def estimate(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        inputs: Tensor,
        targets: Tensor,
        grad_scale: float = 1.0,
    ) -> RuleOutput:
        self.targets(model)
        finite, out = True, None
        for rule in self.parts(model):
            out = rule.estimate(model, loss_fn, inputs, targets, grad_scale)
            finite = finite and out.finite
            if not finite:
                break
        assert out is not None
        return RuleOutput(out.loss, out.logits, finite, out.rpe)  # the last (error-driven) part

    def finish(self, backward: Callable[..., Any]) -> None:
        for rule in self.rules:
            rule.finish(backward)

    def discard(self) -> None:
        for rule in self.rules:
            rule.discard()

    def own_optimizers(self, model: nn.Module) -> list[OwnOptimizer]:
        return [opt for rule in self.parts(model) for opt in rule.own_optimizers(model)]

    def set_distributed(self, rank: int, world_size: int) -> None:
        super().set_distributed(rank, world_size)
        for rule in self.rules:
            rule.set_distributed(rank, world_size)

    def synchronize(self, reducer: Reducer) -> None:
        """Each part synchronises its own state (in the same order on every process)."""
        for rule in self.rules:
            rule.synchronize(reducer)

    def synchronized_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for rule in self.parts(model) for p in rule.synchronized_parameters(model)]

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [rule.state_dict() for rule in self.rules]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for rule, part in zip(self.rules, state["parts"], strict=True):
            rule.load_state_dict(part)


class HebbianPerturbation(CompositeRule):
    """The paper's rule: Hebbian hidden layers + a perturbation-trained readout.

    Works on any model with no extra wiring: the readout is the last supported weight layer
    in forward (registration) order, unless ``readout_layers`` names others; every other
    supported layer is a hidden layer for ``hebbian``.

    Args:
        hebbian: The hidden layers' rule (default :class:`CompetitiveHebbian()`); its
            ``layers`` must be left unset, they are filled in here.
        readout: The readout's rule (default :class:`NodePerturbation` with 8 directions;
            :class:`WeightPerturbation`, or :class:`~bioplausible_lightning.rules.Backprop`
            for a backprop-trained readout on one process).
        readout_layers: ``fnmatch`` patterns of the readout layers (default: the last one).
        readout_start: A label-free stage first: the readout learns only once the Hebbian
            rule has made this many updates (default 0: both learn from the start), as in
            the peers' protocols, where the classifier is trained on a finished layer.
            During the stage no perturbed passes are run.  Once a greedy stage is over
            (every layer has had its ``hebbian.layer_steps``) the Hebbian rule is no
            longer run at all: a readout step costs the readout's passes only.
        freeze_normalization: Once the greedy label-free stage is over, run every BatchNorm
            of the model in eval mode during training, so that the readout learns on the
            features the network computes at test time (running statistics, frozen with the
            weights they normalise for) rather than on each batch's statistics, as SoftHebb
            trains its classifier.  Needs ``hebbian.layer_steps`` (a stage that ends).
    """

    def __init__(
        self,
        hebbian: CompetitiveHebbian | None = None,
        readout: PerturbationRule | Backprop | None = None,
        readout_layers: Sequence[str] | None = None,
        readout_start: int = 0,
        freeze_normalization: bool = False,
    ) -> None:
        hebbian = hebbian if hebbian is not None else CompetitiveHebbian()
        readout = readout if readout is not None else NodePerturbation(num_directions=8)
        check_instance("hebbian", hebbian, CompetitiveHebbian)
        check_instance(
            "readout", readout, (PerturbationRule, Backprop),
            what="a PerturbationRule (NodePerturbation or WeightPerturbation) or Backprop",
        )  # fmt: skip
        for label, rule in (("hebbian", hebbian), ("readout", readout)):
            if rule.layers is not None:
                raise ValueError(
                    f"{label}.layers={rule.layers!r} is invalid here: HebbianPerturbation "
                    "assigns the layers; use readout_layers= to choose the readout."
                )
        readout_layers = check_names("readout_layers", readout_layers)
        check_min_int("readout_start", readout_start, 0)
        check_bool("freeze_normalization", freeze_normalization)
        if freeze_normalization and hebbian.layer_steps is None:
            raise ValueError(
                "freeze_normalization=True is invalid with hebbian.layer_steps=None: the "
                "statistics freeze when a greedy label-free stage ends; set layer_steps."
            )
        super().__init__([hebbian, readout])
        self.readout_start = readout_start
        self.freeze_normalization = freeze_normalization
        self.hebbian, self.readout = hebbian, readout
        self.readout_layers = readout_layers
        self._parts_for: PerModel[bool] = PerModel()

    def estimate(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        inputs: Tensor,
        targets: Tensor,
        grad_scale: float = 1.0,
    ) -> RuleOutput:
        self.targets(model)  # assigns and checks the layers
        if self.hebbian.steps < self.readout_start:
            return self.hebbian.estimate(model, loss_fn, inputs, targets, grad_scale)
        if not self.label_free_stage_over(model):
            return super().estimate(model, loss_fn, inputs, targets, grad_scale)
        if self.freeze_normalization:
            for module in batch_coupled_modules(model):  # BatchNorm in train mode
                module.eval()
        return self.readout.estimate(model, loss_fn, inputs, targets, grad_scale)

    def label_free_stage_over(self, model: nn.Module) -> bool:
        """Whether a greedy Hebbian stage has trained every hidden layer (never without
        ``layer_steps``): from then on only the readout learns."""
        steps = self.hebbian.layer_steps
        return steps is not None and self.hebbian.steps >= steps * len(self.hebbian.targets(model))

    def parts(self, model: nn.Module) -> list[LearningRule]:
        if self._parts_for.get(model) is None:
            refuse_untrainable_weight_layers(model, type(self).__name__)
            layers = find_target_layers(model, None, type(self).__name__, warn_unowned=False)
            names = [name for name, _ in layers]
            if self.readout_layers is None:
                readout = names[-1:]
            else:
                readout = [n for n, _ in find_target_layers(
                    model, self.readout_layers, type(self).__name__, warn_unowned=False,
                    setting="readout_layers")]
            hidden = [n for n in names if n not in readout]
            if not hidden:
                raise ValueError(
                    f"{type(self).__name__}: the model has no hidden layer for the Hebbian rule "
                    f"(its only trainable layers {names} are the readout); use a model with at "
                    "least one hidden Linear/Conv2d layer, or NodePerturbation alone."
                )
            self.hebbian.layers, self.readout.layers = hidden, readout
            self.hebbian._targets.clear()
            self.readout._targets.clear()
            self._parts_for.set(model, True)
        return self.rules
