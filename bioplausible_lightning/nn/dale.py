"""Dale's law as a torch parametrisation, applied to any model's layers by one call.

Every presynaptic unit (an input feature of a linear layer, an input channel of a
convolution) gets a fixed sign, excitatory (+1) or inhibitory (-1).  :func:`dale_`
registers the parametrisation :class:`DaleExp` on the chosen ``nn.Linear`` / ``nn.Conv2d``
layers (``torch.nn.utils.parametrize``): their effective weight becomes
``sign ⊙ exp(θ)``, so Dale's law holds by construction for *any* update of ``θ`` (no
clamp), and additive updates of ``θ`` are multiplicative updates of the weight, which is
what drives weight magnitudes towards a lognormal distribution.  The layers stay plain
``nn.Linear`` / ``nn.Conv2d`` (``isinstance`` holds, every torch utility works), with the
trainable ``θ`` at ``layer.parametrizations.weight.original``.

``parametrization="plain"`` gives the same initial weights and registers nothing, so the
weights are free: a control that shows what is lost without the constraint.

A rule estimates ``dL/dW`` of the *effective* weight; :meth:`DaleExp.weight_grad_to_original`
maps it to ``dL/dθ`` locally, which is how the rules in :mod:`bioplausible_lightning.rules`
train any parametrisation that offers that method.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from fnmatch import fnmatch
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._validation import (
    check_bool,
    check_choice,
    check_finite,
    check_fraction,
    check_names,
    check_positive,
)
from .parametrization import register_parametrization

Parametrization = Literal["exp", "plain"]
_PARAMETRIZATIONS: tuple[str, ...] = get_args(Parametrization)
#: The layer types :func:`dale_` puts under Dale's law (the types the rules train).
DALE_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


def _check_config(inhibitory_fraction: float, parametrization: str, init_sigma: float) -> None:
    check_fraction("inhibitory_fraction", inhibitory_fraction, hint="0 = purely excitatory")
    check_choice("parametrization", parametrization, _PARAMETRIZATIONS)
    check_positive("init_sigma", init_sigma)


def presynaptic_signs(
    num_units: int, inhibitory_fraction: float, generator: torch.Generator | None = None
) -> Tensor:
    """Return a ±1 vector with ``round(num_units * inhibitory_fraction)`` inhibitory units.

    The inhibitory units are chosen at random (not the last ones), so that a layer's
    input ordering carries no E/I structure.
    """
    num_inhibitory = int(round(num_units * inhibitory_fraction))
    signs = torch.ones(num_units)
    if num_inhibitory:
        order = torch.randperm(num_units, generator=generator)
        signs[order[:num_inhibitory]] = -1.0
    return signs


def lognormal_log_magnitudes(
    shape: tuple[int, ...],
    signs: Tensor,
    fan_in: int,
    init_sigma: float,
    init_mu: float | None,
    balanced: bool,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``log|w| ~ N(mu, sigma^2)`` per weight; ``signs`` broadcasts along dim 1.

    With ``balanced=True`` (and both E and I units present) every postsynaptic unit's
    inhibitory weights are scaled so that its excitatory and inhibitory weights sum to the
    same total: a uniform (common-mode) input then drives it not at all.  Without this
    detailed E/I balance, all-positive ReLU activity pushes every unit by a random offset
    that grows layer after layer until deep networks map every input to the same output.
    The default ``mu`` then sets the *fluctuating* part of the weights to He scale,
    ``Var[w | presynaptic unit] * fan_in = 2``: with one sign per presynaptic unit, a
    lognormal weight's mean carries ``exp(-sigma^2)`` of its second moment, and that part
    only moves the common mode, which the balance cancels.  ReLU activity then keeps its
    scale with depth.  The magnitudes stay lognormal within each E/I group of a unit (a
    per-unit shift of ``log|w|``).
    """
    default_scale = init_mu is None
    target = 2.0 / (fan_in * -math.expm1(-(init_sigma**2)))  # E[w^2] giving He-scaled Var
    if default_scale:
        init_mu = 0.5 * math.log(target) - init_sigma**2
    log_w = torch.randn(shape, generator=generator) * init_sigma + init_mu
    inh = (signs < 0).view(1, -1, *([1] * (len(shape) - 2))).expand(shape)
    if balanced and inh.any() and not inh.all():
        magnitudes = log_w.exp()
        dims = tuple(range(1, len(shape)))
        excitation = magnitudes.masked_fill(inh, 0).sum(dims)
        inhibition = magnitudes.masked_fill(~inh, 0).sum(dims)
        shift = (excitation / inhibition).log().view(-1, *([1] * (len(shape) - 1)))
        log_w = torch.where(inh, log_w + shift, log_w)
        if default_scale:
            second_moment = (2 * log_w).exp().mean()
            log_w = log_w + 0.5 * (math.log(target) - second_moment.log())
    return log_w


