"""Learning rules that estimate gradients without ``backward()``."""

from .base import PerturbationRule, RuleOutput
from .node import NodePerturbation
from .weight import WeightPerturbation

__all__ = ["NodePerturbation", "PerturbationRule", "RuleOutput", "WeightPerturbation"]
