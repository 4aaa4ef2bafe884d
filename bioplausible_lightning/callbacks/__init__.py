"""Monitors that work with any LightningModule and any logger (or none).

Add one line to a Trainer, e.g. ``Trainer(callbacks=[DaleLawMonitor()])``, to watch sign
consistency, activity sparsity or lognormal weights emerge, or to measure them on a model
trained by backprop.
"""

from .base import Monitor
from .dale import DaleLawMonitor
from .sparsity import SparsityMonitor
from .weights import WeightDistributionMonitor

__all__ = ["DaleLawMonitor", "Monitor", "SparsityMonitor", "WeightDistributionMonitor"]
