"""The replicated forward pass of a perturbation rule, made safe for stochastic and
batch-coupled modules.

A rule runs ``R`` perturbed replicas of a batch of ``B`` examples as one batch of ``R·B``.
Two kinds of module would silently corrupt the loss differences it measures:

* ``Dropout`` (and ``Dropout1d/2d/3d``) in train mode would draw a different mask for every
  replica, so the differences would be mostly mask noise.  Here the mask is drawn once for
  the ``B`` examples (from the global RNG, exactly as one plain forward of the batch would)
  and shared by all replicas.  Alpha dropout is refused.
* ``BatchNorm`` in train mode would normalise with statistics pooled over all replicas.
  Here each replica's ``B`` examples are normalised with their own statistics (what one
  plain forward of the batch computes); the running statistics are updated once, with the
  replicas' average.

Only modules are patched: a functional ``F.dropout`` / ``F.batch_norm`` inside a custom
``forward`` is not seen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

#: ``replicas`` while a rule's replicated forward runs (1 otherwise).
_REPLICAS: ContextVar[int] = ContextVar("bioplausible_replicas", default=1)


def user_shape(x: Tensor) -> tuple[int, ...]:
    """``x.shape`` as the user passed it: inside a replicated forward, dim 0 is divided by
    the number of replicas, so error messages report the user's batch, not the rule's."""
    replicas = _REPLICAS.get()
    shape = tuple(x.shape)
    if replicas > 1 and shape and shape[0] % replicas == 0:
        return (shape[0] // replicas, *shape[1:])
    return shape


def _split(module_name: str, x: Tensor, replicas: int, batch: int) -> Tensor:
    if x.ndim == 0 or x.shape[0] != replicas * batch:
        raise RuntimeError(
            f"{module_name}: expected its input's first dimension to be the batch "
            f"({replicas} replicas x {batch} examples = {replicas * batch}), got shape "
            f"{tuple(x.shape)}. The perturbation rules need batch-first inputs at Dropout and "
            "BatchNorm modules (e.g. batch_first=True); or put these modules in eval mode."
        )
    return x.view(replicas, batch, *x.shape[1:])


def _shared_mask_dropout(name: str, module: _DropoutNd, replicas: int, batch: int):
    plain = type(module).forward.__get__(module)

    def forward(x: Tensor) -> Tensor:
        if replicas > 1 and x.ndim and x.shape[0] == batch:
            return plain(x)  # before the replication point (replicate_at="first_target")
        xs = _split(name, x, replicas, batch)
        mask = plain(xs.new_ones(xs.shape[1:]))  # one mask for the B examples, scaled 1/(1-p)
        return (xs * mask).view(x.shape)

    return forward


def _per_replica_batch_norm(name: str, module: _BatchNorm, replicas: int, batch: int):
    plain = type(module).forward.__get__(module)

    def forward(x: Tensor) -> Tensor:
        if replicas > 1 and x.ndim and x.shape[0] == batch:
            return plain(x)  # before the replication point (replicate_at="first_target")
        xs = _split(name, x, replicas, batch)
        c = module.num_features
        # replicas become extra channels: F.batch_norm then gives each its own statistics
        grouped = xs.transpose(0, 1).reshape(batch, replicas * c, *x.shape[2:])
        track = module.track_running_stats and module.running_mean is not None
        running_mean = running_var = None
        factor = 0.0
        if track:
            module.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(module.num_batches_tracked)
                if module.momentum is None
                else module.momentum
            )
            running_mean = module.running_mean.repeat(replicas)
            running_var = module.running_var.repeat(replicas)
        weight = module.weight.repeat(replicas) if module.weight is not None else None
        bias = module.bias.repeat(replicas) if module.bias is not None else None
        out = F.batch_norm(grouped, running_mean, running_var, weight, bias, True, factor,
                           module.eps)  # fmt: skip
        if track:
            module.running_mean.copy_(running_mean.view(replicas, c).mean(0))
            module.running_var.copy_(running_var.view(replicas, c).mean(0))
        return out.view(batch, replicas, *x.shape[1:]).transpose(0, 1).reshape(x.shape)

    return forward


def batch_coupled_modules(model: nn.Module) -> list[nn.Module]:
    """Modules whose output for one example depends on the other examples of the batch
    (BatchNorm in train mode)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training]


@contextlib.contextmanager
def replicated_forward(model: nn.Module, batch: int, replicas: int) -> Iterator[None]:
    """For the duration: Dropout shares one mask across replicas, BatchNorm normalises each
    replica with its own statistics, and :func:`user_shape` reports the user's batch."""
    patched: list[nn.Module] = []
    for name, module in model.named_modules():
        if not module.training:
            continue
        if isinstance(module, (nn.AlphaDropout, nn.FeatureAlphaDropout)) and module.p > 0:
            raise ValueError(
                f"module {name!r} ({type(module).__name__}) in train mode is not supported by "
                "the perturbation rules (its replicas cannot share one mask): use nn.Dropout, "
                "or put it in eval mode."
            )
        if isinstance(module, _DropoutNd) and module.p > 0:
            module.forward = _shared_mask_dropout(name, module, replicas, batch)
        elif isinstance(module, _BatchNorm):
            module.forward = _per_replica_batch_norm(name, module, replicas, batch)
        else:
            continue
        patched.append(module)
    token = _REPLICAS.set(replicas)
    try:
        yield
    except Exception as err:
        if replicas > 1 and hasattr(err, "add_note"):  # Python >= 3.11
            err.add_note(
                f"(raised during a perturbation rule's replicated forward pass: the batch of "
                f"{batch} examples ran as {replicas} replicas, i.e. {replicas * batch} rows)"
            )
        raise
    finally:
        _REPLICAS.reset(token)
        for module in patched:
            del module.forward


__all__ = ["batch_coupled_modules", "replicated_forward", "user_shape"]
