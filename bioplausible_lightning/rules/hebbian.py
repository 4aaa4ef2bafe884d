"""Competitive Hebbian plasticity with homeostasis: a layer learns from its own activity.

For a layer with weights ``w_i`` (one row per unit) and input ``x`` (a convolution: every
input patch), each example's units compete and the winners move towards the input:

* **competition** on a similarity ``c_i`` minus a homeostatic threshold ``θ_i``: the cosine
  ``c_i = w_i·x / (‖w_i‖ ‖x‖)`` (default: a unit's chance of winning does not depend on its
  norm, so one large unit cannot take every example) or the layer's own response
  ``c_i = u_i`` (``similarity="dot"``, as in SoftHebb and Krotov–Hopfield).  Then
  ``y = softmax((c − θ) / T)`` (``"soft"``, temperature ``T``), ``y_i = 1`` for the ``k``
  largest ``c_i − θ_i`` (``"hard"``, k-WTA), or Krotov & Hopfield's ranking (``"rank"``):
  ``y = 1`` for the strongest unit and ``y = −Δ`` (``anti_hebbian``) for the ``k``-th;
  with ``"soft"``, ``anti_hebbian=Δ`` turns every unit but the winner anti-Hebbian,
  ``y_i → −Δ y_i`` (SoftHebb's soft anti-Hebbian plasticity);
* **Hebbian update with decay** ``Δw_i = η_i · mean_b y_i (x − u_i w_i)`` with
  ``u_i = w_i·x`` (the Oja / SoftHebb form): the decay term holds ``‖w_i‖`` near 1 without
  clipping (with ``normalize="unit"``, ``mean_b y_i u_i`` is floored at 0 so that the decay
  never turns into growth), and
  with non-negative inputs each ``w_i`` moves towards a non-negative
  combination of inputs, so positive weights emerge *by magnitude* from a mixed-sign start.
  On a layer with a :class:`~bioplausible_lightning.nn.LebesguePower` weight the update acts
  on the synapses ``θ`` (``u_i = ⟨θ_i, x⟩_p``), which converge to the unit p-sphere;
* **homeostasis** ``θ_i ← θ_i + η_θ (m · r_i − 1)`` where ``r_i = mean_b max(y_i, 0)`` is
  the unit's share of the competition and ``m`` the number of units: a unit that wins more
  than its fair share ``1/m`` (``k/m`` for k-WTA) raises its threshold, one that never wins
  lowers it until it does, so no unit stays dead;
* **step size**: ``normalize="unit"`` (default) uses the per-unit rate
  ``η_i = η / max(1, 2 η · mean_b y_i u_i)`` (the decay factor of one step never
  overshoots, whatever the input scale or how often the unit won), times
  ``sqrt(|‖w_i‖ − 1|)`` with ``adaptive_rate=True`` (SoftHebb: a converged unit slows down);
  ``normalize="max"`` divides the layer's update by its largest entry (Krotov–Hopfield;
  with ``adaptive_rate=True`` each unit's row is then scaled by ``sqrt(|‖w_i‖ − 1|)``, the
  update of SoftHebb's convolutional layers), and
  ``lr_decay_steps`` lets ``η`` fall linearly to 0 over that many updates.

The update is written as ``p.grad = −Δw / η`` for an SGD optimizer of the rule's own with
learning rate ``η`` (see :meth:`CompetitiveHebbian.own_optimizers`), so clipping,
accumulation and checkpointing behave as for any rule.  Hidden biases are left unchanged:
the thresholds live in the rule (and in its checkpointed state).  No error signal, label or
``backward()`` is used.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._validation import (
    check_bool,
    check_choice,
    check_in_range,
    check_min_int,
    check_names,
    check_nonnegative,
    check_positive,
)
from ..losses import PerSampleLoss
from .base import PerturbationRule
from .layers import (
    accumulate_param_grad,
    accumulate_weight_grad,
    conv_input_and_padding,
    find_target_layers,
    is_conv,
    refuse_untrainable_weight_layers,
    weight_param,
)
from .rule import LearningRule, OwnOptimizer, PerModel, RuleOutput

Competition = Literal["soft", "hard", "rank"]
Similarity = Literal["cosine", "dot"]
StepNormalization = Literal["unit", "max"]


def layer_inputs_as_rows(module: nn.Module, x: Tensor) -> Tensor:
    """The layer's presynaptic vectors, one row each: ``(N, in)`` or every conv patch."""
    if is_conv(module):
        x, padding = conv_input_and_padding(module, x)
        patches = F.unfold(x, module.kernel_size, module.dilation, padding, module.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x.reshape(-1, x.shape[-1])


def layer_outputs_as_rows(module: nn.Module, out: Tensor) -> Tensor:
    """The layer's pre-activations without bias, one row per example (or position)."""
    if module.bias is not None:
        shape = (1, -1, 1, 1) if is_conv(module) else (1, -1)
        out = out - module.bias.view(shape)
    if is_conv(module):
        return out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])
    return out.reshape(-1, out.shape[-1])


