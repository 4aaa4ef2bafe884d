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
