"""Re-splitting loaded data (other seed, other K, subset of classes) without reloading it.

The protocols train dozens of small models on splits of one data set; decoding CIFAR-10's
JPEGs once instead of once per (K, seed) is most of the wall-clock on a small machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from .base import SplitDataModule


def dataset_labels(dataset: Dataset) -> Tensor:
    """The int64 label of every item, read from ``targets``/tensors when possible."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].long()
    if isinstance(dataset, _RemappedLabels):
        return dataset.labels
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets, dtype=torch.long)
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


class _RemappedLabels(Dataset):
    """Items ``indices`` of ``dataset`` with labels ``labels`` (e.g. remapped to 0..n-1)."""

    def __init__(self, dataset: Dataset, indices: Tensor, labels: Tensor) -> None:
        self.dataset, self.indices, self.labels = dataset, indices.tolist(), labels.long()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.dataset[self.indices[i]][0], self.labels[i]

    def __getitems__(self, items: list[int]) -> list[tuple[Tensor, Tensor]]:
        idx = [self.indices[i] for i in items]
        if callable(getattr(self.dataset, "__getitems__", None)):
            xs = [s[0] for s in self.dataset.__getitems__(idx)]
        else:
            xs = [self.dataset[i][0] for i in idx]
        return list(zip(xs, self.labels[torch.as_tensor(items)].unbind(0), strict=True))


class PreloadedDataModule(SplitDataModule):
    """A :class:`SplitDataModule` over data that is already loaded.

    Use :meth:`from_datamodule` to load any split data module once and :meth:`resplit` to
    get cheap copies with another ``seed``, ``samples_per_class`` or set of classes.
    """

    def __init__(
        self,
        pool: Dataset,
        pool_labels: Tensor,
        test: Dataset,
        input_shape: Sequence[int],
        num_classes: int,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        samples_per_class: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        input_mean: Any = 0.5,
        input_std: Any = 0.5,
        max_shift: int = 0,
    ) -> None:
        super().__init__(
            batch_size, val_fraction, samples_per_class, seed, num_workers, max_shift=max_shift
        )
        self._pool, self._labels, self._test = pool, pool_labels.long(), test
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.input_mean, self.input_std = input_mean, input_std

    @classmethod
    def from_datamodule(cls, datamodule: SplitDataModule, **overrides: Any) -> PreloadedDataModule:
        """Load ``datamodule``'s data once; split settings are copied unless overridden."""
        pool, labels, test = datamodule.load_pool_and_test()
        kwargs = {**_split_settings(datamodule), **overrides}
        return cls(pool, labels, test, datamodule.input_shape, datamodule.num_classes, **kwargs)

    def load_pool_and_test(self) -> tuple[Dataset, Tensor, Dataset]:
        return self._pool, self._labels, self._test

    def resplit(
        self, classes: Sequence[int] | None = None, **overrides: Any
    ) -> PreloadedDataModule:
        """A copy with other split settings; ``classes`` keeps only those classes (train
        and test) and relabels them ``0..len(classes)-1`` in the given order."""
        kwargs = {**_split_settings(self), **overrides}
        if classes is None:
            return PreloadedDataModule(
                self._pool, self._labels, self._test, self.input_shape, self.num_classes,
                **kwargs,
            )  # fmt: skip
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c < self.num_classes]
        if bad or len(set(classes)) != len(classes) or len(classes) < 2:
            raise ValueError(
                f"classes={classes!r} is invalid: need >= 2 distinct labels in "
                f"[0, {self.num_classes})."
            )
        pool = _subset(self._pool, self._labels, classes)
        test = _subset(self._test, dataset_labels(self._test), classes)
        return PreloadedDataModule(
            pool, pool.labels, test, self.input_shape, len(classes), **kwargs
        )


def _split_settings(datamodule: SplitDataModule) -> dict[str, Any]:
    """The constructor arguments that define how ``datamodule`` splits and serves its data."""
    return {
        "batch_size": datamodule.batch_size,
        "val_fraction": datamodule.val_fraction,
        "samples_per_class": datamodule.samples_per_class,
        "seed": datamodule.seed,
        "num_workers": datamodule.num_workers,
        "input_mean": datamodule.input_mean,
        "input_std": datamodule.input_std,
        "max_shift": datamodule.max_shift,
    }


def _subset(dataset: Dataset, labels: Tensor, classes: list[int]) -> _RemappedLabels:
    mapping = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
    mapping[torch.as_tensor(classes)] = torch.arange(len(classes))
    keep = torch.nonzero(mapping[labels] >= 0).flatten()
    return _RemappedLabels(dataset, keep, mapping[labels[keep]])


__all__ = ["PreloadedDataModule", "dataset_labels"]
