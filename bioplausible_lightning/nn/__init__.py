"""Plain-torch building blocks (no Lightning import)."""

from .activations import KWinnersTakeAll, RectifiedPower, SoftWinnerTakeAll, Triangle
from .dale import DaleConv2d, DaleLinear
from .lebesgue import LebesguePower, lebesgue_
from .models import BioConvNet, BioMLP, InputNormalization
from .peers import HebbianMLP, SoftHebbConvNet

__all__ = [
    "BioConvNet",
    "BioMLP",
    "DaleConv2d",
    "DaleLinear",
    "HebbianMLP",
    "InputNormalization",
    "KWinnersTakeAll",
    "LebesguePower",
    "RectifiedPower",
    "SoftHebbConvNet",
    "SoftWinnerTakeAll",
    "Triangle",
    "lebesgue_",
]