class DaleExp(nn.Module):
    """The parametrisation ``W = sign ⊙ exp(θ)``, one fixed sign per presynaptic unit.

    ``sign`` has one ±1 entry per entry of the weight's dim 1 (a linear layer's input
    features, a convolution's input channels) and is broadcast over the other dims.  Use
    :func:`dale_` to register it; registering it by hand works too
    (``parametrize.register_parametrization(layer, "weight", DaleExp(sign))``: the current
    weight, whose signs must agree with ``sign``, becomes ``θ = log|W|``).

    Args:
        sign: ±1 per presynaptic unit, 1-D.
    """

    sign: Tensor

    def __init__(self, sign: Tensor) -> None:
        super().__init__()
        if sign.ndim != 1 or not bool(((sign == 1) | (sign == -1)).all()):
            raise ValueError(
                f"sign={sign!r} is invalid: it must be a 1-D tensor of +1 / -1, one entry per "
                "presynaptic unit."
            )
        self.register_buffer("sign", sign)

    def _expanded_sign(self, ndim: int) -> Tensor:
        return self.sign.view(1, -1, *([1] * (ndim - 2)))

    def forward(self, original: Tensor) -> Tensor:
        """The effective weight ``sign ⊙ exp(θ)`` from the log-magnitudes ``θ``."""
        return self._expanded_sign(original.ndim) * original.exp()

    def right_inverse(self, weight: Tensor) -> Tensor:
        """``θ = log|W|``: what assigning ``layer.weight = W`` (or registering) stores.

        A weight that gives a presynaptic unit the wrong sign is refused rather than
        projected, since keeping only its magnitudes would silently change the weight.
        """
        wrong = weight * self._expanded_sign(weight.ndim) < 0
        if bool(wrong.any()):
            raise ValueError(
                f"DaleExp: {int(wrong.sum())} of {weight.numel()} weight entries have the "
                "opposite sign of their presynaptic unit; a Dale weight must have "
                "sign(W[:, j]) = sign[j] (zeros allowed)."
            )
        return weight.abs().log()

    def weight_grad_to_original(self, original: Tensor, grad_weight: Tensor) -> Tensor:
        """``dL/dθ`` from ``dL/dW``: the local chain rule ``dL/dθ = dL/dW ⊙ W``.

        The Jacobian of ``sign ⊙ exp(θ)`` is diagonal with entries ``W`` itself, so a rule
        that estimates ``dL/dW`` needs no knowledge of the parametrisation.  The method
        every parametrisation a rule trains must offer (see
        :func:`bioplausible_lightning.rules.layers.accumulate_weight_grad`).
        """
        return grad_weight * self.forward(original)

    def extra_repr(self) -> str:
        return f"inhibitory={int((self.sign < 0).sum())}/{self.sign.numel()}"


