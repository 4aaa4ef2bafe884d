"""bioplausible-lightning: backprop-free, biologically plausible learning for PyTorch Lightning."""

from .callbacks import DaleLawMonitor, SparsityMonitor, WeightDistributionMonitor
from .data import DigitsDataModule
from .module import BackpropModule, ClassifierModule, PerturbationModule
from .nn import BioConvNet, BioMLP, DaleConv2d, DaleLinear, InputNormalization, KWinnersTakeAll
from .rules import NodePerturbation, PerturbationRule, RuleOutput, WeightPerturbation

__version__ = "0.1.0"

__all__ = [
    "BackpropModule",
    "BioConvNet",
    "BioMLP",
    "ClassifierModule",
    "DaleLawMonitor",
    "DaleConv2d",
    "DaleLinear",
    "DigitsDataModule",
    "InputNormalization",
    "KWinnersTakeAll",
    "NodePerturbation",
    "PerturbationModule",
    "PerturbationRule",
    "RuleOutput",
    "SparsityMonitor",
    "WeightDistributionMonitor",
    "WeightPerturbation",
]
