"""Cost of one ``HebbianPerturbation`` estimate (Hebbian update of the hidden layer included)
vs. one forward pass of the same MLP, at three input widths.

A wide layer's Hebbian update is bound by passes over a layer-sized buffer, not by its one
matrix product; the ratio shows what the update costs on top of the forward.  Interleaved
repeats, medians, one CPU thread:

    python benchmarks/hebbian_update.py
    python benchmarks/hebbian_update.py --inputs 784,3072 --units 2000 --batch 32 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bioplausible_lightning import (
    CompetitiveHebbian,
    HebbianMLP,
    HebbianPerturbation,
    NodePerturbation,
    SoftWinnerTakeAll,
)
from bioplausible_lightning.losses import cross_entropy


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=_ints, default=[784, 3072, 6144])
    parser.add_argument("--units", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = {}
    for n_in in args.inputs:  # the MNIST dot-product configuration's rule on n_in inputs
        model = HebbianMLP((1, 1, n_in), 10, [args.units], seed=0,
                           activation=SoftWinnerTakeAll(0.0, 0.2, total_activity=1.0))  # fmt: skip
        rule = HebbianPerturbation(
            CompetitiveHebbian(lr=0.3, temperature=1 / 12, homeostasis=0.01, adaptive_rate=True,
                               similarity="dot"),  # fmt: skip
            NodePerturbation(sigma=0.05, num_directions=8, seed=0, replicate_at="first_target"),
        )
        x, y = torch.rand(args.batch, 1, 1, n_in), torch.randint(0, 10, (args.batch,))

        def step(model=model, rule=rule, x=x, y=y) -> None:
            for p in model.parameters():
                p.grad = None  # as zero_grad(set_to_none=True) before every step
            rule.estimate(model, cross_entropy, x, y)

        def forward(model=model, x=x) -> None:
            with torch.no_grad():
                model(x)

        cases[n_in] = (step, forward, {"estimate": [], "forward": []})
    for _ in range(2):  # warm-up
        for step, forward, _ in cases.values():
            step(), forward()
    for _ in range(args.repeats):  # interleaved: machine noise hits every case alike
        for step, forward, times in cases.values():
            for name, fn in (("estimate", step), ("forward", forward)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    print(f"{args.units} units, batch {args.batch}, 1 thread, median of {args.repeats}")
    for n_in, (_, _, times) in cases.items():
        est, fwd = (statistics.median(times[k]) * 1e3 for k in ("estimate", "forward"))
        print(f"{n_in:>6} inputs: estimate {est:.1f} ms, forward {fwd:.1f} ms, "
              f"estimate / forward {est / fwd:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
