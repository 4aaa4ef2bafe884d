import pytest
import torch

from bioplausible_lightning import DigitsDataModule
from bioplausible_lightning.data import EpochSeededSampler


def _labels(dataset):
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


def test_splits_are_disjoint_cover_the_data_and_are_in_unit_interval():
    data = DigitsDataModule(val_fraction=0.1, test_fraction=0.25)
    data.setup()
    n_train, n_val, n_test = len(data.train_set), len(data.val_set), len(data.test_set)
    assert n_train + n_val + n_test == 1797
    assert set(data.train_indices.tolist()).isdisjoint(data.val_indices.tolist())
    x, y = next(iter(data.train_dataloader()))
    assert x.shape[1:] == (1, 8, 8) and x.min() >= 0 and x.max() <= 1
    assert y.dtype == torch.long


def test_samples_per_class_draws_exactly_k_and_keeps_the_test_set():
    full = DigitsDataModule()
    full.setup()
    low = DigitsDataModule(samples_per_class=3, seed=4)
    low.setup()
    counts = torch.bincount(_labels(low.train_set), minlength=10)
    assert counts.tolist() == [3] * 10
    assert torch.equal(_labels(low.test_set), _labels(full.test_set))


def test_epoch_seeded_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochSeededSampler(50, seed=1), EpochSeededSampler(50, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    assert sorted(a) == list(range(50))


@pytest.mark.parametrize(
    "kwargs, name",
    [({"batch_size": 0}, "batch_size"), ({"val_fraction": 1.0}, "val_fraction"),
     ({"test_fraction": 0.0}, "test_fraction"), ({"samples_per_class": 0}, "samples_per_class")],
)  # fmt: skip
def test_bad_data_config_names_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DigitsDataModule(**kwargs)


def test_too_many_samples_per_class_names_the_class():
    data = DigitsDataModule(samples_per_class=500)
    with pytest.raises(ValueError, match="class 0 has only"):
        data.setup()


@pytest.mark.parametrize(
    "kwargs, name",
    [({"seed": "abc"}, "seed"), ({"seed": 0.5}, "seed"), ({"split_seed": True}, "split_seed"),
     ({"val_fraction": "0.1"}, "val_fraction"), ({"samples_per_class": 2.5}, "samples_per_class"),
     ({"batch_size": True}, "batch_size")],
)  # fmt: skip
def test_data_arguments_are_type_checked_at_construction(kwargs, name):
    with pytest.raises(ValueError, match=rf"{name}=.* is invalid"):
        DigitsDataModule(**kwargs)