def _sparse_hebbian_term(y: Tensor, x: Tensor) -> Tensor:
    """``yᵀ x`` for k-WTA and rank competition (a few non-zeros per row of ``y``), summed
    over the non-zeros only: the dense product is the dominant cost of a wide layer's update."""
    rows, units = y.nonzero(as_tuple=True)
    term = x.new_zeros(y.shape[1], x.shape[1])
    return term.index_add_(0, units, x[rows] * y[rows, units, None])


def _updates_synapses(module: nn.Module) -> bool:
    """Whether the layer's weight parametrisation asks for the update on its original
    (``hebbian_space = "original"``, e.g. :class:`~bioplausible_lightning.nn.LebesguePower`)."""
    if not parametrize.is_parametrized(module, "weight"):
        return False
    return all(
        getattr(p, "hebbian_space", None) == "original"
        for p in module.parametrizations.weight
    )


def _one_or_per_layer(name: str, value: float | Sequence[float]) -> float | tuple[float, ...]:
    """A positive number, or a non-empty sequence of them (one per trained layer)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if not values:
            raise ValueError(f"{name}=[] is invalid: give a number > 0 or one per layer.")
        for i, v in enumerate(values):
            check_positive(f"{name}[{i}]", v)
        return tuple(float(v) for v in values)
    check_positive(name, value)
    return float(value)


def _check_one_per_layer(
    name: str, value: float | tuple[float, ...], targets: Sequence[tuple[str, nn.Module]]
) -> None:
    if isinstance(value, tuple) and len(value) != len(targets):
        layers = [layer for layer, _ in targets]
        raise ValueError(
            f"{name}={list(value)!r} is invalid for the {len(targets)} trained layers "
            f"{layers}: give one value per layer (forward order) or a single number."
        )


def _warn_frozen_biases(targets: list[tuple[str, nn.Module]], rule_name: str) -> None:
    """The rule never updates a layer's bias (its thresholds compete instead), so say which
    trainable biases will stay at their initial values, as for any parameter not trained."""
    frozen = [
        f"{name}.bias" if name else "bias"
        for name, module in targets
        if getattr(module, "bias", None) is not None and module.bias.requires_grad
    ]
    if frozen:
        warnings.warn(
            f"{rule_name}: it does not learn the biases of its layers (its homeostatic "
            f"thresholds take their place in the competition), so these trainable biases "
            f"stay at their initial values: {frozen}. Build the layers with bias=False "
            "(BioMLP / BioConvNet: hidden_bias=False), or set requires_grad=False, to "
            "silence this.",
            stacklevel=4,
        )


class CompetitiveHebbian(LearningRule):
    """Label-free competitive Hebbian learning for hidden ``nn.Linear``/``nn.Conv2d`` layers.

    Args:
        lr: Plasticity rate ``η`` (> 0) of the rule's own SGD optimizer; a sequence gives
            each trained layer its own (in forward order, one per layer), as SoftHebb's
            conv layers need.
        competition: ``"soft"`` (softmax with ``temperature``), ``"hard"`` (k-WTA) or
            ``"rank"`` (the strongest unit Hebbian, the ``k``-th anti-Hebbian).
        temperature: Softmax temperature (> 0; smaller = harder) on the similarities; a
            sequence: one per trained layer, like ``lr``.
        k: Winners per example for ``"hard"`` (>= 1); the anti-Hebbian rank for
            ``"rank"`` (>= 2); fewer than the layer's units.
        homeostasis: Threshold rate ``η_θ`` (>= 0; 0 switches homeostasis off).
        adaptive_rate: Scale each unit's rate by ``sqrt(|‖w_i‖ − 1|)`` (SoftHebb; with either
            ``normalize``).
        layers: ``fnmatch`` patterns of the layers to train (default: every supported
            layer of the model; :class:`HebbianPerturbation` passes the hidden ones).
        layer_steps: Greedy training: layer ``l`` (in forward order) learns during
            optimizer steps ``[l·S, (l+1)·S)`` and is frozen after; ``None`` trains all
            layers at once, all the time.
        similarity: What units compete on: ``"cosine"`` or ``"dot"`` (the response ``u``).
        anti_hebbian: ``Δ`` in [0, 1] of the anti-Hebbian units (``"rank"``, ``"soft"``).
        normalize: ``"unit"`` (per-unit overshoot cap) or ``"max"`` (divide by the largest
            entry of the layer's update).
        lr_decay_steps: Decay ``η`` linearly to 0 over this many updates (None: constant).
    """

    def __init__(
        self,
        lr: float | Sequence[float] = 0.1,
        competition: Competition = "soft",
        temperature: float | Sequence[float] = 1 / 30,
        k: int = 1,
        homeostasis: float = 5e-4,
        adaptive_rate: bool = False,
        layers: Sequence[str] | None = None,
        layer_steps: int | None = None,
        *,
        similarity: Similarity = "cosine",
        anti_hebbian: float = 0.0,
        normalize: StepNormalization = "unit",
        lr_decay_steps: int | None = None,
    ) -> None:
        lr = _one_or_per_layer("lr", lr)
        check_choice("competition", competition, get_args(Competition))
        temperature = _one_or_per_layer("temperature", temperature)
        check_min_int("k", k, 2 if competition == "rank" else 1)
        check_nonnegative("homeostasis", homeostasis)
        check_bool("adaptive_rate", adaptive_rate)
        if layer_steps is not None:
            check_min_int("layer_steps", layer_steps, 1)
        check_choice("similarity", similarity, get_args(Similarity))
        check_in_range("anti_hebbian", anti_hebbian, 0.0, 1.0)
        if anti_hebbian > 0 and competition == "hard":
            raise ValueError(
                f"anti_hebbian={anti_hebbian!r} is invalid with competition='hard': "
                "anti-Hebbian units exist only for competition='soft' or 'rank'."
            )
        check_choice("normalize", normalize, get_args(StepNormalization))
        if lr_decay_steps is not None:
            check_min_int("lr_decay_steps", lr_decay_steps, 1)
        self.lr = lr
        self.competition = competition
        self.temperature = temperature
        self.k = k
        self.homeostasis = float(homeostasis)
        self.adaptive_rate = adaptive_rate
        self.layers = check_names("layers", layers)
        self.layer_steps = layer_steps
        self.similarity = similarity
        self.anti_hebbian = float(anti_hebbian)
        self.normalize = normalize
        self.lr_decay_steps = lr_decay_steps
        self._steps = 0
        self._thresholds: dict[str, Tensor] = {}
        self._before_last: tuple[int, dict[str, Tensor]] | None = None  # for discard()
        self._targets: PerModel[list[tuple[str, nn.Module]]] = PerModel()

    @property
    def steps(self) -> int:
        """Updates made so far (state, not a setting: checkpointed, drives ``layer_steps``)."""
        return self._steps

    # -- which layers ------------------------------------------------------------------
    def targets(self, model: nn.Module, warn_unowned: bool = True) -> list[tuple[str, nn.Module]]:
        targets = self._targets.get(model)
        if targets is None:
            if self.layers is None:  # every layer is meant: refuse one it cannot train
                refuse_untrainable_weight_layers(model, type(self).__name__)
            targets = find_target_layers(model, self.layers, type(self).__name__, warn_unowned)
            for setting in ("lr", "temperature"):
                _check_one_per_layer(setting, getattr(self, setting), targets)
            for name, module in targets:
                units = weight_param(module).shape[0]
                if self.competition != "soft" and self.k >= units:
                    raise ValueError(
                        f"k={self.k} is invalid for layer {name!r} with {units} units: "
                        f"competition={self.competition!r} needs k < the number of units."
                    )
            _warn_frozen_biases(targets, type(self).__name__)
            self._targets.set(model, targets)
        return targets

    def active_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The layers that learn at the current step (all, or one under greedy training)."""
        layers = self.targets(model)
        if self.layer_steps is None:
            return layers
        index = self._steps // self.layer_steps
        return layers[index : index + 1]

    def layer_setting(self, setting: str, index: int) -> float:
        """``lr`` or ``temperature`` of the ``index``-th trained layer (forward order)."""
        value = getattr(self, setting)
        return value[index] if isinstance(value, tuple) else value

    def own_optimizers(self, model: nn.Module) -> list[OwnOptimizer]:
        weights = [weight_param(module) for _, module in self.targets(model)]
        if not isinstance(self.lr, tuple):
            groups = [{"params": weights}]
        else:  # one group per layer, each with its own rate
            groups = [{"params": [w], "lr": lr} for w, lr in zip(weights, self.lr)]
        first_lr = self.layer_setting("lr", 0)
        return [OwnOptimizer(groups, functools.partial(torch.optim.SGD, lr=first_lr))]

    # -- the update ----------------------------------------------------------------------
    def competition_weights(self, scores: Tensor, temperature: float | None = None) -> Tensor:
        """``y``: each row's share of the competition, from similarities minus thresholds
        (``temperature``: the layer's; default the first layer's)."""
        if self.competition == "soft":
            if temperature is None:
                temperature = self.layer_setting("temperature", 0)
            y = torch.softmax(scores / temperature, dim=1)
            if self.anti_hebbian > 0:
                winner = scores.argmax(dim=1, keepdim=True)
                losers = torch.ones_like(y).scatter_(1, winner, 0.0)
                y = y - (1 + self.anti_hebbian) * losers * y
            return y
        if self.competition == "hard":
            winners = scores.topk(self.k, dim=1).indices
            return torch.zeros_like(scores).scatter_(1, winners, 1.0)
        ranked = scores.topk(self.k, dim=1).indices
        y = torch.zeros_like(scores).scatter_(1, ranked[:, :1], 1.0)
        return y.scatter_(1, ranked[:, -1:], -self.anti_hebbian)

    def current_lr_factor(self) -> float:
        """The linear decay's factor ``1 − steps / lr_decay_steps`` (1 without decay)."""
        if self.lr_decay_steps is None:
            return 1.0
        return max(0.0, 1.0 - self._steps / self.lr_decay_steps)

    def hebbian_update(
        self, weight: Tensor, x: Tensor, u: Tensor, threshold: Tensor, index: int = 0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(Δw as SGD grad, new threshold, share r)`` for rows ``x`` ``(R, in)`` and
        responses ``u`` ``(R, units)`` of the ``index``-th trained layer, whose synapses
        are ``weight`` ``(units, in)``."""
        lr = self.layer_setting("lr", index)
        w = weight.reshape(weight.shape[0], -1)
        needs_norms = self.similarity == "cosine" or self.adaptive_rate
        norms = w.norm(dim=1).clamp_min(1e-12) if needs_norms else None
        if self.similarity == "cosine":
            scores = u / norms / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            scores = u
        y = self.competition_weights(scores - threshold, self.layer_setting("temperature", index))
        rows = x.shape[0]
        yu = (y * u).sum(0) / rows  # mean_b y_i u_i, the decay's factor
        if self.normalize == "unit":
            # a unit whose wins come with a negative response (e.g. all-positive weights on
            # standardised, mostly negative inputs) would *grow* by −u w without bound: floor
            # the decay at zero.  Krotov–Hopfield's "max" step keeps the raw sign (its
            # anti-Hebbian units rely on it) and bounds every step by ``lr`` instead.
            yu = yu.clamp_min(0)
        # Only units that took part in a competition change.  With k-WTA or rank competition
        # on a wide layer that is a small fraction of the rows: compute those rows alone.
        # ``delta`` (units × inputs) is the size of the layer: it is built, then scaled, in
        # place (a wide layer's update is bound by memory passes, not by the product)
        if self.competition == "soft":
            active = None
            delta = y.T @ x
            delta.div_(rows).sub_(yu[:, None] * w)
        else:
            active = (y != 0).any(0).nonzero().squeeze(1)
            delta = _sparse_hebbian_term(y[:, active], x)
            delta.div_(rows).sub_(yu[active, None] * w[active])
        decay = self.current_lr_factor()
        # SoftHebb's per-unit factor sqrt(|‖w_i‖ − 1|): a converged unit slows down
        adapt = (norms - 1).abs().clamp_min(1e-10).sqrt() if self.adaptive_rate else None
        if self.normalize == "max":
            largest = delta.abs().max().clamp_min(1e-30)
            step = delta.mul_(-decay).div_(largest)
            if adapt is not None:  # SoftHebb's conv layers: the max step, per-unit rates
                step.mul_((adapt if active is None else adapt[active])[:, None])
        else:
            rate = torch.full_like(yu, lr)
            if adapt is not None:
                rate = rate * adapt
            rate = rate / (2 * rate * yu.abs()).clamp_min(1.0)
            rate = rate if active is None else rate[active]
            step = delta.mul_((-(decay * rate / lr))[:, None])
        grad = step if active is None else w.new_zeros(w.shape).index_copy_(0, active, step)
        share = y.clamp_min(0).sum(0) / rows
        fair = (self.k if self.competition == "hard" else 1) / w.shape[0]
        new_threshold = threshold + self.homeostasis * (share / fair - 1)
        return grad.view_as(weight), new_threshold, share

    @torch.no_grad()
    def estimate(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        inputs: Tensor,
        targets: Tensor,
        grad_scale: float = 1.0,
    ) -> RuleOutput:
        active = self.active_layers(model)
        self._before_last = None
        if inputs.shape[0] == 0:  # nothing to learn from: skip the step like a non-finite one
            nan = torch.full((), math.nan, device=inputs.device)
            return RuleOutput(nan, torch.empty(0, device=inputs.device), finite=False)
        records: dict[str, tuple[Tensor, Tensor]] = {}
        names = {module: name for name, module in active}
        index = {name: i for i, (name, _) in enumerate(self.targets(model))}

        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            name = names[module]
            if name in records:
                raise RuntimeError(
                    f"CompetitiveHebbian: layer {name!r} ran twice in one forward pass; "
                    "shared (re-used) layers are not supported."
                )
            records[name] = (args[0], output)

        with PerturbationRule.hooked({module: hook for _, module in active}):
            logits = model(inputs)
        loss = loss_fn(logits, targets).mean()
        finite = bool(torch.isfinite(logits).all())
        missing = [name for name, _ in active if name not in records]
        if missing:
            raise RuntimeError(
                f"CompetitiveHebbian: layers {missing} did not run in the forward pass "
                "(a layer called through F.linear or an unused branch); exclude them with "
                "`layers=`."
            )
        if finite:
            self._before_last = (self._steps, dict(self._thresholds))
            for name, module in active:
                x, out = records[name]
                on_synapses = _updates_synapses(module)
                synapses = weight_param(module) if on_synapses else module.weight
                dtype = torch.promote_types(synapses.dtype, torch.float32)  # bf16 → fp32
                weight = synapses.to(dtype)
                rows_x = layer_inputs_as_rows(module, x.to(dtype))
                rows_u = layer_outputs_as_rows(module, out.to(dtype))
                threshold = self._thresholds.get(name)
                if threshold is None:
                    threshold = torch.zeros(weight.shape[0], device=weight.device, dtype=dtype)
                threshold = threshold.to(weight.device, dtype)
                grad, threshold, _ = self.hebbian_update(
                    weight, rows_x, rows_u, threshold, index[name]
                )
                self._thresholds[name] = threshold
                if grad_scale != 1.0:  # (a fresh tensor either way, as accumulation needs)
                    grad.mul_(grad_scale)
                if on_synapses:
                    accumulate_param_grad(synapses, grad)
                else:
                    accumulate_weight_grad(module, grad)
            self._steps += 1
        return RuleOutput(loss, logits, finite)

    def finish(self, backward: Callable[..., Any] | None = None) -> None:
        """The step is taken: keep the thresholds and step count the estimate advanced."""
        self._before_last = None

    def discard(self) -> None:
        """The step is skipped (e.g. the readout's loss was not finite): undo the last
        estimate's thresholds and step count, as its weight update is dropped too."""
        if self._before_last is not None:
            self._steps, self._thresholds = self._before_last
            self._before_last = None

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        thresholds = {name: t.clone() for name, t in self._thresholds.items()}
        return {"steps": self._steps, "thresholds": thresholds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps = int(state["steps"])
        self._thresholds = {k: v.clone() for k, v in state["thresholds"].items()}
