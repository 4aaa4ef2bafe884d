"""bioplausible-lightning: backprop-free, biologically plausible learning for PyTorch Lightning."""

from .callbacks import DaleLawMonitor, SparsityMonitor, WeightDistributionMonitor
from .data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule, MNISTDataModule
from .dopamine import DopamineStepSize
from .evaluation import AttackConfig, RobustnessCallback, evaluate_robustness, run_comparison
from .module import BackpropModule, ClassifierModule, PerturbationModule
from .nn import BioConvNet, BioMLP, DaleConv2d, DaleLinear, InputNormalization, KWinnersTakeAll
from .rules import NodePerturbation, PerturbationRule, RuleOutput, WeightPerturbation

__version__ = "0.1.0"

__all__ = [
    "AttackConfig",
    "BackpropModule",
    "BioConvNet",
    "BioMLP",
    "CIFAR10DataModule",
    "ClassifierModule",
    "DaleConv2d",
    "DaleLawMonitor",
    "DaleLinear",
    "DigitsDataModule",
    "DopamineStepSize",
    "ImageFolderDataModule",
    "InputNormalization",
    "KWinnersTakeAll",
    "MNISTDataModule",
    "NodePerturbation",
    "PerturbationModule",
    "PerturbationRule",
    "RobustnessCallback",
    "RuleOutput",
    "SparsityMonitor",
    "WeightDistributionMonitor",
    "WeightPerturbation",
    "evaluate_robustness",
    "run_comparison",
]
