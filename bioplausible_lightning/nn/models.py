"""Small model factories under Dale's law (:func:`~bioplausible_lightning.dale_`).  Any
``nn.Module`` works with the rules; these exist so that one command gives a biologically
constrained network."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from .._replicas import user_shape
from .._validation import check_bool, check_min_int, check_positive_ints
from .activations import KWinnersTakeAll
from .dale import Parametrization, dale_


class InputNormalization(nn.Module):
    """``(x - mean) / std`` with per-channel constants, so models accept raw [0, 1] images.

    Keeping normalisation inside the model is what adversarial attack libraries expect: the
    attack's ε is then measured in pixel units.
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if not bool((std_t > 0).all() and torch.isfinite(std_t).all()):
            raise ValueError(f"std={std!r} is invalid: every entry must be a finite number > 0.")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _check_input(x: Tensor, input_shape: tuple[int, ...], model: str) -> Tensor:
    if tuple(x.shape[1:]) == input_shape:
        return x
    if x.ndim == 2 and x.shape[1] == math.prod(input_shape):
        return x.view(x.shape[0], *input_shape)
    raise ValueError(
        f"{model} expected input of shape (N, {', '.join(map(str, input_shape))}) "
        f"(or flattened (N, {math.prod(input_shape)})), got {user_shape(x)}."
    )


def _activation(sparsity: float, activation: nn.Module | None = None) -> nn.Module:
    if activation is not None:
        return copy.deepcopy(activation)
    return KWinnersTakeAll(sparsity) if sparsity > 0 else nn.ReLU()


def _dense_stack(
    sizes: Sequence[int],
    dale: bool,
    sparsity: float,
    activation: nn.Module | None = None,
    hidden_bias: bool = True,
) -> list[nn.Module]:
    """Fully connected layers ``sizes[0] → … → sizes[-1]``, an activation between each pair;
    the hidden layers have a bias if ``hidden_bias``, the last layer always has one.

    With ``dale=True`` the layers are left uninitialised (``skip_init``: no random numbers
    drawn) for :func:`dale_` to initialise, so the model draws exactly what 0.1.0's Dale
    layers drew.
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        hidden = i < len(sizes) - 2
        layers.append(_layer(dale, nn.Linear, n_in, n_out, bias=hidden_bias or not hidden))
        if hidden:
            layers.append(_activation(sparsity, activation))
    return layers


def _layer(dale: bool, cls: type[nn.Module], *args: int, **kwargs: int | bool) -> nn.Module:
    """``cls(*args, **kwargs)``; uninitialised when :func:`dale_` will initialise it."""
    return nn.utils.skip_init(cls, *args, **kwargs) if dale else cls(*args, **kwargs)


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed the global RNG for a block (when ``seed`` is given) and restore it after."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_mlp_sizes(
    input_shape: Sequence[int], hidden_sizes: Sequence[int], num_classes: int
) -> tuple[int, ...]:
    """Check an MLP's sizes (every entry an int >= 1); return ``input_shape`` as a tuple."""
    shape = check_positive_ints("input_shape", input_shape)
    check_positive_ints("hidden_sizes", hidden_sizes)
    check_min_int("num_classes", num_classes)
    return shape


def image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """``input_shape`` as a checked ``(C, H, W)`` tuple of positive ints."""
    c, h, w = check_positive_ints("input_shape", input_shape, length=3, hint="C, H, W")
    return c, h, w


