"""LightningDataModules: embedded digits (default), MNIST, CIFAR-10 / ImageFolder."""

from .base import SplitDataModule, tensor_dataset
from .digits import DigitsDataModule, load_digits_tensors
from .sampling import EpochSeededSampler, samples_per_class_subset, stratified_split

__all__ = [
    "DigitsDataModule",
    "EpochSeededSampler",
    "SplitDataModule",
    "load_digits_tensors",
    "samples_per_class_subset",
    "stratified_split",
    "tensor_dataset",
]

from .cifar import CIFAR10DataModule, ImageFolderDataModule, load_image_folder  # noqa: E402
from .mnist import MNISTDataModule, UInt8ImageDataset  # noqa: E402

__all__ += [
    "CIFAR10DataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "UInt8ImageDataset",
    "load_image_folder",
]
