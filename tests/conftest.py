import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

# The suite's models are tiny: a second intra-op thread costs more in synchronisation than it
# gains, and on a busy 2-core machine it makes small ops up to 100x slower.
torch.set_num_threads(1)


def _reads_the_ddp_job(item: pytest.Item) -> bool:
    return "ddp" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that read the 2-process job run last, when it is done (order kept else)."""
    items.sort(key=_reads_the_ddp_job)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the 2-process job (``_ddp_cases.py``: about 30 s of process start-ups and tiny
    fits) as soon as a selected test needs it, to run beside the rest of the suite."""
    if not any(_reads_the_ddp_job(item) for item in session.items):
        return
    from _ddp_cases import DDP_JOB, DDPJob

    out = Path(tempfile.mkdtemp(prefix="bioplausible-ddp-"))
    job = session.config.stash[DDP_JOB] = DDPJob(out)
    session.config.add_cleanup(lambda: (job.stop(), shutil.rmtree(out, ignore_errors=True)))


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