class BioMLP(nn.Module):
    """Multi-layer perceptron under Dale's law (:func:`dale_`) with optional k-WTA sparsity.

    Args:
        input_shape: Shape of one input sample, e.g. ``(1, 28, 28)``; flat inputs are accepted.
        num_classes: Number of output units.
        hidden_sizes: Width of each hidden layer (depth = its length).
        inhibitory_fraction: Fraction of inhibitory presynaptic units per layer, in [0, 1).
        parametrization: ``"exp"`` (Dale's law by construction) or ``"plain"``.
        sparsity: Fraction of hidden units silenced by k-WTA; 0 uses a plain ReLU.
        dale: Put the ``nn.Linear`` layers under Dale's law (True) or keep torch's default
            layers (False, for ablations).
        init_sigma: Standard deviation of the lognormal initialisation's ``log|w|``.
        input_mean: Normalisation mean (scalar or per channel) for [0, 1] inputs.
        input_std: Normalisation std (scalar or per channel).
        seed: Optional seed for a reproducible architecture (signs and initial weights).
        activation: A module used (copied) after every hidden layer instead of the ReLU /
            k-WTA that ``sparsity`` selects, e.g. :class:`SoftWinnerTakeAll`.
        hidden_bias: Give the hidden layers a bias (the readout always has one).  A
            Hebbian rule never trains it (its homeostatic thresholds compete instead), so
            ``False`` drops parameters that would stay at their initial values.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 10,
        hidden_sizes: Sequence[int] = (256,),
        inhibitory_fraction: float = 0.2,
        parametrization: Parametrization = "exp",
        sparsity: float = 0.0,
        dale: bool = True,
        init_sigma: float = 0.5,
        input_mean: float | Sequence[float] = 0.5,
        input_std: float | Sequence[float] = 0.5,
        seed: int | None = None,
        activation: nn.Module | None = None,
        hidden_bias: bool = True,
    ) -> None:
        super().__init__()
        check_bool("hidden_bias", hidden_bias)
        self.input_shape = check_mlp_sizes(input_shape, hidden_sizes, num_classes)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.normalize = InputNormalization(input_mean, input_std)
        sizes = [math.prod(self.input_shape), *[int(h) for h in hidden_sizes], num_classes]
        with _seeded(seed):  # plain torch layers draw their default init from the global RNG
            self.layers = nn.Sequential(
                *_dense_stack(sizes, dale, sparsity, activation, hidden_bias)
            )
            if dale:
                dale_(self.layers, inhibitory_fraction, parametrization=parametrization,
                      init_sigma=init_sigma, generator=generator)  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalize(_check_input(x, self.input_shape, type(self).__name__))
        return self.layers(x.flatten(1))


class BioConvNet(nn.Module):
    """Convolutional network of conv → activation → 2×2 max-pool blocks, then a hidden layer
    and a readout, all under Dale's law (:func:`dale_`; one sign per input channel).

    Args:
        input_shape: ``(C, H, W)`` of one sample.
        num_classes: Number of output units.
        channels: Output channels of each conv block.
        hidden_size: Width of the fully connected hidden layer (0 to skip it).
        inhibitory_fraction: Fraction of inhibitory presynaptic units per layer, in [0, 1).
        parametrization: ``"exp"`` (Dale's law by construction) or ``"plain"``.
        sparsity: Fraction of units silenced by k-WTA; 0 uses a plain ReLU.
        dale: Put every layer under Dale's law (True) or keep torch's default layers (False).
        init_sigma: Standard deviation of the lognormal initialisation's ``log|w|``.
        input_mean: Normalisation mean (scalar or per channel).
        input_std: Normalisation std (scalar or per channel).
        seed: Optional seed for a reproducible architecture.
        activation: A module used (copied) after every conv and hidden layer instead of the
            ReLU / k-WTA that ``sparsity`` selects, e.g. :class:`SoftWinnerTakeAll`.
        hidden_bias: Give the conv and hidden layers a bias (the readout always has one);
            ``False`` with a Hebbian rule, which never trains it.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64),
        hidden_size: int = 128,
        inhibitory_fraction: float = 0.2,
        parametrization: Parametrization = "exp",
        sparsity: float = 0.0,
        dale: bool = True,
        init_sigma: float = 0.5,
        input_mean: float | Sequence[float] = 0.5,
        input_std: float | Sequence[float] = 0.5,
        seed: int | None = None,
        activation: nn.Module | None = None,
        hidden_bias: bool = True,
    ) -> None:
        super().__init__()
        check_bool("hidden_bias", hidden_bias)
        self.input_shape = image_shape(input_shape)
        check_positive_ints("channels", channels)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.normalize = InputNormalization(input_mean, input_std)
        c, h, w = self.input_shape
        features: list[nn.Module] = []
        with _seeded(seed):
            for out_c in channels:
                features += [_layer(dale, nn.Conv2d, c, out_c, 3, padding=1, bias=hidden_bias),
                             _activation(sparsity, activation), nn.MaxPool2d(2)]
                c, h, w = out_c, h // 2, w // 2
            self.features = nn.Sequential(*features)
            sizes = [c * h * w] + ([hidden_size] if hidden_size > 0 else []) + [num_classes]
            self.head = nn.Sequential(
                nn.Flatten(),
                *_dense_stack(sizes, dale, sparsity, activation, hidden_bias),
            )
            if dale:  # convolutions first, then the head: 0.1.0's order of random draws
                dale_(self, inhibitory_fraction, parametrization=parametrization,
                      init_sigma=init_sigma, generator=generator)  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalize(_check_input(x, self.input_shape, type(self).__name__))
        return self.head(self.features(x))
