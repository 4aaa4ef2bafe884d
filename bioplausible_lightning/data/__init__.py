"""LightningDataModules: embedded digits (default), MNIST, CIFAR-10 / ImageFolder."""

from .augment import random_shift, shift_generator, shifted_copies
from .base import SplitDataModule, tensor_dataset
from .cifar import CIFAR10DataModule, ImageFolderDataModule, load_image_folder
from .digits import DigitsDataModule, load_digits_tensors
from .mnist import MNISTDataModule, UInt8ImageDataset
from .preloaded import PreloadedDataModule, dataset_labels
from .sampling import (
    DistributedEpochSeededSampler,
    EpochSeededSampler,
    ResumableDataLoader,
    samples_per_class_subset,
    stratified_split,
)

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "DistributedEpochSeededSampler",
    "EpochSeededSampler",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "PreloadedDataModule",
    "ResumableDataLoader",
    "SplitDataModule",
    "UInt8ImageDataset",
    "dataset_labels",
    "load_digits_tensors",
    "load_image_folder",
    "random_shift",
    "samples_per_class_subset",
    "shift_generator",
    "shifted_copies",
    "stratified_split",
    "tensor_dataset",
]
