import os
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


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per CPU this process may use, at most 4 (the suite's tests are
    single-threaded; past 4, the workers' start-ups and module fixtures cost more than they
    save). ``PYTEST_XDIST_AUTO_NUM_WORKERS`` or ``-n N`` choose otherwise, ``-n 0`` runs
    the suite in one process."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None  # Linux
    return max(1, min(len(usable) if usable else os.cpu_count() or 1, 4))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that read the 2-process job run last, when it is done (order kept else)."""
    items.sort(key=_reads_the_ddp_job)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the 2-process job (``_ddp_cases.py``: about 30 s of process start-ups and tiny
    fits) as soon as a selected test needs it, to run beside the rest of the suite. Under
    pytest-xdist the controller starts it instead (:class:`_DDPJobForWorkers`)."""
    if _is_xdist_worker(session.config):
        return
    if any(_reads_the_ddp_job(item) for item in session.items):
        _start_ddp_job(session.config)


def _start_ddp_job(config: pytest.Config, out: Path | None = None) -> None:
    from _ddp_cases import DDP_JOB, DDPJob

    out = out or Path(tempfile.mkdtemp(prefix="bioplausible-ddp-"))
    job = config.stash[DDP_JOB] = DDPJob(out)
    config.add_cleanup(lambda: (job.stop(), shutil.rmtree(out, ignore_errors=True)))


class _DDPJobForWorkers:
    """pytest-xdist's controller: one 2-process job for the whole run, started when a worker
    has collected a test of ``test_distributed.py`` (where the ``ddp`` fixture lives); each
    worker learns its folder at start-up and waits for its exit code there."""

    def __init__(self, config: pytest.Config) -> None:
        self.config, self.started = config, False
        self.out = Path(tempfile.mkdtemp(prefix="bioplausible-ddp-"))
        config.add_cleanup(lambda: shutil.rmtree(self.out, ignore_errors=True))

    def pytest_configure_node(self, node) -> None:  # noqa: ANN001 (xdist's WorkerController)
        node.workerinput["bioplausible_ddp_job"] = str(self.out)

    def pytest_xdist_node_collection_finished(self, node, ids: list[str]) -> None:  # noqa: ANN001
        if not self.started and any("test_distributed.py::" in i for i in ids):
            self.started = True
            _start_ddp_job(self.config, self.out)


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own, which registers its controller
def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("dsession"):  # the pytest-xdist controller
        config.pluginmanager.register(_DDPJobForWorkers(config))


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
