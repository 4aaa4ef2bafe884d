"""Readout or features: how far a trained learner's readout is from the best linear readout
of the same features.

Trains one learner config (or loads the checkpoint of its ``bioplausible-lightning fit``
run), then fits an exact linear probe on what its readout layer sees (the readout layer's
input on every training image: multinomial logistic regression, L-BFGS, weight decay
``--weight-decay``) and prints the test accuracy of both.  A readout well below the probe is
the readout's loss; a probe below a goal is the features'.

    python examples/readout_probe.py --config examples/mnist_hebbian_conv.yaml --checkpoint X.ckpt

With ``--shots K`` it asks the same question of few-shot protocol (a): for every seed of
``--draws``, the learner trains from scratch on K labelled images per class for ``--steps``
optimizer steps (the report's protocol (a) run, schedules scaled to that budget), and the
probe is protocol (c)'s readout (:func:`logistic_regression` on unit-length features) fitted
on the same K images: what those features allow a linear readout, against what the rule's
readout made of them.

    python examples/readout_probe.py --config examples/mnist_hebbian_conv.yaml --shots 1

Any other argument is a LightningCLI-style override of the config.
"""

from __future__ import annotations

import argparse

import torch

from bioplausible_lightning.evaluation.fewshot import (
    extract_features,
    logistic_regression,
    unit_norm,
)
from bioplausible_lightning.evaluation.learners import Learner, LearnerRun
from bioplausible_lightning.evaluation.report import Context, accuracy


def probe_accuracy(
    model: torch.nn.Module,
    train_set: torch.utils.data.Dataset,
    test_set: torch.utils.data.Dataset,
    num_classes: int,
    weight_decay: float,
    unit_length: bool = False,
) -> float:
    """Test accuracy of a logistic-regression probe fitted on the readout's input."""
    train_x, train_y = extract_features(model, train_set)
    test_x, test_y = extract_features(model, test_set)
    if unit_length:
        train_x, test_x = unit_norm(train_x), unit_norm(test_x)
    head = logistic_regression(train_x, train_y, num_classes, weight_decay)
    return float((head(test_x).argmax(1) == test_y).float().mean())


def full_training(context: Context, run: LearnerRun, args: argparse.Namespace) -> dict:
    """The readout and the probe of one fit on every training image (or its checkpoint)."""
    data = context.data
    model = run.model(data, args.seed)
    epochs = args.epochs if args.epochs is not None else context.epochs(run)
    module = run.module(model, epochs=epochs)
    if args.checkpoint:
        epochs = run.load_checkpoint(module)
    else:
        context.fit(module, context.data_for(run), max_epochs=epochs)
    result = {
        "readout": accuracy(model, data.test_dataloader()),
        "probe": probe_accuracy(
            model, data.train_set, data.test_set, data.num_classes, args.weight_decay
        ),
    }
    source = f"checkpoint {args.checkpoint}" if args.checkpoint else f"trained {epochs} epochs"
    print(f"{args.config} {' '.join(run.learner.args)}; {source}, seed {args.seed}; "
          f"{len(data.train_set)} training images")  # fmt: skip
    print(f"readout test accuracy {result['readout']:.1%}; linear probe on its input "
          f"{result['probe']:.1%} (weight decay {args.weight_decay:g})")  # fmt: skip
    return result


def few_shot(context: Context, run: LearnerRun, args: argparse.Namespace) -> dict:
    """Protocol (a) runs on every draw: readout and probe per draw, and their means."""
    data = context.data
    test_loader = data.test_dataloader()
    shift = f", images shifted by up to {args.fewshot_shift} px" if args.fewshot_shift else ""
    print(f"{args.config} {' '.join(run.learner.args)}; protocol (a), {args.shots}-shot, "
          f"{args.steps} steps per run{shift}\n")  # fmt: skip
    print("| draw (seed) | readout | probe |\n|---:|---:|---:|")
    readouts, probes = [], []
    for seed in args.draws:
        model, split = context.fit_few_shot(run, args.shots, seed, args.steps)
        readouts.append(accuracy(model, test_loader))
        split.setup("fit")
        probes.append(probe_accuracy(model, split.train_set, data.test_set, data.num_classes,
                                     args.weight_decay, unit_length=True))  # fmt: skip
        print(f"| {seed} | {readouts[-1]:.1%} | {probes[-1]:.1%} |", flush=True)
    result = {"readout": sum(readouts) / len(readouts), "probe": sum(probes) / len(probes),
              "readouts": readouts, "probes": probes}  # fmt: skip
    print(f"| mean | {result['readout']:.1%} | {result['probe']:.1%} |")
    return result


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from err
    return seeds


def main(argv: list[str] | None = None) -> dict:
    """Print and return the test accuracy of the readout and of the probe on its input
    (with ``--shots``: their means over the draws, and the per-draw lists)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/mnist_hebbian_conv.yaml")
    parser.add_argument("--checkpoint", default="", help="weights of a fit of --config")
    parser.add_argument("--dataset", default="mnist", choices=["digits", "mnist", "cifar10"])
    parser.add_argument("--data-dir", default="../shared/data/mnist-5k")
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--shots", type=int, default=0,
                        help="protocol (a) with K labelled images per class (0: off)")
    parser.add_argument("--draws", type=seed_list, default=list(range(3, 13)),
                        help="protocol (a)'s seeds, one run each (default: 3..12)")
    parser.add_argument("--steps", type=int, default=100, help="protocol (a)'s budget")
    parser.add_argument("--fewshot-shift", type=int, default=0,
                        help="protocol (a): shift the K-shot images at random by up to N "
                        "pixels each time they are drawn (0: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    # anything else is a LightningCLI-style override of the config
    args, overrides = parser.parse_known_args(argv)
    if args.weight_decay < 0:
        parser.error(f"--weight-decay {args.weight_decay} is invalid: must be >= 0")
    if args.shots < 0 or args.steps < 1 or not args.draws:
        parser.error(f"--shots {args.shots}, --steps {args.steps}, --draws {args.draws}: "
                     "shots must be >= 0, steps >= 1 and draws non-empty")  # fmt: skip
    if args.fewshot_shift < 0:
        parser.error(f"--fewshot-shift {args.fewshot_shift} is invalid: must be >= 0")
    if args.shots and args.checkpoint:
        parser.error("--shots trains from scratch on each draw: --checkpoint does not apply")
    torch.set_num_threads(args.threads)
    learner = Learner("probe", args.config, tuple(overrides), checkpoint=args.checkpoint)
    context = Context.single(learner, args.dataset, args.data_dir, args.seed,
                             fewshot_shift=args.fewshot_shift)  # fmt: skip
    run = context.learners["probe"]
    return few_shot(context, run, args) if args.shots else full_training(context, run, args)


if __name__ == "__main__":
    main()
