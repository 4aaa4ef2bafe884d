"""Which layers a rule can train, and how an estimate reaches their parameters' ``.grad``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from fnmatch import fnmatch

from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..nn.dale import DaleConv2d, DaleLinear, _accumulate

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, DaleLinear, DaleConv2d)


def is_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, DaleConv2d))


def weight_param(module: nn.Module) -> nn.Parameter:
    """The trainable tensor behind ``module.weight``."""
    if isinstance(module, (DaleLinear, DaleConv2d)):
        return module.weight_parameter
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def is_exp_dale(module: nn.Module) -> bool:
    return isinstance(module, (DaleLinear, DaleConv2d)) and module.parametrization == "exp"


def accumulate_weight_grad(module: nn.Module, grad_weight: Tensor) -> None:
    """Add an estimate of ``dL/d(effective weight)`` to the module's weight parameter grad."""
    if isinstance(module, (DaleLinear, DaleConv2d)):
        module.accumulate_weight_grad(grad_weight)
    elif parametrize.is_parametrized(module, "weight"):
        chain = module.parametrizations.weight
        if len(chain) != 1 or not hasattr(chain[0], "weight_grad_to_original"):
            raise ValueError(
                f"{type(chain[0]).__name__}: a rule can train a parametrised weight only "
                "through one parametrisation with a `weight_grad_to_original(original, "
                "grad_weight)` method (the local chain rule); this one has none."
            )
        original = chain.original
        _accumulate(original, chain[0].weight_grad_to_original(original, grad_weight))
    else:
        _accumulate(module.weight, grad_weight)


def accumulate_param_grad(param: Tensor, grad: Tensor) -> None:
    _accumulate(param, grad)


def find_target_layers(
    model: nn.Module,
    layers: Sequence[str] | None,
    rule_name: str,
    warn_unowned: bool = True,
) -> list[tuple[str, nn.Module]]:
    """Supported layers with trainable weights, optionally filtered by name patterns.

    Raises a ``ValueError`` when nothing is trainable; warns (once, here; unless
    ``warn_unowned=False``, as a composite rule asks of its parts) about trainable
    parameters that no supported layer owns, since the rule will leave them unchanged.
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"{rule_name}: the model has no trainable parameters (all requires_grad=False)."
        )
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, SUPPORTED_LAYERS):
            continue
        if layers is not None and not any(fnmatch(name, pattern) for pattern in layers):
            continue
        if not weight_param(module).requires_grad:
            continue
        if getattr(module, "groups", 1) != 1:
            raise ValueError(f"{rule_name}: layer {name!r} uses groups != 1, which is unsupported.")
        targets.append((name, module))
    if not targets:
        searched = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
        raise ValueError(
            f"{rule_name}: no trainable layer to perturb (searched for {searched}"
            + (f" with names matching layers={list(layers)!r}" if layers is not None else "")
            + ")."
        )
    if warn_unowned:
        warn_unowned_parameters(model, targets, rule_name)
    return targets


def owned_parameters(targets: Sequence[tuple[str, nn.Module]]) -> set[int]:
    """``id`` of every parameter a rule training ``targets`` writes a ``.grad`` for."""
    owned = set()
    for _, module in targets:
        owned.add(id(weight_param(module)))
        if module.bias is not None:
            owned.add(id(module.bias))
    return owned


def warn_unowned_parameters(
    model: nn.Module, targets: Sequence[tuple[str, nn.Module]], rule_name: str
) -> None:
    owned = owned_parameters(targets)
    left = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owned]
    if left:
        warnings.warn(
            f"{rule_name}: these trainable parameters belong to no perturbed layer and will not "
            f"be updated: {left}",
            stacklevel=4,
        )
