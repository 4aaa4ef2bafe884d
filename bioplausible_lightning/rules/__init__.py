"""Learning rules: gradient sources; all but :class:`Backprop` never call ``backward()``."""

from .backprop import Backprop
from .base import PerturbationRule
from .composite import CompositeRule, HebbianPerturbation
from .hebbian import CompetitiveHebbian
from .node import NodePerturbation
from .presets import KrotovHopfield, SoftHebb
from .rule import LearningRule, OwnOptimizer, RuleOutput
from .weight import WeightPerturbation

__all__ = [
    "Backprop",
    "CompetitiveHebbian",
    "CompositeRule",
    "HebbianPerturbation",
    "KrotovHopfield",
    "LearningRule",
    "NodePerturbation",
    "OwnOptimizer",
    "PerturbationRule",
    "RuleOutput",
    "SoftHebb",
    "WeightPerturbation",
]
