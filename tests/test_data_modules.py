"""MNIST, CIFAR-10 and ImageFolder data modules on tiny generated files (no download)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bioplausible_lightning.data import (
    CIFAR10DataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    UInt8ImageDataset,
)
from bioplausible_lightning.data.cifar import CIFAR10_CLASSES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, dtype=0x08 uint8, ndim), big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _tiny_mnist(root: Path, per_class: int = 6, test_per_class: int = 2) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10), n)
        images = rng.integers(0, 256, size=(labels.size, 28, 28))
        images[:, 0, 0] = labels  # the label, readable back from the first pixel
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


def _write_png(path: Path, size: tuple[int, int], value: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    array = np.full((size[1], size[0], channels), value, dtype=np.uint8).squeeze(
        -1 if channels == 1 else ()
    )
    Image.fromarray(array, mode=mode).save(path)


def _tiny_image_folder(root: Path, classes, per_class=4, test_per_class=2, size=(8, 6)) -> None:
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c, name in enumerate(classes):
            for i in range(n):
                _write_png(root / split / name / f"{i:03d}.png", size, value=10 * c + i)


# -- MNIST ---------------------------------------------------------------------------------
def test_mnist_loads_idx_files_in_unit_range(tmp_path):
    _tiny_mnist(tmp_path)
    dm = MNISTDataModule(tmp_path, download=False, batch_size=16, val_fraction=0.5, seed=1)
    dm.setup("fit")
    assert dm.input_shape == (1, 28, 28) and dm.num_classes == 10
    assert len(dm.train_set) == 30 and len(dm.val_set) == 30 and len(dm.test_set) == 20
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), y)  # labels stay with images
    assert set(dm.train_indices.tolist()).isdisjoint(dm.val_indices.tolist())


def test_mnist_split_is_seeded(tmp_path):
    _tiny_mnist(tmp_path)
    a = MNISTDataModule(tmp_path, download=False, seed=3, val_fraction=0.5)
    b = MNISTDataModule(tmp_path, download=False, seed=3, val_fraction=0.5)
    c = MNISTDataModule(tmp_path, download=False, seed=4, val_fraction=0.5)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.val_indices, b.val_indices)
    assert not torch.equal(a.val_indices, c.val_indices)


def test_mnist_samples_per_class(tmp_path):
    _tiny_mnist(tmp_path)
    dm = MNISTDataModule(tmp_path, download=False, samples_per_class=2, val_fraction=0.3)
    dm.setup()
    labels = torch.stack([dm.train_set[i][1] for i in range(len(dm.train_set))])
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), 2))
    assert len(dm.test_set) == 20  # the test set never changes with K


def test_mnist_missing_files_error_names_them(tmp_path):
    dm = MNISTDataModule(tmp_path / "nowhere", download=False)
    with pytest.raises(FileNotFoundError) as info:
        dm.setup()
    msg = str(info.value)
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "download=True"):
        assert name in msg
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in msg


def test_mnist_failed_download_is_reported(tmp_path, monkeypatch):
    import torchvision

    def offline(self):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(FileNotFoundError, match="network is unreachable") as info:
        MNISTDataModule(tmp_path, download=True).setup()
    assert "train-images-idx3-ubyte" in str(info.value)


# -- CIFAR-10 ------------------------------------------------------------------------------
def _tiny_cifar_pickles(root: Path, per_batch: int = 10) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        labels = [i % 10 for i in range(per_batch)]
        data = np.zeros((per_batch, 3, 32, 32), dtype=np.uint8)
        data[:, 0] = 255  # red channel full, so the channel order is checkable
        data[:, 2, 0, 0] = np.array(labels) + 10 * b
        entry = {"data": data.reshape(per_batch, -1), "labels": labels}
        (folder / name).write_bytes(pickle.dumps(entry))


def test_cifar_from_pickles(tmp_path):
    _tiny_cifar_pickles(tmp_path)
    dm = CIFAR10DataModule(tmp_path, download=False, val_fraction=0.2)
    assert dm.resolved_layout() == "torchvision"
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 50 and len(dm.test_set) == 10
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert torch.all(x[:, 0] == 1.0) and torch.all(x[:, 1] == 0.0)
    assert torch.equal((x[:, 2, 0, 0] * 255).round().long() % 10, y)


def test_cifar_from_image_folder_uses_cifar_label_order(tmp_path):
    shuffled = list(reversed(CIFAR10_CLASSES))
    for i, name in enumerate(shuffled):  # create folders in another order than the labels
        _write_png(tmp_path / "train" / name / "a.png", (32, 32), 20 * i)
        _write_png(tmp_path / "train" / name / "b.png", (32, 32), 20 * i)
        _write_png(tmp_path / "test" / name / "a.png", (32, 32), 20 * i)
    dm = CIFAR10DataModule(tmp_path, download=False, val_fraction=0.5)
    assert dm.resolved_layout() == "image_folder"
    dm.setup()
    x, y = next(iter(dm.test_dataloader()))
    expected = torch.tensor([20 * shuffled.index(CIFAR10_CLASSES[c]) for c in y.tolist()])
    assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), expected)


def test_cifar_missing_files_error_names_them(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        CIFAR10DataModule(tmp_path, download=False).setup()
    msg = str(info.value)
    assert "data_batch_1" in msg and "test_batch" in msg and "download=True" in msg


def test_cifar_bad_layout():
    with pytest.raises(ValueError, match="layout='pickles'"):
        CIFAR10DataModule("x", layout="pickles")


# -- ImageFolder ---------------------------------------------------------------------------
def test_image_folder_module(tmp_path):
    _tiny_image_folder(tmp_path, ["cats", "dogs", "owls"])
    dm = ImageFolderDataModule(tmp_path, val_fraction=0.25, samples_per_class=2, batch_size=4)
    assert dm.num_classes == 3 and dm.input_shape == (3, 6, 8)
    dm.setup()
    assert len(dm.train_set) == 6 and len(dm.test_set) == 6
    xs, ys = zip(*[dm.train_set[i] for i in range(len(dm.train_set))], strict=True)
    assert torch.equal(torch.bincount(torch.stack(ys)), torch.tensor([2, 2, 2]))
    assert all(0 <= x.min() and x.max() <= 1 and x.shape == (3, 6, 8) for x in xs)


def test_image_folder_grayscale_and_resize(tmp_path):
    _tiny_image_folder(tmp_path, ["a", "b"], size=(10, 10))
    _write_png(tmp_path / "train" / "a" / "big.png", (20, 14), 5)
    with pytest.raises(ValueError, match="image_size"):
        ImageFolderDataModule(tmp_path).setup()
    dm = ImageFolderDataModule(tmp_path, image_size=(7, 9), mode="L")
    assert dm.input_shape == (1, 7, 9)
    dm.setup()
    assert dm.test_set[0][0].shape == (1, 7, 9)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        ImageFolderDataModule(tmp_path).setup()
    _tiny_image_folder(tmp_path, ["a", "b"])
    (tmp_path / "test" / "c").mkdir()
    _write_png(tmp_path / "test" / "c" / "x.png", (8, 6), 0)
    with pytest.raises(ValueError, match="differ"):
        ImageFolderDataModule(tmp_path).setup()
    with pytest.raises(ValueError, match="mode='CMYK'"):
        ImageFolderDataModule(tmp_path, mode="CMYK")


def test_uint8_dataset_batched_fetch_matches_items():
    images = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    ds = UInt8ImageDataset(images, torch.arange(5))
    batch = ds.__getitems__([3, 1])
    assert torch.equal(batch[0][0], ds[3][0]) and int(batch[1][1]) == 1
    with pytest.raises(ValueError, match="uint8"):
        UInt8ImageDataset(images.float(), torch.arange(5))


# -- the real data in ../shared/data (optional) ----------------------------------------------
@pytest.mark.skipif(not (SHARED / "mnist-5k").is_dir(), reason="../shared/data absent")
def test_shared_mnist_5k():
    dm = MNISTDataModule(SHARED / "mnist-5k", download=False, val_fraction=0.1)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 5000 and len(dm.test_set) == 10000


@pytest.mark.skipif(not (SHARED / "cifar10-jpeg").is_dir(), reason="../shared/data absent")
def test_shared_cifar10_jpeg():
    dm = CIFAR10DataModule(SHARED / "cifar10-jpeg", download=False, val_fraction=0.1)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 10000 and len(dm.test_set) == 2000
    x, _ = dm.test_set[0]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
