import warnings

import pytest
import torch


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*litlogger.*")
        yield


@pytest.fixture
def digits_batch():
    from bioplausible_lightning.data import load_digits_tensors

    images, labels = load_digits_tensors()
    return images[:64], labels[:64]
