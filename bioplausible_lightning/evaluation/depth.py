"""Test accuracy vs depth, for the perturbation rule and backprop under one budget.

Perturbation estimates get noisier as more units are perturbed, and sign-constrained
deep nets are hard to keep in a good regime; the sweep shows where each rule stops
improving (or breaks) when hidden layers are added to the same architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .._validation import check_min_int
from ..data.base import SplitDataModule
from ._common import accuracy
from .training import ModuleFactory, fit


@dataclass
class DepthResult:
    """``accuracy[name][i]`` is the test accuracy of trainer ``name`` at ``depths[i]``."""

    depths: list[int]
    accuracy: dict[str, list[float]] = field(default_factory=dict)
    protocol: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def depth_sweep(
    model_factory: Callable[[int], nn.Module],
    module_factories: Mapping[str, ModuleFactory],
    datamodule: SplitDataModule,
    depths: Sequence[int] = (1, 2, 4, 8, 16),
    max_epochs: int | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    accelerator: str = "auto",
) -> DepthResult:
    """Train ``model_factory(depth)`` with every module factory for the same budget.

    ``model_factory`` must build identical models for identical ``depth`` (seed it), so each
    learning rule starts from the same weights.  ``accelerator`` goes to every fit.
    """
    if not depths:
        raise ValueError("depths=[] is invalid: give at least one number of hidden layers.")
    for d in depths:
        check_min_int("depths[i]", d)
    budget = f"{max_epochs} epochs" if max_epochs is not None else f"{max_steps} steps"
    result = DepthResult(
        depths=[int(d) for d in depths],
        protocol=(
            f"same architecture with 1 hidden layer repeated D times, {budget} per run, "
            f"seed {seed}; accuracy on the full test set"
        ),
    )
    datamodule.setup("fit")
    test = datamodule.test_dataloader()
    for name, make_module in module_factories.items():
        accs = []
        for depth in result.depths:
            model = model_factory(depth)
            fit(make_module(model), datamodule, max_epochs, max_steps, seed=seed,
                accelerator=accelerator)  # fmt: skip
            accs.append(accuracy(model, test))
        result.accuracy[name] = accs
    return result


__all__ = ["DepthResult", "depth_sweep"]
