"""Does activity sparsity (k-winners-take-all) change robustness? Bio rule vs backprop.

An investigation of the paper's robustness claim beyond the default (dense ReLU) network:
the same Dale ``BioMLP`` on MNIST-5k with a k-WTA hidden layer at several sparsity levels,
trained by node perturbation and by backprop with the same budget, attacked with FGSM, PGD
and the gradient-free Square attack at ε = 0.1 (1,000 test images).

    python examples/sparsity_robustness.py --data-dir ../shared/data/mnist-5k --epochs 20
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
    evaluate_robustness,
)
from bioplausible_lightning.evaluation import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist-5k")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.8, 0.95])
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    data = MNISTDataModule(data_dir=args.data_dir, download=False, batch_size=64, seed=0)
    data.setup()
    print(f"MNIST-5k, {args.epochs} epochs, Adam 0.01 + cosine, ε={args.eps}, "
          f"{args.samples} test images\n")  # fmt: skip
    print("| k-WTA sparsity | learner | clean | FGSM | PGD | Square |")
    print("|---:|---|---:|---:|---:|---:|")
    for sparsity in args.sparsity:
        for learner in ("bio", "backprop"):
            model = BioMLP(input_shape=(1, 28, 28), hidden_sizes=(256,), sparsity=sparsity,
                           input_mean=0.1307, input_std=0.3081, seed=0)  # fmt: skip
            kwargs = dict(
                optimizer=functools.partial(torch.optim.Adam, lr=0.01),
                lr_scheduler=functools.partial(
                    torch.optim.lr_scheduler.CosineAnnealingLR, T_max=args.epochs
                ),
            )
            if learner == "bio":
                rule = NodePerturbation(sigma=0.05, num_directions=8, layerwise=False)
                module = PerturbationModule(model, rule, **kwargs)
            else:
                module = BackpropModule(model, **kwargs)
            fit(module, data, max_epochs=args.epochs, seed=0)
            result = evaluate_robustness(
                module.model, data.test_dataloader(), eps=[args.eps],
                attacks=("fgsm", "pgd", "square"), max_samples=args.samples,
            )  # fmt: skip
            acc = {a: result.accuracy[a][0] for a in ("fgsm", "pgd", "square")}
            row = f"| {sparsity:.2f} | {learner} | {result.clean_accuracy:.1%} | "
            row += f"{acc['fgsm']:.1%} | {acc['pgd']:.1%} | {acc['square']:.1%} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
