"""Check the paper's claims on your own model and data: adversarial robustness (gradient,
gradient-free, AutoAttack and transfer attacks), few-shot learning (protocols a, b and c),
depth, and representations, each against backprop baselines.  See ``docs/evaluation.md``."""

from ..data.preloaded import PreloadedDataModule, dataset_labels
from ._common import accuracy
from .callback import RobustnessCallback
from .depth import DepthResult, depth_sweep
from .fewshot import (
    PROTOCOL_A,
    PROTOCOL_B,
    PROTOCOL_C,
    Episode,
    EpisodeSampler,
    episodic_few_shot,
    extract_features,
    from_scratch_few_shot,
    linear_probe_few_shot,
    nearest_neighbour_accuracy,
    nearest_prototype_accuracy,
)
from .learners import DEFAULT_LEARNERS, Learner
from .report import (
    ComparisonConfig,
    full_config,
    quick_config,
    run_comparison,
    summary_markdown,
)
from .representations import (
    class_selectivity,
    collect_activations,
    layer_representation,
    representation_report,
)
from .robustness import (
    ATTACKS,
    AttackConfig,
    RobustnessResult,
    adversarial_examples,
    evaluate_robustness,
    robust_accuracy,
)
from .stats import Estimate, mean_ci
from .training import fit

__all__ = [
    "ATTACKS",
    "DEFAULT_LEARNERS",
    "PROTOCOL_A",
    "PROTOCOL_B",
    "PROTOCOL_C",
    "AttackConfig",
    "ComparisonConfig",
    "DepthResult",
    "Episode",
    "EpisodeSampler",
    "Learner",
    "Estimate",
    "PreloadedDataModule",
    "RobustnessCallback",
    "RobustnessResult",
    "accuracy",
    "adversarial_examples",
    "class_selectivity",
    "collect_activations",
    "dataset_labels",
    "depth_sweep",
    "episodic_few_shot",
    "evaluate_robustness",
    "extract_features",
    "fit",
    "from_scratch_few_shot",
    "full_config",
    "layer_representation",
    "linear_probe_few_shot",
    "mean_ci",
    "nearest_neighbour_accuracy",
    "nearest_prototype_accuracy",
    "quick_config",
    "representation_report",
    "robust_accuracy",
    "run_comparison",
    "summary_markdown",
]
