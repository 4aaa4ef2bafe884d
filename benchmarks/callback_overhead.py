"""Overhead of the three monitors at fixed intervals, as a fraction of training time.

Two measurements in one run, on the digits default (Dale ``BioMLP``):

* **in-hook**: every monitor hook is timed; overhead = time in hooks / (fit time - time in
  hooks).  Precise, and insensitive to other load on the machine.
* **end-to-end**: median fit time with the monitors over median fit time without
  (interleaved repeats); noisier on a shared machine, but it counts everything.

Usage: ``python benchmarks/callback_overhead.py [--epochs 15] [--repeats 3] [--threads 1]``

15 epochs (285 steps) let every interval fire several times.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from functools import partial

import lightning as L
import torch

from bioplausible_lightning.callbacks import (
    DaleLawMonitor,
    SparsityMonitor,
    WeightDistributionMonitor,
)
from bioplausible_lightning.data import DigitsDataModule
from bioplausible_lightning.nn import BioMLP

HOOKS = (
    "setup",
    "on_train_start",
    "on_train_batch_end",
    "on_train_epoch_end",
    "on_validation_epoch_end",
    "on_train_end",
)


def timed(callback: L.Callback, totals: dict[str, float]) -> L.Callback:
    """Wrap the callback's hooks (instance attributes shadow the methods Lightning calls)."""
    for hook in HOOKS:
        method = getattr(callback, hook)

        def wrapper(*args, _method=method, _hook=hook, **kwargs):  # noqa: ANN002, ANN003
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                totals[_hook] += time.perf_counter() - start

        setattr(callback, hook, wrapper)
    return callback


def make_module(kind: str) -> L.LightningModule:
    from bioplausible_lightning.module import BackpropModule, PerturbationModule
    from bioplausible_lightning.rules import NodePerturbation

    # the digits default run (examples/digits.yaml) and its backprop baseline
    model = BioMLP(input_shape=(1, 8, 8), hidden_sizes=(256,), seed=0)
    optimizer = partial(torch.optim.Adam, lr=0.01)
    if kind == "perturbation":
        rule = NodePerturbation(sigma=0.1, num_directions=8, layerwise=True, seed=0)  # = default
        return PerturbationModule(model, rule, optimizer=optimizer)
    return BackpropModule(model, optimizer=optimizer)


def fit(kind: str, epochs: int, callbacks: list, root: str) -> float:
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=callbacks, logger=L.pytorch.loggers.CSVLogger(root),
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    module, data = make_module(kind), DigitsDataModule(batch_size=64)
    start = time.perf_counter()
    trainer.fit(module, data)
    return time.perf_counter() - start


def monitors() -> list:
    # the intervals the README's numbers were measured at (the defaults until they became
    # the Trainer's log_every_n_steps, 50 here)
    return [SparsityMonitor(log_every_n_steps=100), DaleLawMonitor(log_every_n_steps=100),
            WeightDistributionMonitor(log_every_n_steps=200)]  # fmt: skip


def measure(kind: str, epochs: int, repeats: int, root: str) -> dict[str, float]:
    fit(kind, 1, monitors(), root)  # warm-up: imports, allocator, matplotlib
    plain, with_monitors, in_hook = [], [], []
    for _ in range(repeats):
        plain.append(fit(kind, epochs, [], root))
        totals: dict[str, float] = defaultdict(float)
        callbacks = [timed(c, totals) for c in monitors()]
        total = fit(kind, epochs, callbacks, root)
        with_monitors.append(total)
        hook_time = sum(totals.values())
        in_hook.append(hook_time / (total - hook_time))
    return {
        "fit_s": statistics.median(plain),
        "in_hook": statistics.median(in_hook),
        "end_to_end": statistics.median(with_monitors) / statistics.median(plain) - 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", default="outputs/callback_overhead")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"digits, BioMLP(256), {args.epochs} epochs, median of {args.repeats}, "
          f"{args.threads} thread(s); monitors at their defaults")  # fmt: skip
    print("| training | fit time (s) | in-hook overhead | end-to-end overhead |")
    print("|---|---|---|---|")
    for kind in ("perturbation", "backprop"):
        r = measure(kind, args.epochs, args.repeats, args.root)
        print(f"| {kind} | {r['fit_s']:.2f} | {r['in_hook']:.2%} | {r['end_to_end']:+.2%} |")


if __name__ == "__main__":
    main()
