"""Which layers a rule can train, and how an estimate reaches their parameters' ``.grad``.

The one interface between rules and parametrised weights (``torch.nn.utils.parametrize``,
e.g. Dale's law by :func:`~bioplausible_lightning.dale_`): a rule reads the effective
``module.weight``, estimates ``dL/d(module.weight)``, and hands it to
:func:`accumulate_weight_grad`, which maps it onto the trainable tensor
(:func:`weight_param`) through each parametrisation's own local chain rule,
``weight_grad_to_original(original, grad_weight) -> grad_original``.  A parametrisation
only has to offer that method to be trainable by every rule.

Every write of an estimate ends in one place (``_accumulate``).  Under an *update sink*
(:func:`redirected_updates`, what ``PerturbationModule(inplace_update=True)`` installs, see
:mod:`bioplausible_lightning.lean`) the writes go to the sink instead of ``.grad``: it
applies them to the parameters directly, so no gradient buffer is ever allocated.  A rule
whose update of a trainable tensor is an outer product ``u vᵀ`` hands it over unformed with
:func:`write_outer_in_place`, so not even one weight-sized temporary is needed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from fnmatch import fnmatch
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..nn.dale import DaleExp

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
#: Weight layers of other types (``Conv1d``, ``ConvTranspose2d``, ``Bilinear``, ...): a rule
#: that assigns the layers itself refuses a model that holds a trainable one, instead of
#: training the rest and leaving it at its initial weights.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd, nn.Bilinear, nn.Embedding, nn.EmbeddingBag,
    nn.RNNBase, nn.MultiheadAttention,
)  # fmt: skip
#: The method a weight parametrisation must have for a rule to train through it.
CHAIN_RULE_METHOD = "weight_grad_to_original"


class UpdateSink(Protocol):
    """Receives a rule's estimates in place of the parameters' ``.grad`` (see
    :func:`redirected_updates`)."""

    def add(self, param: Tensor, grad: Tensor) -> None:
        """Take ``grad`` (``param``-shaped, or viewable as it) as a term of ``param``'s gradient."""

    def add_outer(self, param: Tensor, u: Tensor, v: Tensor) -> None:
        """Take ``u @ vᵀ`` (``param`` viewed as ``(rows, -1)``) as a term of its gradient."""


_SINK: ContextVar[UpdateSink | None] = ContextVar("bioplausible_update_sink", default=None)


@contextmanager
def redirected_updates(sink: UpdateSink) -> Iterator[UpdateSink]:
    """Within the block, every estimate a rule writes through this module goes to ``sink``
    instead of ``.grad``."""
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)


def add_outer_products(
    out: Tensor | None, u: Tensor, v: Tensor, alpha: float = 1.0
) -> Tensor:
    """``out + alpha · u @ vᵀ`` in place (a new ``alpha · u @ vᵀ`` for ``out=None``) for
    ``u`` ``(m, r)`` and ``v`` ``(n, r)``: a GEMM accumulating into ``out`` for many columns,
    broadcast products for a few, where a GEMM with a tiny inner dimension is several times
    slower on CPU.  Low-rank updates and the memory-lean sink both form updates this way."""
    if out is not None:
        u, v = u.to(out.dtype), v.to(out.dtype)
    if u.shape[1] > 8:
        if out is None:
            return u @ v.T if alpha == 1 else (u @ v.T).mul_(alpha)
        return out.addmm_(u, v.T, alpha=alpha)
    start = 0
    if out is None:
        out, start = u[:, :1] * v[:, :1].T, 1
        if alpha != 1:
            out.mul_(alpha)
    for j in range(start, u.shape[1]):
        out.addcmul_(u[:, j : j + 1], v[:, j : j + 1].T, value=alpha)
    return out


