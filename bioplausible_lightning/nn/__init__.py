"""Plain-torch building blocks (no Lightning import)."""

from .activations import KWinnersTakeAll, SoftWinnerTakeAll
from .dale import DaleConv2d, DaleLinear
from .models import BioConvNet, BioMLP, InputNormalization

__all__ = [
    "BioConvNet",
    "BioMLP",
    "DaleConv2d",
    "DaleLinear",
    "InputNormalization",
    "KWinnersTakeAll",
    "SoftWinnerTakeAll",
]
