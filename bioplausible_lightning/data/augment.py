"""Random whole-pixel shifts of training images: the one augmentation the data modules offer.

A few-shot learner sees K images per class; shifting each by a pixel or two every time it is
drawn gives its label-free layers and its readout many views of those same K images, with
no new data (``SplitDataModule(max_shift=...)``).  The shifts depend only on
``(seed, epoch, batch, rank)``, so a resumed run draws the very shifts it would have drawn.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def _check_images(images: Tensor) -> None:
    if images.dim() not in (3, 4):
        raise ValueError(
            f"images has shape {tuple(images.shape)}: a shift needs image batches "
            "(N, C, H, W) or (N, H, W); set max_shift=0 for flat inputs."
        )


def _moved(padded: Tensor, s: int, dy: int, dx: int) -> Tensor:
    """The images inside ``padded`` (zero-padded by ``s``) moved down by ``dy`` and right by
    ``dx``: ``out[y, x] = image[y - dy, x - dx]``."""
    h, w = padded.shape[-2] - 2 * s, padded.shape[-1] - 2 * s
    return padded[..., s - dy : s - dy + h, s - dx : s - dx + w]


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Each image of ``images`` (``(N, C, H, W)`` or ``(N, H, W)``) moved by its own random
    offset of at most ``max_shift`` pixels in each direction; pixels shifted in are zero.

    ``generator`` (a CPU generator) draws the offsets; the same generator state gives the
    same offsets on every device."""
    _check_images(images)
    if max_shift == 0 or images.shape[0] == 0:
        return images
    offsets = torch.randint(-max_shift, max_shift + 1, (images.shape[0], 2), generator=generator)
    s = max_shift
    padded = F.pad(images, (s, s, s, s))
    out = torch.empty_like(images)
    for dy, dx in torch.unique(offsets, dim=0).tolist():
        rows = (offsets == torch.tensor([dy, dx])).all(1).to(images.device)
        out[rows] = _moved(padded[rows], s, dy, dx)
    return out


def shifted_copies(images: Tensor, max_shift: int) -> Tensor:
    """Every shift of every image by at most ``max_shift`` pixels, ``(2s+1)**2`` copies of
    the batch one after the other (offset-major): what a look-up of the labelled images
    searches when the learners train on their random shifts."""
    _check_images(images)
    s = max_shift
    padded = F.pad(images, (s, s, s, s))
    return torch.cat([_moved(padded, s, dy, dx)
                      for dy in range(-s, s + 1) for dx in range(-s, s + 1)])  # fmt: skip


def shift_generator(seed: int, epoch: int, batch: int, rank: int = 0) -> torch.Generator:
    """The generator of one training batch's shifts: a function of where the batch is in
    the run, not of what ran before it (exact resume, mid-epoch included)."""
    mixed = seed
    for part in (epoch, batch, rank):
        mixed = (mixed * 1_000_003 + part) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


__all__ = ["random_shift", "shift_generator", "shifted_copies"]
