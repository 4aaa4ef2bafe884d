"""bioplausible-lightning: backprop-free, biologically plausible learning for PyTorch Lightning."""

from .callbacks import DaleLawMonitor, SparsityMonitor, WeightDistributionMonitor
from .data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule, MNISTDataModule
from .dopamine import DopamineStepSize
from .evaluation import AttackConfig, RobustnessCallback, evaluate_robustness, run_comparison
from .module import BackpropModule, ClassifierModule, PerturbationModule
from .nn import (
    BioConvNet,
    BioMLP,
    DaleConv2d,
    DaleLinear,
    HebbianMLP,
    InputNormalization,
    KWinnersTakeAll,
    LebesguePower,
    RectifiedPower,
    SoftHebbConvNet,
    SoftWinnerTakeAll,
    Triangle,
    lebesgue_,
)
from .rules import (
    CompetitiveHebbian,
    CompositeRule,
    HebbianPerturbation,
    KrotovHopfield,
    LearningRule,
    NodePerturbation,
    PerturbationRule,
    RuleOutput,
    SoftHebb,
    WeightPerturbation,
)

__version__ = "0.1.0"

__all__ = [
    "AttackConfig",
    "BackpropModule",
    "BioConvNet",
    "BioMLP",
    "CIFAR10DataModule",
    "CompetitiveHebbian",
    "CompositeRule",
    "ClassifierModule",
    "DaleConv2d",
    "DaleLawMonitor",
    "DaleLinear",
    "DigitsDataModule",
    "HebbianMLP",
    "HebbianPerturbation",
    "KrotovHopfield",
    "LebesguePower",
    "RectifiedPower",
    "SoftHebb",
    "SoftHebbConvNet",
    "Triangle",
    "DopamineStepSize",
    "ImageFolderDataModule",
    "InputNormalization",
    "KWinnersTakeAll",
    "LearningRule",
    "MNISTDataModule",
    "NodePerturbation",
    "PerturbationModule",
    "PerturbationRule",
    "RobustnessCallback",
    "RuleOutput",
    "SoftWinnerTakeAll",
    "SparsityMonitor",
    "WeightDistributionMonitor",
    "WeightPerturbation",
    "evaluate_robustness",
    "lebesgue_",
    "run_comparison",
]
