"""Seeded splits and samplers shared by every data module (pure torch, no Lightning)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices so that ``fraction`` of *each class* goes to the second part.

    Returns ``(first, second)`` index tensors, disjoint and together covering every index.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction={fraction!r} is invalid: allowed is a float in [0, 1).")
    generator = torch.Generator().manual_seed(seed)
    first, second = [], []
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        n_second = int(round(fraction * idx.numel()))
        second.append(idx[:n_second])
        first.append(idx[n_second:])
    return torch.cat(first).sort().values, torch.cat(second).sort().values


def samples_per_class_subset(labels: Tensor, samples_per_class: int, seed: int) -> Tensor:
    """Indices of exactly ``samples_per_class`` examples of every class (low-shot training).

    Raises ``ValueError`` naming the class that has too few examples.
    """
    if samples_per_class < 1:
        raise ValueError(
            f"samples_per_class={samples_per_class!r} is invalid: it must be an int >= 1 or None."
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls).flatten()
        if idx.numel() < samples_per_class:
            raise ValueError(
                f"samples_per_class={samples_per_class} is invalid: class {int(cls)} has only "
                f"{idx.numel()} training examples."
            )
        chosen.append(idx[torch.randperm(idx.numel(), generator=generator)[:samples_per_class]])
    return torch.cat(chosen).sort().values


class EpochSeededSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` at the start of every epoch, so a run resumed from
    a checkpoint sees exactly the batches the uninterrupted run would have seen; a plain
    ``shuffle=True`` draws from the global RNG and would not.
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples
