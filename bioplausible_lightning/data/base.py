"""A LightningDataModule over in-memory tensors with seeded train/val/test splits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .._validation import check_fraction, check_int, check_min_int
from .augment import random_shift, shift_generator
from .sampling import (
    DistributedEpochSeededSampler,
    EpochSeededSampler,
    ResumableDataLoader,
    batches_done,
    samples_per_class_subset,
    stratified_split,
)


class SplitDataModule(L.LightningDataModule):
    """Base class: subclasses provide ``(train_pool, test)`` datasets and their labels.

    Validation is carved from the training pool (stratified, by ``seed``); ``samples_per_class``
    then draws a low-shot training set from what is left, so the test set never changes with K.
    ``max_shift > 0`` moves every training image by a random offset of up to that many pixels
    each time a training batch reaches the model (zeros shifted in; validation, test and any
    loop outside ``Trainer.fit``'s training batches see the images as they are): many views
    of a few labelled images.  The offsets depend only on ``(seed, epoch, batch, rank)``, so
    a resumed run is exact.

    Attributes:
        input_mean: Per-channel (or scalar) mean of the inputs, for models' input
            normalisation; subclasses override it with their data's statistics.
        input_std: Per-channel (or scalar) standard deviation of the inputs.
    """

    input_mean: float | tuple[float, ...] = 0.5
    input_std: float | tuple[float, ...] = 0.5

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        samples_per_class: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        max_shift: int = 0,
    ) -> None:
        super().__init__()
        check_min_int("batch_size", batch_size)
        check_min_int("max_shift", max_shift, 0)
        check_fraction("val_fraction", val_fraction)
        if samples_per_class is not None:
            check_min_int("samples_per_class", samples_per_class)
        check_int("seed", seed)
        check_min_int("num_workers", num_workers, 0)
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.num_workers = num_workers
        self.max_shift = max_shift
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # -- subclass API -------------------------------------------------------------------
    def load_pool_and_test(self) -> tuple[Dataset, Tensor, Dataset]:
        """Return ``(train_pool, train_pool_labels, test_set)``."""
        raise NotImplementedError

    # -- Lightning hooks ----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        pool, labels, test = self.load_pool_and_test()
        train_idx, val_idx = stratified_split(labels, self.val_fraction, self.seed)
        if self.samples_per_class is not None:
            chosen = samples_per_class_subset(labels[train_idx], self.samples_per_class, self.seed)
            train_idx = train_idx[chosen]
        self.train_indices, self.val_indices = train_idx, val_idx
        self.train_set = Subset(pool, train_idx.tolist())
        self.val_set = Subset(pool, val_idx.tolist()) if val_idx.numel() else None
        self.test_set = test

    def _loader(
        self, dataset: Dataset, sampler: EpochSeededSampler | None = None,
        loader_cls: type[DataLoader] = DataLoader,
    ) -> DataLoader:  # fmt: skip
        return loader_cls(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by ``(seed, epoch)``; its position within the epoch is checkpointed, so a
        run resumes exactly, mid-epoch included (:class:`ResumableDataLoader`).  Under a
        multi-process Trainer every process gets its own shard of that order
        (:class:`DistributedEpochSeededSampler`), resumable alike."""
        assert self.train_set is not None, "call setup() first"
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            sampler: EpochSeededSampler = DistributedEpochSeededSampler(
                len(self.train_set), trainer.world_size, trainer.global_rank, self.seed
            )
        else:
            sampler = EpochSeededSampler(len(self.train_set), self.seed)
        loader = self._loader(self.train_set, sampler, ResumableDataLoader)
        loader.progress = lambda: batches_done(self.trainer)
        return loader

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Shift the images of a training batch (``max_shift > 0``) by offsets drawn from
        :func:`shift_generator` at the batch's place in the run."""
        trainer = self.trainer
        if not self.max_shift or trainer is None or not trainer.training:
            return batch
        images, *rest = batch
        generator = shift_generator(
            self.seed, trainer.current_epoch,
            trainer.fit_loop.epoch_loop.batch_progress.current.ready, trainer.global_rank,
        )  # fmt: skip
        return type(batch)([random_shift(images, self.max_shift, generator), *rest])

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader:
        assert self.test_set is not None, "call setup() first"
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


def missing_files_error(
    dataset: str, looked_for: list[Path], how: str, cause: BaseException | None = None
) -> FileNotFoundError:
    """An error that names every file looked for and how to provide them."""
    files = "\n  ".join(str(p) for p in looked_for)
    reason = f"\nDownload failed: {type(cause).__name__}: {cause}" if cause is not None else ""
    return FileNotFoundError(
        f"{dataset} files not found. Looked for:\n  {files}{reason}\nTo provide them: {how}"
    )


def download_or_raise(
    dataset: str, missing: list[Path], how: str, download: bool, fetch: Callable[[], None]
) -> None:
    """Call ``fetch`` to download ``missing`` files, or raise an error naming them and ``how``."""
    if not download:
        raise missing_files_error(dataset, missing, how)
    try:
        fetch()
    except Exception as err:  # any network / archive failure
        raise missing_files_error(dataset, missing, how, err) from err


def tensor_dataset(images: Tensor, labels: Tensor) -> TensorDataset:
    """A dataset of float images in [0, 1] and int64 labels."""
    return TensorDataset(images.float().contiguous(), labels.long())


__all__ = ["SplitDataModule", "tensor_dataset"]
