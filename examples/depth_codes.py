"""Depth: where a deep stack of competitive Hebbian layers loses information, layer by layer.

Trains one learner config at one depth exactly as the report's depth sweep does (the
config's hidden layer repeated ``--depth`` times at ``--width``, ``--epochs`` epochs, step
schedules scaled to that budget), then reads every hidden layer's code on the test images:

* ``probe``: a linear probe's test accuracy (protocol (c)'s readout recipe: multinomial
  logistic regression, L-BFGS, on unit-length features; all training images);
* ``winner sets``: how many distinct sets of active units the test images produce;
* ``units in use``: the effective number of units (exp of the entropy of each unit's share
  of the layer's activity), as a fraction of the width.

    python examples/depth_codes.py --config examples/mnist_hebbian_deep.yaml --depth 8

Any other argument is a LightningCLI-style override of the config.
"""

from __future__ import annotations

import argparse

import torch

from bioplausible_lightning.evaluation.fewshot import logistic_regression, unit_norm
from bioplausible_lightning.evaluation.learners import Learner
from bioplausible_lightning.evaluation.report import Context, accuracy
from bioplausible_lightning.evaluation.representations import collect_activations


def effective_units(codes: torch.Tensor) -> float:
    """exp(entropy) of the units' shares of the total activity, over the number of units."""
    share = codes.clamp_min(0).sum(0)
    share = share / share.sum().clamp_min(1e-30)
    nonzero = share[share > 0]
    return float(torch.exp(-(nonzero * nonzero.log()).sum())) / codes.shape[1]


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Print the table; return its rows (``probe``, ``winner_sets``, ``units_in_use``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/mnist_hebbian_deep.yaml")
    parser.add_argument("--dataset", default="mnist", choices=["digits", "mnist", "cifar10"])
    parser.add_argument("--data-dir", default="../shared/data/mnist-5k")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    # anything else is a LightningCLI-style override of the config, e.g.
    # --model.init_args.rule.init_args.hebbian.init_args.lr 1.0
    args, overrides = parser.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    context = Context.single(
        Learner("probe", args.config, tuple(overrides)), args.dataset, args.data_dir, args.seed
    )
    data, run = context.data, context.learners["probe"]
    model = run.model(data, args.seed, [args.width] * args.depth)
    module = run.module(model, epochs=args.epochs)
    context.fit(module, context.data_for(run), max_epochs=args.epochs)
    codes_train, labels_train = collect_activations(model, data.train_set, max_samples=None)
    codes_test, labels_test = collect_activations(model, data.test_set, max_samples=None)
    print(f"{args.config} {' '.join(overrides)}; depth {args.depth}, width {args.width}, "
          f"{args.epochs} epochs, seed {args.seed}; readout test accuracy "
          f"{accuracy(model, data.test_dataloader()):.1%}\n")  # fmt: skip
    rows = []
    print("| hidden layer | probe | winner sets | units in use |")
    print("|---|---:|---:|---:|")
    for index, (name, train_codes) in enumerate(codes_train.items(), start=1):
        test_codes = codes_test[name].flatten(1)
        features = unit_norm(train_codes.flatten(1))
        head = logistic_regression(features, labels_train, data.num_classes)
        probe = float((head(unit_norm(test_codes)).argmax(1) == labels_test).float().mean())
        winner_sets = torch.unique(test_codes > 0, dim=0).shape[0]
        in_use = effective_units(test_codes)
        print(f"| {index} ({name}) | {probe:.1%} | {winner_sets} | {in_use:.2f} |")
        rows.append({"probe": probe, "winner_sets": winner_sets, "units_in_use": in_use})
    return rows


if __name__ == "__main__":
    main()
