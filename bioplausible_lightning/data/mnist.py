"""MNIST on torchvision, held in memory as uint8 and served as [0, 1] floats."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import SplitDataModule, download_or_raise

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class UInt8ImageDataset(Dataset):
    """Images stored as ``uint8`` ``(N, C, H, W)``, returned as float32 in [0, 1].

    Four times smaller than float storage (full CIFAR-10 fits in 180 MB), and
    ``__getitems__`` converts a whole batch at once instead of one image at a time.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images has dtype {images.dtype} and shape {tuple(images.shape)}: "
                "expected uint8 of shape (N, C, H, W)."
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels has shape {tuple(labels.shape)}: expected ({images.shape[0]},)."
            )
        self.images = images.contiguous()
        self.targets = labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index].float().div_(255.0), self.targets[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[idx].float().div_(255.0)
        return list(zip(images.unbind(0), self.targets[idx].unbind(0), strict=True))


class MNISTDataModule(SplitDataModule):
    """MNIST (torchvision layout: ``<data_dir>/MNIST/raw/*-ubyte``), images in [0, 1].

    Validation is a stratified ``val_fraction`` of the official training split (by ``seed``);
    ``samples_per_class`` trains on exactly K examples per class; the test split is always
    the official test set, so accuracies at every K are comparable.

    Args:
        data_dir: Root folder; files are expected in ``<data_dir>/MNIST/raw``.
        download: Download with torchvision when the files are missing.
        batch_size: Mini-batch size.
        val_fraction: Fraction of the training split held out for validation.
        samples_per_class: Train on exactly this many examples per class (low-shot).
        seed: Seed for the validation split, low-shot draw and shuffling.
        num_workers: DataLoader workers.
        max_shift: Random shift of every training image, in pixels (0: none; see
            :class:`SplitDataModule`).
    """

    input_shape = (1, 28, 28)
    num_classes = 10
    input_mean = 0.1307
    input_std = 0.3081

    def __init__(
        self,
        data_dir: str | Path = "data",
        download: bool = True,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        samples_per_class: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        max_shift: int = 0,
    ) -> None:
        super().__init__(
            batch_size, val_fraction, samples_per_class, seed, num_workers, max_shift=max_shift
        )
        self.data_dir = Path(data_dir)
        self.download = download

    @property
    def raw_folder(self) -> Path:
        return self.data_dir / "MNIST" / "raw"

    def prepare_data(self) -> None:
        missing = [self.raw_folder / f for f in MNIST_FILES if not (self.raw_folder / f).is_file()]
        if not missing:
            return
        how = (
            "pass download=True (needs internet), or put the four uncompressed MNIST idx files "
            f"in {self.raw_folder} (torchvision layout: <data_dir>/MNIST/raw/)."
        )
        def fetch() -> None:
            from torchvision.datasets import MNIST

            MNIST(str(self.data_dir), train=True, download=True)

        download_or_raise("MNIST", missing, how, self.download, fetch)

    def load_pool_and_test(self) -> tuple[Dataset, Tensor, Dataset]:
        from torchvision.datasets.mnist import read_image_file, read_label_file

        self.prepare_data()
        pool = UInt8ImageDataset(
            read_image_file(str(self.raw_folder / MNIST_FILES[0])).unsqueeze(1),
            read_label_file(str(self.raw_folder / MNIST_FILES[1])),
        )
        test = UInt8ImageDataset(
            read_image_file(str(self.raw_folder / MNIST_FILES[2])).unsqueeze(1),
            read_label_file(str(self.raw_folder / MNIST_FILES[3])),
        )
        return pool, pool.targets, test


__all__ = ["MNISTDataModule", "UInt8ImageDataset"]
