"""How a trained network spends its units: selectivity, sparseness, silence.

The paper contrasts *task-specific* encoding (units tuned to one class) with
*feature-specific* encoding (units shared across classes), and *resource allocation* (how
many units are used at all, and how they divide among classes).  Per hidden layer:

- class selectivity of each unit (Morcos et al. 2018): ``(μ_max − μ_rest) / (μ_max + μ_rest)``
  of its class-mean responses; 0 = equal response to all classes, 1 = one class only;
- population and lifetime sparseness (Treves–Rolls, Vinje–Gallant normalisation, from
  :mod:`bioplausible_lightning.metrics.activity`);
- fraction of silent units (never active on the data);
- how active units divide among preferred classes (normalised entropy, 1 = evenly).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_probability
from ..metrics.activity import (
    activity_matrix,
    dead_fraction,
    lifetime_sparseness,
    population_sparseness,
)
from ..metrics.layers import ACTIVATION_TYPES
from ._common import Data, batches, collect, eval_mode, model_device


def default_activation_layers(model: nn.Module) -> list[str]:
    """Names of the model's activation modules (ReLU, k-WTA, ...): its hidden layers."""
    names = [n for n, m in model.named_modules() if n and isinstance(m, ACTIVATION_TYPES)]
    if not names:
        raise ValueError(
            "The model has no activation module (ReLU, KWinnersTakeAll, ...); pass layers=[...]."
        )
    return names


@torch.no_grad()
def collect_activations(
    model: nn.Module,
    data: Data,
    layers: list[str] | None = None,
    max_samples: int | None = 2000,
    batch_size: int = 500,
) -> tuple[dict[str, Tensor], Tensor]:
    """Outputs of ``layers`` (default: every activation module) on ``data``, and labels."""
    x, y = collect(data, max_samples)
    names = layers if layers is not None else default_activation_layers(model)
    store: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = []
    try:
        for name in names:
            module = model.get_submodule(name)
            handles.append(
                module.register_forward_hook(
                    lambda m, a, out, name=name: store[name].append(out.detach().float().cpu())
                )
            )
        device = model_device(model, x.device)
        with eval_mode(model):
            for s in batches(x.shape[0], batch_size):
                model(x[s].to(device))
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in store.items()}, y.cpu()


def unit_responses(activity: Tensor) -> Tensor:
    """``(N, units)`` magnitudes; feature maps ``(N, C, H, W)`` are averaged over space."""
    r = activity.abs()
    return r.flatten(2).mean(2) if r.ndim > 2 else r.reshape(r.shape[0], -1)


def class_selectivity(responses: Tensor, labels: Tensor, num_classes: int | None = None) -> Tensor:
    """Per-unit selectivity index in [0, 1] (nan for silent units).

    ``responses`` is ``(N, units)`` non-negative; ``labels`` is ``(N,)``.
    """
    num_classes = num_classes or int(labels.max()) + 1
    means = torch.stack(
        [
            responses[labels == c].mean(0) if (labels == c).any()
            else torch.full((responses.shape[1],), math.nan)
            for c in range(num_classes)
        ]
    )  # fmt: skip
    means = means[~torch.isnan(means).any(1)]
    if means.shape[0] < 2:
        raise ValueError("class selectivity needs examples of at least two classes.")
    top = means.max(0).values
    rest = (means.sum(0) - top) / (means.shape[0] - 1)
    denom = top + rest
    return torch.where(denom > 0, (top - rest) / denom.clamp_min(1e-30), torch.nan)


def preferred_class(responses: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """The class with the largest mean response, per unit."""
    means = torch.stack(
        [responses[labels == c].mean(0) if (labels == c).any()
         else torch.full((responses.shape[1],), -math.inf) for c in range(num_classes)]
    )  # fmt: skip
    return means.argmax(0)


def layer_representation(
    activity: Tensor, labels: Tensor, num_classes: int, selective_threshold: float = 0.5
) -> dict[str, Any]:
    """All representation measures of one layer's activity ``(N, units[, H, W])``."""
    check_probability("selective_threshold", selective_threshold)
    matrix = activity_matrix(activity, 1)
    responses = unit_responses(activity)
    active = (responses > 1e-6).any(0)
    sel = class_selectivity(responses, labels, num_classes)[active]
    pref = preferred_class(responses, labels, num_classes)[active]
    counts = torch.bincount(pref, minlength=num_classes).float()
    p = counts / counts.sum().clamp_min(1)
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum() / math.log(num_classes))
    n_active = int(active.sum())
    task = int((sel > selective_threshold).sum())
    return {
        "units": int(responses.shape[1]),
        "silent_fraction": dead_fraction(matrix),
        "population_sparseness": population_sparseness(matrix),
        "lifetime_sparseness": lifetime_sparseness(matrix),
        "selectivity_mean": float(sel.mean()) if n_active else math.nan,
        "selectivity_median": float(sel.median()) if n_active else math.nan,
        "task_specific_fraction": task / n_active if n_active else math.nan,
        "feature_specific_fraction": (n_active - task) / n_active if n_active else math.nan,
        "units_per_class": [int(c) for c in counts.tolist()],
        "allocation_entropy": entropy if n_active else math.nan,
    }


def representation_report(
    model: nn.Module,
    data: Data,
    layers: list[str] | None = None,
    num_classes: int | None = None,
    max_samples: int | None = 2000,
    selective_threshold: float = 0.5,
) -> dict[str, dict[str, Any]]:
    """Per hidden layer: selectivity, sparseness, silent units and class allocation.

    A unit counts as *task-specific* when its selectivity exceeds ``selective_threshold``,
    else *feature-specific*; silent units count as neither.
    """
    acts, labels = collect_activations(model, data, layers, max_samples)
    num_classes = num_classes or int(labels.max()) + 1
    return {
        name: layer_representation(a, labels, num_classes, selective_threshold)
        for name, a in acts.items()
    }


__all__ = [
    "class_selectivity",
    "collect_activations",
    "default_activation_layers",
    "layer_representation",
    "preferred_class",
    "representation_report",
    "unit_responses",
]