def _dale_parametrization(module: nn.Module) -> tuple[int, DaleExp] | None:
    """``(index, parametrisation)`` of the :class:`DaleExp` on ``module.weight``, if any."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for index, p in enumerate(module.parametrizations.weight):
        if isinstance(p, DaleExp):
            return index, p
    return None


_UPGRADE_WARNING = (
    "Loaded a state dict written by bioplausible-lightning 0.1.0 (Dale layers with "
    "'log_weight' / 'weight_raw' and 'sign'): its keys were converted to the parametrised "
    "layout, so the model's weights are as saved. The parameter order changed "
    "(bias before the weight's original), so the *optimizer* state of a 0.1.0 training "
    "checkpoint does not carry over: continue such a run from its weights with a fresh "
    "optimizer, not with Trainer.fit(ckpt_path=...)."
)


def _upgrade_0_1_0_state(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any,
    strict: bool, missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
) -> None:  # fmt: skip
    """Load-state-dict pre-hook: rename 0.1.0 ``DaleLinear`` / ``DaleConv2d`` keys.

    0.1.0 stored ``log_weight`` (exp) or ``weight_raw`` (plain) and a ``sign`` buffer on the
    layer; the parametrised layer keeps ``parametrizations.weight.original`` and
    ``parametrizations.weight.<i>.sign`` (exp) or a plain ``weight`` (plain).  A checkpoint
    of the other parametrisation is reported, not converted.
    """
    old_log, old_raw, old_sign = (prefix + k for k in ("log_weight", "weight_raw", "sign"))
    if not any(k in state_dict for k in (old_log, old_raw)):
        return
    found = _dale_parametrization(module)
    layer = prefix[:-1] or "the model"
    if found is not None:
        if old_log not in state_dict:
            error_msgs.append(
                f"{layer}: the checkpoint holds a 0.1.0 parametrization='plain' Dale layer "
                "('weight_raw'), this model uses parametrization='exp'; build the model with "
                "parametrization='plain' to load it."
            )
            return
        state_dict[prefix + "parametrizations.weight.original"] = state_dict.pop(old_log)
        if old_sign in state_dict:
            state_dict[f"{prefix}parametrizations.weight.{found[0]}.sign"] = state_dict.pop(
                old_sign
            )
    else:
        if old_raw not in state_dict:
            error_msgs.append(
                f"{layer}: the checkpoint holds a 0.1.0 parametrization='exp' Dale layer "
                "('log_weight'), this model has free weights; build the model with "
                "parametrization='exp' to load it."
            )
            return
        state_dict[prefix + "weight"] = state_dict.pop(old_raw)
        state_dict.pop(old_sign, None)  # a plain layer keeps no sign
    warnings.warn(_UPGRADE_WARNING, UserWarning, stacklevel=2)


def dale_(
    model: nn.Module,
    inhibitory_fraction: float = 0.2,
    layers: Sequence[str] | None = None,
    *,
    parametrization: Parametrization = "exp",
    init_mu: float | None = None,
    init_sigma: float = 0.5,
    balanced: bool = True,
    zero_bias: bool = True,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Put ``model``'s ``nn.Linear`` / ``nn.Conv2d`` layers under Dale's law, in place.

    Every chosen layer gets random presynaptic signs (``round(n · inhibitory_fraction)`` of
    its ``n`` input features / channels inhibitory), lognormal weight magnitudes (see
    :func:`lognormal_log_magnitudes`: He-scaled, E/I balanced), and — with the default
    ``parametrization="exp"`` — the :class:`DaleExp` parametrisation, so its weight is
    ``sign ⊙ exp(θ)`` from then on.  Layers are visited in ``named_modules()`` order, each
    drawing its signs, then its magnitudes, from ``generator`` (the global RNG if None).
    The current weight values are replaced, not kept.

    Args:
        model: Any module; it may itself be an ``nn.Linear`` / ``nn.Conv2d``.
        inhibitory_fraction: Fraction of inhibitory presynaptic units per layer, in [0, 1).
        layers: Optional ``fnmatch`` patterns of module names (as in the rules' ``layers``);
            default every ``nn.Linear`` and ``nn.Conv2d`` (``groups=1``) in ``model``.
        parametrization: ``"exp"`` (Dale's law by construction) or ``"plain"`` (the same
            initial weights, left free: a control).
        init_mu: Mean of ``log|w|``; default gives He scaling.
        init_sigma: Standard deviation of ``log|w|`` (> 0).
        balanced: Scale inhibitory weights so excitation and inhibition cancel on average.
        zero_bias: Zero the chosen layers' biases (the balanced initialisation makes a
            common-mode input drive nothing; a random bias would add that offset back).
        generator: Optional generator for reproducible signs and weights.

    Returns:
        ``model`` itself, its chosen layers now parametrised.  Loading a state dict written
        by 0.1.0's ``DaleLinear`` / ``DaleConv2d`` into it works (the keys are converted).

    Raises:
        ValueError: on an invalid option, when ``layers`` matches no Linear / Conv2d layer,
            or when a chosen layer is grouped or its weight is parametrised already.
    """
    _check_config(inhibitory_fraction, parametrization, init_sigma)
    check_finite("init_mu", init_mu, optional=True)
    check_bool("balanced", balanced)
    check_bool("zero_bias", zero_bias)
    patterns = check_names("layers", layers)
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, DALE_LAYER_TYPES)
        and (patterns is None or any(fnmatch(name, p) for p in patterns))
    ]
    if patterns is not None and not chosen:
        names = [n for n, m in model.named_modules() if isinstance(m, DALE_LAYER_TYPES)]
        raise ValueError(
            f"layers={patterns!r} is invalid: it matches no nn.Linear / nn.Conv2d in the model "
            f"(its layers: {names})."
        )
    for name, module in chosen:
        shown = name or type(module).__name__
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(
                f"dale_: layer {shown!r} already has a parametrised weight "
                f"({[type(p).__name__ for p in module.parametrizations.weight]}); remove it "
                "first (torch.nn.utils.parametrize.remove_parametrizations) or leave the layer "
                "out with layers=[...]."
            )
        if getattr(module, "groups", 1) != 1:
            raise ValueError(
                f"dale_: layer {shown!r} uses groups={module.groups}; Dale's law needs one sign "
                "per input channel across all groups, which is unsupported."
            )
    for _, module in chosen:
        _apply_dale(module, inhibitory_fraction, parametrization, init_mu, init_sigma,
                    balanced, zero_bias, generator)  # fmt: skip
    return model