def write_outer_in_place(param: Tensor, u: Tensor, v: Tensor) -> bool:
    """Under an update sink, hand it the gradient term ``u @ vᵀ`` of the trainable tensor
    ``param`` unformed and return True; otherwise do nothing and return False (the caller
    then forms the product and writes it as usual)."""
    sink = _SINK.get()
    if sink is None or not isinstance(param, nn.Parameter):
        return False
    sink.add_outer(param, u, v)
    return True


def is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d)


def conv_input_and_padding(
    module: nn.Conv2d, x: Tensor
) -> tuple[Tensor, int | tuple[int, ...]]:
    """``(x, padding)`` for a rule's own convolution over the layer's input ``x``
    (``(N, C, H, W)``) so that it sees exactly the patches the layer saw: numeric zero
    padding is passed on as it is (no copy of ``x``); any other ``padding_mode``
    (``"reflect"``, ``"circular"``…) or a string ``padding`` (``"same"``) is applied to ``x``
    here as the layer's forward applies it, with ``padding=0`` after.  Passing
    ``module.padding`` for those would silently pad with zeros: a wrong update."""
    if module.padding_mode == "zeros" and not isinstance(module.padding, str):
        return x, module.padding
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(x, module._reversed_padding_repeated_twice, mode=mode), 0


def weight_parametrizations(module: nn.Module) -> list[nn.Module]:
    """The parametrisations on ``module.weight``, innermost first (empty when unparametrised)."""
    if not parametrize.is_parametrized(module, "weight"):
        return []
    return list(module.parametrizations.weight)


def is_weight_parametrized(module: nn.Module) -> bool:
    """Whether ``module.weight`` is computed from another tensor (:func:`weight_param`)."""
    return parametrize.is_parametrized(module, "weight")


def weight_param(module: nn.Module) -> Tensor:
    """The trainable tensor behind ``module.weight``.

    ``module.parametrizations.weight.original`` for a parametrised weight (any
    parametrisation, ours or not), else ``module.weight`` itself.
    """
    if not parametrize.is_parametrized(module, "weight"):
        return module.weight
    chain = module.parametrizations.weight
    if not chain.is_tensor:
        raise ValueError(
            f"{type(module).__name__}: its weight is parametrised by {chain.ntensors} original "
            "tensors (a right_inverse returning a sequence); the rules train one tensor per "
            "weight."
        )
    return chain.original


def is_exp_dale(module: nn.Module) -> bool:
    """Whether ``module.weight`` is exactly ``sign ⊙ exp(original)`` (one :class:`DaleExp`):
    then multiplicative weight perturbation perturbs the log-magnitudes ``original``."""
    chain = weight_parametrizations(module)
    return len(chain) == 1 and isinstance(chain[0], DaleExp)


def check_trainable_weight(module: nn.Module, name: str, rule_name: str) -> None:
    """Raise if a rule cannot map ``dL/d(module.weight)`` onto :func:`weight_param`.

    Every parametrisation on the weight must offer :data:`CHAIN_RULE_METHOD`; without it a
    rule could only write the effective weight's gradient into the original, which is a
    wrong gradient, so it is refused here, before any estimate.
    """
    missing = [type(p).__name__ for p in weight_parametrizations(module)
               if not callable(getattr(p, CHAIN_RULE_METHOD, None))]  # fmt: skip
    if missing:
        raise TypeError(
            f"{rule_name}: layer {name!r} has a weight parametrisation without a "
            f"`{CHAIN_RULE_METHOD}(original, grad_weight)` method ({missing}), so a rule's "
            "estimate of dL/dW cannot be mapped onto the trainable original tensor. Add that "
            "method (the local chain rule: the vector-Jacobian product of the "
            "parametrisation), or leave the layer out with `layers=[...]`."
        )
    weight_param(module)  # refuses multi-tensor originals


@torch.no_grad()
def accumulate_weight_grad(module: nn.Module, grad_weight: Tensor) -> None:
    """Add an estimate of ``dL/d(module.weight)`` into ``weight_param(module).grad``.

    For a parametrised weight ``W = p_n(… p_1(θ))`` the estimate is pulled back through
    each parametrisation's ``weight_grad_to_original`` (last one first), so ``θ.grad``
    receives ``dL/dθ``; an unparametrised weight receives ``grad_weight`` as it is.
    """
    chain = weight_parametrizations(module)
    if not chain:
        _accumulate(module.weight, grad_weight)
        return
    check_trainable_weight(module, type(module).__name__, "accumulate_weight_grad")
    original = weight_param(module)
    inputs = [original]
    for p in chain[:-1]:  # each parametrisation's input, for its chain rule
        inputs.append(p(inputs[-1]))
    grad = grad_weight
    for p, x in zip(reversed(chain), reversed(inputs)):
        grad = getattr(p, CHAIN_RULE_METHOD)(x, grad)
    _accumulate(original, grad)


def accumulate_param_grad(param: Tensor, grad: Tensor) -> None:
    _accumulate(param, grad)


def _accumulate(param: Tensor, grad: Tensor) -> None:
    """``param.grad += grad``, like autograd does; ``grad`` must be a fresh tensor (it is
    adopted without a copy when ``param.grad`` is None); under an update sink, the sink's."""
    sink = _SINK.get()
    if sink is not None:
        sink.add(param, grad)
    elif param.grad is None:
        param.grad = grad.detach().to(param.dtype).view(param.shape)
    else:
        param.grad.add_(grad.view(param.shape).to(param.grad.dtype))


def find_target_layers(
    model: nn.Module,
    layers: Sequence[str] | None,
    rule_name: str,
    warn_unowned: bool = True,
    setting: str = "layers",
) -> list[tuple[str, nn.Module]]:
    """Supported layers with trainable weights, optionally filtered by name patterns
    (``setting``: the patterns' parameter name, for the error).

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
            raise ValueError(
                f"{rule_name}: layer {name!r} has groups={module.groups}, which is "
                "unsupported: allowed is groups=1 (or freeze the layer, or leave it out with "
                "`layers=`)."
            )
        check_trainable_weight(module, name, rule_name)
        targets.append((name, module))
    if not targets:
        searched = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
        raise ValueError(
            f"{rule_name}: no trainable layer to perturb (searched for {searched}"
            + (f" with names matching {setting}={list(layers)!r}" if layers is not None else "")
            + ")."
        )
    if warn_unowned:
        warn_unowned_parameters(model, targets, rule_name)
    return targets


def refuse_untrainable_weight_layers(model: nn.Module, rule_name: str) -> None:
    """Raise if ``model`` holds a trainable weight layer of a type no rule can train.

    For rules that choose the layers themselves (the Hebbian ones): a ``Conv1d`` or
    ``ConvTranspose2d`` between trained layers would otherwise keep its random weights
    for the whole run, with only a warning.
    """
    found = [
        f"{name!r} ({type(module).__name__})"
        for name, module in model.named_modules()
        if isinstance(module, WEIGHT_LAYERS)
        and not isinstance(module, SUPPORTED_LAYERS)
        and any(p.requires_grad for p in module.parameters())
    ]
    if found:
        allowed = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
        raise ValueError(
            f"{rule_name}: the model has trainable layers of a type the rule cannot train: "
            f"{', '.join(found)}; allowed are {allowed}. Freeze them "
            "(requires_grad_(False)) or replace them."
        )


def owned_parameters(targets: Sequence[tuple[str, nn.Module]]) -> set[int]:
    """``id`` of every parameter a rule training ``targets`` writes a ``.grad`` for (a
    target that is not a supported layer, e.g. a module trained by ``Backprop``: its own
    parameters)."""
    owned = set()
    for _, module in targets:
        if not isinstance(module, SUPPORTED_LAYERS):
            owned.update(id(p) for p in module.parameters(recurse=False))
            continue
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
