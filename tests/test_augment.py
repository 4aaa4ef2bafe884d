"""Random shifts of training images: exact offsets, training batches only, exact resume."""

import functools

import lightning as L
import pytest
import torch
from _helpers import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from bioplausible_lightning import NodePerturbation, PerturbationModule
from bioplausible_lightning.data import (
    DigitsDataModule,
    PreloadedDataModule,
    random_shift,
    shift_generator,
    shifted_copies,
)
from bioplausible_lightning.nn import BioMLP


def test_random_shift_moves_each_image_by_its_own_offset_and_fills_zeros():
    images = torch.zeros(64, 1, 7, 7)
    images[:, 0, 3, 3] = torch.arange(1, 65).float()  # one bright pixel per image, centre
    out = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    offsets = set()
    for i in range(64):
        (y, x) = torch.nonzero(out[i, 0]).tolist()[0]
        assert out[i, 0, y, x] == i + 1 and out[i].count_nonzero() == 1
        assert abs(y - 3) <= 2 and abs(x - 3) <= 2
        offsets.add((y - 3, x - 3))
    assert len(offsets) > 10  # offsets differ between images
    # zeros shift in: a full image loses the rows and columns it moved away from
    ones = random_shift(torch.ones(64, 5, 5), 1, torch.Generator().manual_seed(0))
    assert ones.sum() < 64 * 25 and set(ones.unique().tolist()) <= {0.0, 1.0}
    again = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert random_shift(images, 0, torch.Generator()) is images


def test_random_shift_rejects_flat_inputs_and_bad_settings():
    with pytest.raises(ValueError, match=r"shape \(4, 64\).*max_shift=0"):
        random_shift(torch.zeros(4, 64), 1, torch.Generator())
    with pytest.raises(ValueError, match="max_shift=-1"):
        DigitsDataModule(max_shift=-1)
    with pytest.raises(ValueError, match="max_shift=1.5"):
        DigitsDataModule(max_shift=1.5)


def test_shift_generator_depends_only_on_the_batch_place_in_the_run():
    def draw(*args):
        return torch.randint(0, 10**6, (4,), generator=shift_generator(*args))

    assert torch.equal(draw(0, 1, 2, 0), draw(0, 1, 2, 0))
    places = [(0, 1, 2, 0), (1, 1, 2, 0), (0, 2, 2, 0), (0, 1, 3, 0), (0, 1, 2, 1)]
    assert len({tuple(draw(*p).tolist()) for p in places}) == len(places)


class _Recorder(L.LightningModule):
    """Records the images every training / validation step receives."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(64, 10)
        self.train_images, self.val_images = [], []

    def training_step(self, batch, batch_idx):
        self.train_images.append(batch[0].clone())
        return self.layer(batch[0].flatten(1)).sum()

    def validation_step(self, batch, batch_idx):
        self.val_images.append(batch[0].clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_only_training_batches_are_shifted_by_the_generator_of_their_place():
    data = DigitsDataModule(batch_size=100, seed=3, max_shift=1)
    module = _Recorder()
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(module, data)
    loader = data.train_dataloader()
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        raw = [x for x, _ in loader][:3]
        for b in range(3):
            seen = module.train_images[3 * epoch + b]
            assert not torch.equal(seen, raw[b])
            assert torch.equal(seen, random_shift(raw[b], 1, shift_generator(3, epoch, b)))
    first_val = next(iter(data.val_dataloader()))[0]
    assert all(torch.equal(v, first_val) for v in module.val_images)  # unshifted
    # a re-split copy keeps the setting unless told otherwise
    pre = PreloadedDataModule.from_datamodule(data)
    assert pre.max_shift == 1 and pre.resplit(seed=1).max_shift == 1
    assert pre.resplit(max_shift=0).max_shift == 0


def test_shifted_training_resumes_bit_identically_mid_epoch(tmp_path):
    def fit(max_shift, ckpt_path=None, callbacks=(), **kw):
        L.seed_everything(0)
        module = PerturbationModule(
            BioMLP(hidden_sizes=(32,), seed=0), NodePerturbation(num_directions=2, seed=0),
            optimizer=functools.partial(torch.optim.Adam, lr=0.01),
        )  # fmt: skip
        trainer = quiet_trainer(tmp_path, callbacks=list(callbacks), max_epochs=2,
                                limit_val_batches=0, enable_checkpointing=bool(callbacks),
                                **kw)  # fmt: skip
        data = DigitsDataModule(batch_size=128, seed=0, max_shift=max_shift)
        trainer.fit(module, data, ckpt_path=ckpt_path)
        return {k: v.clone() for k, v in module.model.state_dict().items()}

    straight = fit(1)
    assert any(not torch.equal(straight[k], v) for k, v in fit(0).items())  # shifts matter
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_train_steps=4)
    fit(1, callbacks=[ckpt], max_steps=4)
    (path,) = (tmp_path / "ck").glob("*step=4*.ckpt")
    resumed = fit(1, ckpt_path=str(path))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_shifted_copies_hold_every_offset_once():
    images = torch.zeros(2, 1, 5, 5)
    images[0, 0, 2, 2], images[1, 0, 2, 2] = 1.0, 2.0
    copies = shifted_copies(images, 1)
    assert copies.shape == (18, 1, 5, 5)
    where = {(int(c.max()), *torch.nonzero(c[0]).tolist()[0]) for c in copies}
    assert where == {(v, 2 + dy, 2 + dx) for v in (1, 2) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert torch.equal(shifted_copies(images, 0), images)