def _apply_dale(
    module: nn.Module, inhibitory_fraction: float, parametrization: str,
    init_mu: float | None, init_sigma: float, balanced: bool, zero_bias: bool,
    generator: torch.Generator | None,
) -> None:  # fmt: skip
    weight = module.weight
    shape = tuple(weight.shape)
    signs = presynaptic_signs(shape[1], inhibitory_fraction, generator)
    log_w = lognormal_log_magnitudes(
        shape, signs, math.prod(shape[1:]), init_sigma, init_mu, balanced, generator
    )
    signs, log_w = signs.to(weight), log_w.to(weight)
    with torch.no_grad():
        if zero_bias and module.bias is not None:
            module.bias.zero_()
        weight.copy_(signs.view(1, -1, *([1] * (len(shape) - 2))) * log_w.exp())
        if parametrization == "exp":
            register_parametrization(module, "weight", DaleExp(signs))  # picklable
            # θ as drawn, not log|exp(θ)|: the same bits as the drawn log-magnitudes
            module.parametrizations.weight.original.copy_(log_w)
    module._register_load_state_dict_pre_hook(_upgrade_0_1_0_state, with_module=True)


def _deprecated(name: str) -> None:
    warnings.warn(
        f"{name} is deprecated: it returns a plain torch layer under Dale's law; build the "
        "layer yourself and call bioplausible_lightning.dale_(layer, ...) (or dale_(model) "
        "for a whole model).",
        DeprecationWarning,
        stacklevel=3,
    )


def DaleLinear(  # noqa: N802  (0.1.0's class name, kept as a factory)
    in_features: int,
    out_features: int,
    bias: bool = True,
    inhibitory_fraction: float = 0.2,
    parametrization: Parametrization = "exp",
    init_mu: float | None = None,
    init_sigma: float = 0.5,
    balanced: bool = True,
    generator: torch.Generator | None = None,
) -> nn.Linear:
    """Deprecated: an ``nn.Linear`` under Dale's law (``dale_(nn.Linear(...))``).

    Same arguments, initial weights and random-number use as 0.1.0's class.
    """
    _deprecated("DaleLinear")
    layer = nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias)
    return dale_(layer, inhibitory_fraction, parametrization=parametrization, init_mu=init_mu,
                 init_sigma=init_sigma, balanced=balanced, generator=generator)  # fmt: skip


def DaleConv2d(  # noqa: N802  (0.1.0's class name, kept as a factory)
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int = 1,
    bias: bool = True,
    inhibitory_fraction: float = 0.2,
    parametrization: Parametrization = "exp",
    init_mu: float | None = None,
    init_sigma: float = 0.5,
    balanced: bool = True,
    generator: torch.Generator | None = None,
) -> nn.Conv2d:
    """Deprecated: an ``nn.Conv2d`` under Dale's law (``dale_(nn.Conv2d(...))``).

    Same arguments, initial weights and random-number use as 0.1.0's class.
    """
    _deprecated("DaleConv2d")
    layer = nn.utils.skip_init(nn.Conv2d, in_channels, out_channels, kernel_size,
                               stride=stride, padding=padding, bias=bias)  # fmt: skip
    return dale_(layer, inhibitory_fraction, parametrization=parametrization, init_mu=init_mu,
                 init_sigma=init_sigma, balanced=balanced, generator=generator)  # fmt: skip


__all__ = ["DaleConv2d", "DaleExp", "DaleLinear", "Parametrization", "dale_"]
