"""Pure statistics behind the monitoring callbacks (no Lightning import).

Use them on any model or tensor, e.g. ``sign_consistency(resnet)`` or
``lognormal_fit(layer.weight)``.
"""

from .activity import (
    activity_matrix,
    activity_sparsity,
    count_nonfinite,
    dead_fraction,
    fraction_near_zero,
    hoyer_sparseness,
    lifetime_sparseness,
    population_sparseness,
    weight_sparsity,
)
from .dale import (
    count_sign_flips,
    dale_statistics,
    ei_ratio,
    presynaptic_matrix,
    sign_consistency,
    sign_pattern,
    unit_sign_consistency,
    unit_signs,
)
from .distribution import (
    LognormalFit,
    fraction_positive,
    ks_statistic,
    log_magnitude_moments,
    lognormal_fit,
    positive_mass_fraction,
    sample_values,
    standardized_moments,
    weight_distribution,
)
from .layers import (
    ACTIVATION_TYPES,
    WEIGHT_LAYER_TYPES,
    default_weight_getter,
    named_weights,
    presynaptic_layout,
)

__all__ = [
    "ACTIVATION_TYPES",
    "WEIGHT_LAYER_TYPES",
    "LognormalFit",
    "activity_matrix",
    "activity_sparsity",
    "count_nonfinite",
    "count_sign_flips",
    "dale_statistics",
    "dead_fraction",
    "default_weight_getter",
    "ei_ratio",
    "fraction_near_zero",
    "fraction_positive",
    "hoyer_sparseness",
    "ks_statistic",
    "lifetime_sparseness",
    "log_magnitude_moments",
    "lognormal_fit",
    "named_weights",
    "population_sparseness",
    "positive_mass_fraction",
    "presynaptic_layout",
    "presynaptic_matrix",
    "sample_values",
    "sign_consistency",
    "sign_pattern",
    "standardized_moments",
    "unit_sign_consistency",
    "unit_signs",
    "weight_distribution",
    "weight_sparsity",
]
