"""Seeded splits and samplers shared by every data module (pure torch, no Lightning)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .._validation import check_fraction, check_min_int


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices so that ``fraction`` of *each class* goes to the second part.

    Returns ``(first, second)`` index tensors, disjoint and together covering every index.
    """
    check_fraction("fraction", fraction)
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
    check_min_int("samples_per_class", samples_per_class)
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
    ``shuffle=True`` draws from the global RNG and would not.  :meth:`resume_at` makes the
    next pass over one epoch start part-way (a run resumed mid-epoch, see
    :class:`ResumableDataLoader`); :meth:`__len__` stays the full epoch.
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, samples to skip), one pass

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Skip the first ``samples_done`` indices of ``epoch``'s permutation, once."""
        self._resume = (epoch, samples_done) if samples_done > 0 else None

    def epoch_order(self) -> list[int]:
        """This epoch's indices, in the order this sampler yields them (before resuming)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == self.epoch:
            order = order[resume[1] :]
        return iter(order)

    def __len__(self) -> int:
        return self.num_samples


class DistributedEpochSeededSampler(EpochSeededSampler, DistributedSampler):
    """:class:`EpochSeededSampler`'s permutation, sharded over ``num_replicas`` processes.

    Every process draws the same ``(seed, epoch)`` permutation, pads it to a multiple of
    ``num_replicas`` with its first indices and keeps every ``num_replicas``-th index from
    ``rank`` on, as ``DistributedSampler`` does: the shards are disjoint (up to the padding)
    and equally long, so every process takes the same number of steps.  At step ``i`` the
    processes together hold the ``i``-th global batch of one process with
    ``batch_size × num_replicas``.  Being a ``DistributedSampler``, Lightning leaves it (and
    the :class:`ResumableDataLoader` around it, whose saved position then resumes every
    process mid-epoch) in place instead of wrapping it in one of its own.
    """

    def __init__(self, num_samples: int, num_replicas: int, rank: int, seed: int = 0) -> None:
        check_min_int("num_replicas", num_replicas)
        if not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(
                f"rank={rank!r} is invalid: allowed is an int in [0, num_replicas={num_replicas})."
            )
        EpochSeededSampler.__init__(self, num_samples, seed)
        # what DistributedSampler's users read (Lightning: ``shuffle``)
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.drop_last = True, False
        self.total_size = -(-num_samples // num_replicas) * num_replicas

    def epoch_order(self) -> list[int]:
        order = super().epoch_order()
        if not order:
            return order
        while len(order) < self.total_size:
            order += order[: self.total_size - len(order)]
        return order[self.rank : self.total_size : self.num_replicas]

    def __len__(self) -> int:
        return self.total_size // self.num_replicas


class ResumableDataLoader(DataLoader):
    """A training ``DataLoader`` over an :class:`EpochSeededSampler` whose position within
    the epoch is saved in checkpoints, so a run resumed mid-epoch (``ModelCheckpoint(
    every_n_train_steps=...)``, ``val_check_interval``) continues with the very batch the
    uninterrupted run would have seen next.

    Lightning saves and restores it through ``state_dict`` / ``load_state_dict`` (the
    stateful-dataloader interface of its fit loop).  :attr:`progress` reports how many
    batches of the current epoch the loop will not repeat on resume; the data modules set
    it from their Trainer.
    """

    progress: Callable[[], int] | None = None

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        epoch = sampler.epoch if isinstance(sampler, EpochSeededSampler) else 0
        return {"epoch": epoch, "batches_done": self.progress() if self.progress else 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if isinstance(self.sampler, EpochSeededSampler) and self.batch_size is not None:
            self.sampler.resume_at(state["epoch"], state["batches_done"] * self.batch_size)


def batches_done(trainer: Any) -> int:
    """Batches of the current epoch a Lightning fit loop resumed from a checkpoint saved now
    would not repeat: a batch whose training step finished counts; one interrupted inside
    its step (an exception checkpoint) is run again.  Mirrors the loop's restart logic."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    if loop is None:
        return 0
    current = loop.batch_progress.current
    finished_step = current.ready == current.started == current.processed
    return current.processed if finished_step else current.completed
