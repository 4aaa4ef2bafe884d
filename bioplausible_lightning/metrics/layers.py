"""Which modules carry a weight matrix, and how their presynaptic units are laid out.

Shared by the metrics that take a whole module (``sign_consistency(model)``) and by the
callbacks' default layer selection, so both agree on what "every layer" means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import Tensor, nn

from ..nn import KWinnersTakeAll, RectifiedPower, SoftWinnerTakeAll, Triangle

WeightGetter = Callable[[nn.Module], "Tensor | None"]

#: Modules whose ``.weight`` is a synaptic matrix ``(out, in, *kernel)`` (``(in, out, ...)``
#: for transposed convolutions).  Parametrised layers (Dale's law by ``dale_``) are these
#: types too: ``torch.nn.utils.parametrize`` keeps the class a subclass.
WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
)

#: Elementwise non-linearities whose output is the "activity" of the layer before them.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Threshold,
    KWinnersTakeAll,
    SoftWinnerTakeAll,
    Triangle,
    RectifiedPower,
)


def default_weight_getter(module: nn.Module) -> Tensor | None:
    """The effective weight of a known weight layer, else ``None``.

    Reading ``module.weight`` gives a parametrised layer's effective weight (``sign ⊙ exp(θ)``
    under Dale's law) and a plain layer's parameter alike: the metrics measure the weight
    the forward pass uses, whatever produced it.  Bilinear weights ``(out, in1, in2)`` count
    ``in1`` as the presynaptic units.
    """
    if not isinstance(module, WEIGHT_LAYER_TYPES):
        return None
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, Tensor) and weight.ndim >= 2 else None


def presynaptic_layout(module: nn.Module) -> tuple[int, int]:
    """``(presynaptic_dim, groups)`` of ``module``'s weight as returned by its getter.

    Transposed convolutions store ``(in, out / groups, *kernel)``, so their presynaptic
    dimension is 0; grouped convolutions index the input channel *within its group* on
    dim 1, which :func:`~bioplausible_lightning.metrics.presynaptic_matrix` undoes.
    """
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return 0, 1
    if isinstance(module, nn.modules.conv._ConvNd):
        return 1, module.groups
    return 1, 1


def unit_dim(module: nn.Module) -> int | None:
    """The dimension of ``module``'s *output* that indexes units, if the type tells.

    Linear layers put features last (``(..., features)``); convolutions put channels on
    dim 1.  Activations return ``None``: their outputs follow the layer before them.
    """
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return -1
    if isinstance(module, nn.modules.conv._ConvNd):
        return 1
    if isinstance(module, KWinnersTakeAll):
        return module.dim
    return None


def named_weights(
    module: nn.Module, weight_getter: WeightGetter = default_weight_getter
) -> Iterator[tuple[str, nn.Module, Tensor]]:
    """Yield ``(name, submodule, weight)`` for every submodule the getter returns a weight for."""
    for name, sub in module.named_modules():
        weight = weight_getter(sub)
        if weight is not None:
            yield name, sub, weight


def type_names(types: tuple[type, ...]) -> str:
    """``"Linear, Conv2d, ..."``: for messages that say what was searched for."""
    return ", ".join(t.__name__ for t in types)


__all__ = [
    "ACTIVATION_TYPES",
    "WEIGHT_LAYER_TYPES",
    "WeightGetter",
    "default_weight_getter",
    "named_weights",
    "presynaptic_layout",
    "unit_dim",
]
