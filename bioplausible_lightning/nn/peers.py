"""The architectures of the Hebbian peers (Krotov–Hopfield, SoftHebb), in plain torch layers.

Any model works with the rules; these reproduce the peers' networks so that their presets
(:mod:`bioplausible_lightning.rules.presets`) can be run and compared on the same data.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from .._validation import check_bool, check_choice, check_fraction, check_positive_ints
from .activations import Triangle
from .lebesgue import lebesgue_
from .models import (
    InputNormalization,
    _check_input,
    _seeded,
    check_mlp_sizes,
    image_shape,
)

HiddenInit = Literal["torch", "normal", "positive", "wide"]
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
ReadoutInit = Literal["torch", "zeros"]
#: Expected norm of a unit's weights under ``init="wide"`` (SoftHebb's conv layers).
WIDE_INIT_NORM = 25.0


def _init_hidden(weight: Tensor, init: HiddenInit) -> None:
    """``"normal"``: N(0, 1) (Krotov–Hopfield); ``"positive"``: |N(0, 1)| (SoftHebb's
    all-positive MLP start); ``"wide"``: N(0, 25² / fan-in), units of norm ≈ 25 (SoftHebb's
    conv start); ``"torch"``: leave the default init (norm ≈ 0.58).  The first three start
    far from the unit sphere the rules converge to, which is what drives SoftHebb's
    norm-dependent rate: from the default init its units barely move in one epoch."""
    if init == "torch":
        return
    with torch.no_grad():
        weight.normal_()
        if init == "positive":
            weight.abs_()
        elif init == "wide":
            weight.mul_(WIDE_INIT_NORM / math.sqrt(weight[0].numel()))


def _check_init(init: str) -> None:
    check_choice("init", init, get_args(HiddenInit))


class HebbianMLP(nn.Module):
    """Hidden ``nn.Linear`` layers without bias for a Hebbian rule, then a linear readout.

    Args:
        input_shape: Shape of one sample (flat inputs are accepted).
        num_classes: Readout units.
        hidden_sizes: Width of each hidden layer.
        activation: Module applied (copied) after each hidden layer, e.g.
            :class:`RectifiedPower` (Krotov–Hopfield) or :class:`SoftWinnerTakeAll`
            (SoftHebb); default ``nn.ReLU``.
        lebesgue_p: Give the hidden layers the Lebesgue-p response (Krotov–Hopfield: 3);
            None keeps the dot product.
        init: Hidden synapses' start: ``"torch"`` (default init, mixed signs),
            ``"normal"`` (N(0, 1), Krotov–Hopfield) or ``"positive"`` (SoftHebb).
        input_mean, input_std: Input normalisation inside the model (default: raw pixels).
        seed: Seed of the initialisation.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        hidden_sizes: Sequence[int] = (2000,),
        activation: nn.Module | None = None,
        lebesgue_p: float | None = None,
        init: HiddenInit = "torch",
        input_mean: float | Sequence[float] = 0.0,
        input_std: float | Sequence[float] = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = check_mlp_sizes(input_shape, hidden_sizes, num_classes)
        _check_init(init)
        self.normalize = InputNormalization(input_mean, input_std)
        activation = activation if activation is not None else nn.ReLU()
        sizes = [math.prod(self.input_shape), *[int(h) for h in hidden_sizes]]
        layers: list[nn.Module] = []
        with _seeded(seed):
            for n_in, n_out in zip(sizes[:-1], sizes[1:]):
                hidden = nn.Linear(n_in, n_out, bias=False)
                if lebesgue_p is not None:
                    lebesgue_(hidden, lebesgue_p)
                    _init_hidden(hidden.parametrizations.weight.original, init)  # synapses θ
                else:
                    _init_hidden(hidden.weight, init)
                layers += [hidden, copy.deepcopy(activation)]
            layers.append(nn.Linear(sizes[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalize(_check_input(x, self.input_shape, type(self).__name__))
        return self.layers(x.flatten(1))


class SoftHebbConvNet(nn.Module):
    """SoftHebb's CIFAR-10 network (Journé et al. 2023): three blocks of non-affine
    BatchNorm → conv (no bias) → triangle activation → pooling, then dropout and a linear
    readout (optionally on standardised features, from a silent start: the few-shot readout).

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: Readout units.
        channels: The three blocks' channels: (24, 96, 384) is a quarter of the paper's
            width, (96, 384, 1536) the paper's.
        kernel_sizes: Conv kernel size of each block (the paper: 5, 3, 3; "same" padding).
        triangle_powers: Exponent of each block's triangle activation.
        dropout: Dropout before the readout.
        init: Hidden synapses' start (see :class:`HebbianMLP`; ``"wide"`` is SoftHebb's).
        padding_mode: The convolutions' padding (the paper's: ``"reflect"``).
        readout_norm: Standardise each feature the readout sees (a non-affine
            ``BatchNorm1d`` after the flatten, like the blocks' own input normalisation).
            The pooled features are all positive and share a large common mode, which a
            first-order readout unlearns slowly, too slowly for the few steps of a few-shot
            run.  Frozen with the blocks' BatchNorm by
            ``HebbianPerturbation(freeze_normalization=True)``; until then (and under
            backprop) a training batch needs more than one example, as for any
            ``BatchNorm1d``.
        readout_init: ``"zeros"``: the readout starts silent, so plain SGD keeps its weights
            in the span of the features it has seen (a prototype-like classifier) instead of
            adding the random start's response to every test image; ``"torch"``: default init.
        seed: Seed of the initialisation.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        channels: Sequence[int] = (24, 96, 384),
        kernel_sizes: Sequence[int] = (5, 3, 3),
        triangle_powers: Sequence[float] = (0.7, 1.4, 1.0),
        dropout: float = 0.5,
        init: HiddenInit = "torch",
        padding_mode: PaddingMode = "reflect",
        readout_norm: bool = False,
        readout_init: ReadoutInit = "torch",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = image_shape(input_shape)
        check_choice("padding_mode", padding_mode, get_args(PaddingMode))
        check_bool("readout_norm", readout_norm)
        check_choice("readout_init", readout_init, get_args(ReadoutInit))
        check_positive_ints("channels", channels)
        check_positive_ints("kernel_sizes", kernel_sizes)
        if not (len(channels) == len(kernel_sizes) == len(triangle_powers)):
            raise ValueError(
                f"channels={list(channels)!r}, kernel_sizes={list(kernel_sizes)!r} and "
                f"triangle_powers={list(triangle_powers)!r} are invalid: give one entry per "
                "block in each."
            )
        check_fraction("dropout", dropout)
        _check_init(init)
        c, h, w = self.input_shape
        blocks: list[nn.Module] = []
        with _seeded(seed):
            blocks_spec = zip(channels, kernel_sizes, triangle_powers)
            for i, (out_c, kernel, power) in enumerate(blocks_spec):
                conv = nn.Conv2d(c, out_c, kernel, padding=kernel // 2, bias=False,
                                 padding_mode=padding_mode)  # fmt: skip
                _init_hidden(conv.weight, init)
                last = i == len(channels) - 1
                pool = nn.AvgPool2d(2, 2) if last else nn.MaxPool2d(4, 2, padding=1)
                blocks += [nn.BatchNorm2d(c, affine=False), conv, Triangle(power), pool]
                c, h, w = out_c, h // 2, w // 2
            self.features = nn.Sequential(*blocks)
            n_features = c * h * w
            norm = [nn.BatchNorm1d(n_features, affine=False)] if readout_norm else []
            readout = nn.Linear(n_features, num_classes)
            if readout_init == "zeros":
                nn.init.zeros_(readout.weight)
                nn.init.zeros_(readout.bias)
            self.head = nn.Sequential(nn.Flatten(), *norm, nn.Dropout(dropout), readout)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(_check_input(x, self.input_shape, type(self).__name__)))
