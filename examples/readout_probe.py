"""Readout or features: how far a trained learner's readout is from the best linear readout
of the same features.

Trains one learner config (or loads the checkpoint of its ``bioplausible-lightning fit``
run), then fits an exact linear probe on what its readout layer sees (the readout layer's
input on every training image: multinomial logistic regression, L-BFGS, weight decay
``--weight-decay``) and prints the test accuracy of both.  A readout well below the probe is
the readout's loss; a probe below a goal is the features'.

    python examples/readout_probe.py --config examples/mnist_hebbian_conv.yaml --checkpoint X.ckpt

Any other argument is a LightningCLI-style override of the config.
"""

from __future__ import annotations

import argparse

import torch

from bioplausible_lightning.evaluation.fewshot import extract_features, logistic_regression
from bioplausible_lightning.evaluation.learners import Learner
from bioplausible_lightning.evaluation.report import Context, accuracy


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print and return the test accuracy of the readout and of the probe on its input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/mnist_hebbian_conv.yaml")
    parser.add_argument("--checkpoint", default="", help="weights of a fit of --config")
    parser.add_argument("--dataset", default="mnist", choices=["digits", "mnist", "cifar10"])
    parser.add_argument("--data-dir", default="../shared/data/mnist-5k")
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args, overrides = parser.parse_known_args(argv)
    if args.weight_decay < 0:
        parser.error(f"--weight-decay {args.weight_decay} is invalid: must be >= 0")
    torch.set_num_threads(args.threads)
    learner = Learner("probe", args.config, tuple(overrides), checkpoint=args.checkpoint)
    context = Context.single(learner, args.dataset, args.data_dir, args.seed)
    data, run = context.data, context.learners["probe"]
    model = run.model(data, args.seed)
    epochs = args.epochs if args.epochs is not None else context.epochs(run)
    module = run.module(model, epochs=epochs)
    if args.checkpoint:
        epochs = run.load_checkpoint(module)
    else:
        context.fit(module, context.data_for(run), max_epochs=epochs)
    model.eval()
    train_x, train_y = extract_features(model, data.train_set)
    test_x, test_y = extract_features(model, data.test_set)
    head = logistic_regression(train_x, train_y, data.num_classes, args.weight_decay)
    result = {
        "readout": accuracy(model, data.test_dataloader()),
        "probe": float((head(test_x).argmax(1) == test_y).float().mean()),
    }
    source = f"checkpoint {args.checkpoint}" if args.checkpoint else f"trained {epochs} epochs"
    print(f"{args.config} {' '.join(overrides)}; {source}, seed {args.seed}; "
          f"{train_x.shape[1]} features, {len(train_y)} training images")  # fmt: skip
    print(f"readout test accuracy {result['readout']:.1%}; linear probe on its input "
          f"{result['probe']:.1%} (weight decay {args.weight_decay:g})")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
