"""Helpers shared by the evaluation modules: data collection, mode handling, batching."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .._validation import check_min_int

#: What the evaluation functions accept as data: a DataLoader, a Dataset of ``(x, y)``
#: pairs, or a tuple of tensors ``(x, y)``.
Data = DataLoader | Dataset | tuple[Tensor, Tensor]


def collect(data: Data, max_samples: int | None = None) -> tuple[Tensor, Tensor]:
    """Materialise up to ``max_samples`` ``(x, y)`` pairs as two tensors (CPU or as given).

    Evaluation data is small (at most a test set), so holding it lets every attack and every
    model see exactly the same examples.
    """
    check_min_int("max_samples", max_samples, optional=True)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}.")
        return (x, y) if max_samples is None else (x[:max_samples], y[:max_samples])
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=256)
    xs, ys, n = [], [], 0
    with torch.inference_mode(False):
        for batch in data:
            x, y = batch[0], batch[1]
            xs.append(x.clone())
            ys.append(y.clone())
            n += x.shape[0]
            if max_samples is not None and n >= max_samples:
                break
    if not xs:
        raise ValueError("data is empty: no (x, y) batch could be read from it.")
    x, y = torch.cat(xs), torch.cat(ys)
    return (x, y) if max_samples is None else (x[:max_samples], y[:max_samples])


def model_device(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of the model's first parameter or buffer (``default`` for stateless ones)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device(default)


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put models in eval mode and restore every submodule's own mode afterwards."""
    saved = [[(m, m.training) for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for states in saved:
            for module, training in states:
                module.training = training


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Predicted class of every row of ``x`` (model in eval mode, mode restored)."""
    device = model_device(model, x.device)
    with eval_mode(model):
        out = [model(x[s].to(device)).argmax(1).cpu() for s in batches(x.shape[0], batch_size)]
    return torch.cat(out)


def accuracy(model: nn.Module, data: Data, batch_size: int = 512) -> float:
    """Clean accuracy in [0, 1] of a classifier whose forward returns logits."""
    x, y = collect(data)
    return float((predict(model, x, batch_size) == y.cpu()).float().mean())
