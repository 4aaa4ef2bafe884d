"""Plain-torch building blocks (no Lightning import)."""

from .activations import KWinnersTakeAll, SoftWinnerTakeAll
from .dale import DaleConv2d as DaleConv2d  # deprecated factories: importable, unlisted
from .dale import DaleExp, dale_
from .dale import DaleLinear as DaleLinear
from .models import BioConvNet, BioMLP, InputNormalization

__all__ = [
    "BioConvNet",
    "BioMLP",
    "DaleExp",
    "InputNormalization",
    "KWinnersTakeAll",
    "SoftWinnerTakeAll",
    "dale_",
]
