"""bioplausible-lightning: backprop-free, biologically plausible learning for PyTorch Lightning."""

from .callbacks import DaleLawMonitor, SparsityMonitor, WeightDistributionMonitor
from .data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule, MNISTDataModule
from .dopamine import DopamineStepSize
from .evaluation import AttackConfig, RobustnessCallback, evaluate_robustness, run_comparison
from .module import BackpropModule, ClassifierModule, PerturbationModule
from .nn import (
    BioConvNet,
    BioMLP,
    DaleExp,
    HebbianMLP,
    InputNormalization,
    KWinnersTakeAll,
    LebesguePower,
    RectifiedPower,
    SoftHebbConvNet,
    SoftWinnerTakeAll,
    Triangle,
    dale_,
    lebesgue_,
)
from .nn import DaleConv2d as DaleConv2d  # deprecated factories: importable, not in __all__
from .nn import DaleLinear as DaleLinear
from .rules import (
    Backprop,
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
    "Backprop",
    "BackpropModule",
    "BioConvNet",
    "BioMLP",
    "CIFAR10DataModule",
    "CompetitiveHebbian",
    "CompositeRule",
    "ClassifierModule",
    "DaleExp",
    "DaleLawMonitor",
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
    "dale_",
    "evaluate_robustness",
    "lebesgue_",
    "run_comparison",
]
