import warnings

import pytest
import torch

# The suite's models are tiny: a second intra-op thread costs more in synchronisation than it
# gains, and on a busy 2-core machine it makes small ops up to 100x slower.
torch.set_num_threads(1)


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
