"""Plain-torch building blocks (no Lightning import)."""

from .activations import KWinnersTakeAll, RectifiedPower, SoftWinnerTakeAll, Triangle
from .dale import DaleConv2d as DaleConv2d  # deprecated factories: importable, unlisted
from .dale import DaleExp, dale_
from .dale import DaleLinear as DaleLinear
from .lebesgue import LebesguePower, lebesgue_
from .models import BioConvNet, BioMLP, InputNormalization
from .parametrization import make_picklable
from .peers import HebbianMLP, SoftHebbConvNet

__all__ = [
    "BioConvNet",
    "BioMLP",
    "DaleExp",
    "HebbianMLP",
    "InputNormalization",
    "KWinnersTakeAll",
    "LebesguePower",
    "RectifiedPower",
    "SoftHebbConvNet",
    "SoftWinnerTakeAll",
    "Triangle",
    "dale_",
    "lebesgue_",
    "make_picklable",
]
