"""Depth: does perturbing one layer at a time keep node perturbation trainable when deep?

Perturbing every layer at once adds all other layers' noise to each layer's estimate, so its
variance grows with depth; ``NodePerturbation(layerwise=True)`` gives each layer its own
replica block (cost ∝ depth).  Same MLPs, data, seed and budget as the MNIST depth sweep of
``examples/compare.py``, plus backprop.

    python examples/depth_layerwise.py --data-dir ../shared/data/mnist-5k
"""

from __future__ import annotations

import argparse
import functools

import torch

from bioplausible_lightning import (
    BackpropModule,
    BioMLP,
    MNISTDataModule,
    NodePerturbation,
    PerturbationModule,
)
from bioplausible_lightning.evaluation import depth_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist-5k")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    optimizer = functools.partial(torch.optim.Adam, lr=0.01)

    def model(depth: int) -> BioMLP:
        return BioMLP(input_shape=(1, 28, 28), hidden_sizes=[args.width] * depth,
                      input_mean=0.1307, input_std=0.3081, seed=0)  # fmt: skip

    def bio(layerwise: bool):
        rule = functools.partial(NodePerturbation, sigma=0.05, num_directions=8,
                                 layerwise=layerwise)  # fmt: skip
        return lambda m: PerturbationModule(m, rule(), optimizer=optimizer)

    factories = {
        "NP, all layers at once": bio(False),
        "NP, one layer at a time": bio(True),
        "backprop": lambda m: BackpropModule(m, optimizer=optimizer),
    }
    data = MNISTDataModule(data_dir=args.data_dir, download=False, batch_size=64, seed=0)
    result = depth_sweep(model, factories, data, depths=args.depths, max_epochs=args.epochs)
    print(f"MNIST-5k, width {args.width}, {result.protocol}\n")
    print("| learner | " + " | ".join(f"depth {d}" for d in result.depths) + " |")
    print("|---|" + "---:|" * len(result.depths))
    for name, accs in result.accuracy.items():
        print(f"| {name} | " + " | ".join(f"{a:.1%}" for a in accs) + " |")


if __name__ == "__main__":
    main()
