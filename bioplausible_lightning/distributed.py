"""Multi-process training for rules that never call ``backward()``.

Lightning's ``DDPStrategy`` averages gradients inside ``backward()``, through autograd hooks;
a rule writes ``p.grad`` directly, so those hooks never fire and every process would train
its own model on its own shard.  :class:`~bioplausible_lightning.PerturbationModule` therefore
communicates itself, with the helpers here, on the process group Lightning initialised:

* once per batch, whether every process found its estimate finite
  (:func:`all_processes_agree`), so that a step is skipped on every process or on none;
* once per batch, the few tensors a rule asks to average (:class:`Reducer`): the reward
  prediction error, the per-direction loss differences of seed-shared weight perturbation,
  the Hebbian thresholds;
* once per optimizer step, the gradients of every parameter whose update depends on the
  process's data (:func:`all_reduce_mean_`), flattened into a few large buckets as DDP does.

Plain ``torch.distributed`` collectives are used rather than ``strategy.reduce``, which puts
a barrier before every all-reduce (doubling the latency of each small one); the group is
the same.  Everything here is backend-agnostic (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ._validation import check_min_int

#: Bucket size of the gradient all-reduce: DDP's default (``bucket_cap_mb=25``).
DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024

AllReduce = Callable[..., Any]


def is_distributed() -> bool:
    """Whether a default process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _scalar_dtype(device: torch.device) -> torch.dtype:
    # float64: exact for counters and loss sums alike; MPS has no float64
    return torch.float32 if device.type == "mps" else torch.float64


def all_processes_agree(flag: bool, device: torch.device, group: Any = None) -> bool:
    """``True`` only if ``flag`` is true on every process (one 1-element all-reduce).

    Used for decisions that must be taken identically everywhere, such as skipping a step
    whose estimate was not finite on some process: otherwise the processes would step
    different numbers of times and their parameters would drift apart.
    """
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device, dtype=torch.float32)
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=group)
    return bool(value.item() == 1.0)


def all_reduce_mean_(
    tensors: Sequence[Tensor],
    world_size: int,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    group: Any = None,
    all_reduce: AllReduce | None = None,
) -> int:
    """Average ``tensors`` over the processes, in place; return the bytes sent per process.

    The tensors are grouped by device and dtype and flattened into buckets of at most
    ``bucket_bytes`` (a larger tensor gets a bucket of its own), one all-reduce per bucket:
    a few large messages instead of one small one per parameter, which is what makes DDP's
    gradient exchange bandwidth-bound instead of latency-bound.  The sum is divided by
    ``world_size`` on every process alike, so the result is bit-identical everywhere.
    """
    check_min_int("world_size", world_size)
    if world_size == 1 or not tensors:
        return 0
    reduce = dist.all_reduce if all_reduce is None else all_reduce
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    sent = 0
    for members in groups.values():
        for bucket in _buckets(members, bucket_bytes):
            flat = bucket[0].reshape(-1).clone() if len(bucket) == 1 else torch.cat(
                [t.reshape(-1) for t in bucket]
            )
            reduce(flat, group=group)
            flat.div_(world_size)
            sent += flat.numel() * flat.element_size()
            for t, chunk in zip(bucket, flat.split([t.numel() for t in bucket])):
                t.copy_(chunk.view_as(t))
    return sent


def _buckets(tensors: list[Tensor], bucket_bytes: int) -> list[list[Tensor]]:
    buckets: list[list[Tensor]] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if not buckets or size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(t)
        size += nbytes
    return buckets


class Reducer:
    """Collects the small tensors that must be identical on every process after a batch and
    averages them in one flat all-reduce (:meth:`run`).

    A rule registers tensors with :meth:`mean` from its
    :meth:`~bioplausible_lightning.LearningRule.synchronize`, with an optional callback that
    runs once they hold the average (e.g. to rebuild an update from averaged scalars).
    Tensors are averaged in float64 (float32 on MPS) and written back in their own dtype.

    Args:
        world_size: Number of processes (1: nothing is sent, the callbacks still run).
        group: Process group (default: the world group Lightning initialised).
        all_reduce: The collective (default ``torch.distributed.all_reduce``; tests and
            benchmarks may wrap it).
    """

    def __init__(
        self, world_size: int, group: Any = None, all_reduce: AllReduce | None = None
    ) -> None:
        check_min_int("world_size", world_size)
        self.world_size = world_size
        self.group = group
        self._all_reduce = all_reduce
        self._tensors: list[Tensor] = []
        self._callbacks: list[Callable[[], None]] = []
        self.bytes_sent = 0

    def mean(self, tensors: Sequence[Tensor], then: Callable[[], None] | None = None) -> None:
        """Average ``tensors`` (in place) at :meth:`run`; call ``then()`` afterwards."""
        for t in tensors:
            if not isinstance(t, Tensor) or not (t.is_floating_point() or t.is_complex()):
                raise ValueError(
                    f"Reducer.mean: expected floating-point tensors, got {type(t).__name__}"
                    + (f" of dtype {t.dtype}" if isinstance(t, Tensor) else "")
                    + "; integer state cannot be averaged."
                )
        self._tensors.extend(tensors)
        if then is not None:
            self._callbacks.append(then)

    def run(self) -> None:
        """One all-reduce per device of everything registered, then the callbacks in order."""
        tensors, callbacks = self._tensors, self._callbacks
        self._tensors, self._callbacks = [], []
        if self.world_size > 1 and tensors:
            reduce = dist.all_reduce if self._all_reduce is None else self._all_reduce
            by_device: dict[torch.device, list[Tensor]] = {}
            for t in tensors:
                by_device.setdefault(t.device, []).append(t)
            for device, members in by_device.items():
                dtype = _scalar_dtype(device)
                flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in members])
                reduce(flat, group=self.group)
                flat.div_(self.world_size)
                self.bytes_sent += flat.numel() * flat.element_size()
                for t, chunk in zip(members, flat.split([t.numel() for t in members])):
                    t.copy_(chunk.view_as(t))
        for callback in callbacks:
            callback()


def floating_tensors(state: Any) -> list[Tensor]:
    """Every floating-point tensor in a (nested dict / list / tuple) state, in order."""
    if isinstance(state, Tensor):
        return [state] if state.is_floating_point() else []
    if isinstance(state, dict):
        return [t for value in state.values() for t in floating_tensors(value)]
    if isinstance(state, (list, tuple)):
        return [t for value in state for t in floating_tensors(value)]
    return []


__all__ = [
    "DEFAULT_BUCKET_BYTES",
    "Reducer",
    "all_processes_agree",
    "all_reduce_mean_",
    "floating_tensors",
    "is_distributed",
]
