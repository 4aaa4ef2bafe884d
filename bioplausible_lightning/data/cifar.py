"""CIFAR-10 (torchvision pickles or an image folder) and any ImageFolder data set.

Images are decoded once into a uint8 tensor: on a small machine, decoding JPEGs every
epoch costs more than the model's forward pass.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._validation import check_choice, check_positive_ints
from .base import SplitDataModule, download_or_raise, missing_files_error
from .mnist import UInt8ImageDataset

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
ImageMode = Literal["RGB", "L"]
CifarLayout = Literal["auto", "torchvision", "image_folder"]


def _class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        return []
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)


def load_image_folder(
    split_dir: str | Path,
    classes: list[str] | None = None,
    mode: ImageMode = "RGB",
    image_size: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, list[str]]:
    """Decode an ImageFolder split (``<split_dir>/<class>/<image>``) into memory.

    Returns ``(images uint8 (N, C, H, W), labels int64, classes)``; classes are sorted by
    name, as torchvision's ``ImageFolder`` does, unless ``classes`` fixes the order.  Without
    ``image_size`` every image must have the size of the first one.
    """
    from PIL import Image

    split_dir = Path(split_dir)
    classes = list(classes) if classes is not None else _class_folders(split_dir)
    if not classes:
        raise FileNotFoundError(
            f"No class folders found in {split_dir}: expected the ImageFolder layout "
            f"{split_dir}/<class_name>/<image>.png|jpg."
        )
    arrays, labels = [], []
    expected: tuple[int, int] | None = image_size
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            raise FileNotFoundError(f"Class folder {folder} is missing (classes: {classes}).")
        for path in _image_files(folder):
            with Image.open(path) as img:
                img = img.convert(mode)
                if image_size is not None and img.size != (image_size[1], image_size[0]):
                    img = img.resize((image_size[1], image_size[0]), Image.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
            if expected is None:
                expected = array.shape[:2]
            elif array.shape[:2] != tuple(expected):
                raise ValueError(
                    f"{path} is {array.shape[1]}x{array.shape[0]} but earlier images are "
                    f"{expected[1]}x{expected[0]}: pass image_size=(height, width) to resize."
                )
            arrays.append(array)
            labels.append(label)
    if not arrays:
        raise FileNotFoundError(f"No image files found under {split_dir}/<class>/.")
    images = torch.from_numpy(np.stack(arrays))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.tensor(labels, dtype=torch.long), classes


def _check_split_dirs(root: Path, train_dir: str, test_dir: str) -> None:
    dirs = [root / train_dir, root / test_dir]
    missing = [d for d in dirs if not _class_folders(d)]
    if missing:
        raise missing_files_error(
            "ImageFolder",
            missing,
            f"create {dirs[0]}/<class>/<image> and {dirs[1]}/<class>/<image> "
            "(one sub-folder per class, the same class names in both).",
        )


class ImageFolderDataModule(SplitDataModule):
    """Any image-folder data set: ``<root>/<train_dir>/<class>/*`` and ``<root>/<test_dir>/...``.

    Images are decoded once into memory and served in [0, 1]; classes are the sorted
    sub-folder names of the training split (the test split must have the same ones).

    Args:
        root: Folder holding the train and test splits.
        train_dir: Name of the training split's folder.
        test_dir: Name of the test split's folder.
        image_size: ``(height, width)`` to resize to; None requires equal sizes.
        mode: ``"RGB"`` (3 channels) or ``"L"`` (grayscale, 1 channel).
        batch_size: Mini-batch size.
        val_fraction: Fraction of the training split held out for validation.
        samples_per_class: Train on exactly this many examples per class (low-shot).
        seed: Seed for the validation split, low-shot draw and shuffling.
        num_workers: DataLoader workers.
        max_shift: Random shift of every training image, in pixels (0: none; see
            :class:`SplitDataModule`).
        input_mean: Per-channel mean for models' input normalisation (informative).
        input_std: Per-channel std for models' input normalisation (informative).
    """

    def __init__(
        self,
        root: str | Path,
        train_dir: str = "train",
        test_dir: str = "test",
        image_size: tuple[int, int] | None = None,
        mode: ImageMode = "RGB",
        batch_size: int = 64,
        val_fraction: float = 0.1,
        samples_per_class: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        max_shift: int = 0,
        input_mean: float | tuple[float, ...] = 0.5,
        input_std: float | tuple[float, ...] = 0.25,
    ) -> None:
        super().__init__(
            batch_size, val_fraction, samples_per_class, seed, num_workers, max_shift=max_shift
        )
        check_choice("mode", mode, get_args(ImageMode))
        if image_size is not None:
            check_positive_ints("image_size", image_size, length=2, hint="height, width")
        self.root = Path(root)
        self.train_dir, self.test_dir = train_dir, test_dir
        self.image_size = tuple(image_size) if image_size is not None else None
        self.mode = mode
        self.input_mean, self.input_std = input_mean, input_std
        self._input_shape: tuple[int, int, int] | None = None

    @property
    def classes(self) -> list[str]:
        return _class_folders(self.root / self.train_dir)

    @property
    def num_classes(self) -> int:
        _check_split_dirs(self.root, self.train_dir, self.test_dir)
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``, read from the first training image without decoding the rest."""
        if self._input_shape is None:
            from PIL import Image

            _check_split_dirs(self.root, self.train_dir, self.test_dir)
            channels = 3 if self.mode == "RGB" else 1
            if self.image_size is not None:
                self._input_shape = (channels, *self.image_size)
            else:
                for name in self.classes:
                    files = _image_files(self.root / self.train_dir / name)
                    if files:
                        with Image.open(files[0]) as img:
                            self._input_shape = (channels, img.size[1], img.size[0])
                        break
                else:
                    raise FileNotFoundError(f"No image files under {self.root / self.train_dir}.")
        return self._input_shape

    def load_pool_and_test(self) -> tuple[Dataset, Tensor, Dataset]:
        _check_split_dirs(self.root, self.train_dir, self.test_dir)
        x, y, classes = load_image_folder(
            self.root / self.train_dir, mode=self.mode, image_size=self.image_size
        )
        test_classes = _class_folders(self.root / self.test_dir)
        if test_classes != classes:
            raise ValueError(
                f"The test split's classes {test_classes} differ from the training split's "
                f"{classes} (under {self.root})."
            )
        xt, yt, _ = load_image_folder(
            self.root / self.test_dir, classes, self.mode, self.image_size or tuple(x.shape[2:])
        )
        self._input_shape = tuple(x.shape[1:])
        pool = UInt8ImageDataset(x, y)
        return pool, pool.targets, UInt8ImageDataset(xt, yt)


def _read_cifar_batches(files: list[Path]) -> tuple[Tensor, Tensor]:
    data, labels = [], []
    for path in files:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
    return torch.from_numpy(np.concatenate(data)), torch.tensor(labels, dtype=torch.long)


class CIFAR10DataModule(SplitDataModule):
    """CIFAR-10, from torchvision's pickled batches or from an ImageFolder directory.

    ``layout="auto"`` uses the image folder when ``<data_dir>/train/<class>/`` exists
    (e.g. ``../shared/data/cifar10-jpeg``), otherwise the pickles in
    ``<data_dir>/cifar-10-batches-py/`` (downloaded by torchvision when ``download=True``).
    Either way the labels follow torchvision's class order.

    Args:
        data_dir: Root folder (pickles) or image-folder root (``train/`` and ``test/``).
        download: Download with torchvision when the pickles are missing.
        layout: ``"auto"``, ``"torchvision"`` or ``"image_folder"``.
        batch_size: Mini-batch size.
        val_fraction: Fraction of the training split held out for validation.
        samples_per_class: Train on exactly this many examples per class (low-shot).
        seed: Seed for the validation split, low-shot draw and shuffling.
        num_workers: DataLoader workers.
        max_shift: Random shift of every training image, in pixels (0: none; see
            :class:`SplitDataModule`).
    """

    input_shape = (3, 32, 32)
    num_classes = 10
    classes = CIFAR10_CLASSES
    input_mean = (0.4914, 0.4822, 0.4465)
    input_std = (0.2470, 0.2435, 0.2616)

    def __init__(
        self,
        data_dir: str | Path = "data",
        download: bool = True,
        layout: CifarLayout = "auto",
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
        check_choice("layout", layout, get_args(CifarLayout))
        self.data_dir = Path(data_dir)
        self.download = download
        self.layout = layout

    def resolved_layout(self) -> str:
        if self.layout != "auto":
            return self.layout
        return "image_folder" if _class_folders(self.data_dir / "train") else "torchvision"

    def _pickle_files(self) -> tuple[list[Path], list[Path]]:
        folder = self.data_dir / CIFAR10_FOLDER
        return [folder / f for f in CIFAR10_TRAIN_FILES], [folder / f for f in CIFAR10_TEST_FILES]

    def prepare_data(self) -> None:
        if self.resolved_layout() == "image_folder":
            _check_split_dirs(self.data_dir, "train", "test")
            return
        train, test = self._pickle_files()
        missing = [p for p in train + test if not p.is_file()]
        if not missing:
            return
        how = (
            f"pass download=True (needs internet), put torchvision's '{CIFAR10_FOLDER}' folder "
            f"in {self.data_dir}, or point data_dir at an image folder with train/<class>/ and "
            "test/<class>/ sub-folders (layout='image_folder')."
        )
        def fetch() -> None:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(self.data_dir), train=True, download=True)

        download_or_raise("CIFAR-10", missing, how, self.download, fetch)

    def load_pool_and_test(self) -> tuple[Dataset, Tensor, Dataset]:
        self.prepare_data()
        if self.resolved_layout() == "image_folder":
            found = _class_folders(self.data_dir / "train")
            if sorted(found) != sorted(CIFAR10_CLASSES):
                raise ValueError(
                    f"{self.data_dir / 'train'} has class folders {found}; CIFAR-10 needs "
                    f"{list(CIFAR10_CLASSES)} (use ImageFolderDataModule for other data)."
                )
            x, y, _ = load_image_folder(self.data_dir / "train", list(CIFAR10_CLASSES))
            xt, yt, _ = load_image_folder(self.data_dir / "test", list(CIFAR10_CLASSES))
        else:
            train, test = self._pickle_files()
            x, y = _read_cifar_batches(train)
            xt, yt = _read_cifar_batches(test)
        pool = UInt8ImageDataset(x, y)
        return pool, pool.targets, UInt8ImageDataset(xt, yt)


__all__ = ["CIFAR10DataModule", "ImageFolderDataModule", "load_image_folder"]
