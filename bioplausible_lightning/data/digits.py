"""The embedded default data: scikit-learn's handwritten digits (no download)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._validation import check_int, check_probability
from .base import SplitDataModule, tensor_dataset
from .sampling import stratified_split


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """All 1,797 8×8 digits as ``(N, 1, 8, 8)`` floats in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


class DigitsDataModule(SplitDataModule):
    """scikit-learn's digits (real handwritten digits, shipped inside scikit-learn).

    A fixed, stratified ``test_fraction`` of the 1,797 images is the test split (by
    ``split_seed``, independent of ``seed`` so that runs with different seeds share a test
    set); validation and ``samples_per_class`` are drawn from the rest.

    Args:
        batch_size: Mini-batch size.
        val_fraction: Fraction of the training pool held out for validation.
        test_fraction: Fraction of all images held out for testing.
        samples_per_class: Train on exactly this many examples per class (low-shot).
        seed: Seed for the validation split, low-shot draw and shuffling.
        split_seed: Seed for the test split.
        num_workers: DataLoader workers.
        max_shift: Random shift of every training image, in pixels (0: none; see
            :class:`SplitDataModule`).
    """

    input_shape = (1, 8, 8)
    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.25,
        samples_per_class: int | None = None,
        seed: int = 0,
        split_seed: int = 0,
        num_workers: int = 0,
        max_shift: int = 0,
    ) -> None:
        super().__init__(
            batch_size, val_fraction, samples_per_class, seed, num_workers, max_shift=max_shift
        )
        check_int("split_seed", split_seed)
        check_probability("test_fraction", test_fraction)
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    def load_pool_and_test(self) -> tuple[Dataset, Tensor, Dataset]:
        images, labels = load_digits_tensors()
        pool_idx, test_idx = stratified_split(labels, self.test_fraction, self.split_seed)
        pool = tensor_dataset(images[pool_idx], labels[pool_idx])
        test = tensor_dataset(images[test_idx], labels[test_idx])
        return pool, labels[pool_idx], test
