"""Learners compared: the whole comparison in one command.

Trains every learner (default: node perturbation and backprop on the Dale BioMLP, a
standard backprop MLP and HebbianPerturbation, the paper's rule) on the same data and seed,
then runs adversarial robustness (FGSM, PGD, Square, AutoAttack, transfer), few-shot
protocols (a), (b) and (c), a depth sweep and a representation report.  Writes
``report.json``, PNG plots and ``summary.md`` to ``--out``.

    python examples/compare.py --quick                       # digits, tiny budgets
    python examples/compare.py --dataset mnist --data-dir ../shared/data/mnist-5k
    python examples/compare.py --dataset cifar10 --data-dir ../shared/data/cifar10-jpeg
    python examples/compare.py --dataset mnist --data-dir data      # downloads MNIST

Each learner is a LightningCLI config (the files ``bioplausible-lightning fit --config``
runs): ``examples/<dataset>{,_backprop,_hebbian}.yaml``.  Change a learner's settings in its
YAML file; replace the list with ``--learner NAME=CONFIG.yaml [--learner ...]`` (CLI-style
overrides after the path, separated by spaces:
``--learner "bp=examples/mnist.yaml --model bioplausible_lightning.BackpropModule"``).
Of the ``trainer:`` and ``data:`` sections the report reads only ``trainer.max_epochs`` and
the batch size (it builds its own Trainer and splits); an override of anything else that
would change learning is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from fractions import Fraction

from bioplausible_lightning.evaluation.learners import DEFAULT_LEARNERS, PEER_LEARNERS, Learner
from bioplausible_lightning.evaluation.report import (
    SECTIONS,
    full_config,
    quick_config,
    run_comparison,
)


def _floats(text: str) -> list[float]:
    return [float(Fraction(v.strip())) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _learner(text: str) -> Learner:
    name, sep, rest = text.partition("=")
    words = shlex.split(rest)
    if not sep or not name.strip() or not words:
        raise argparse.ArgumentTypeError(f"--learner {text!r}: expected NAME=CONFIG.yaml [ARGS]")
    return Learner(name.strip(), words[0], tuple(words[1:]))


def _with_checkpoints(learners: list[Learner], specs: list[str]) -> list[Learner]:
    paths = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise SystemExit(f"--checkpoint {spec!r}: expected NAME=PATH")
        paths[name.strip()] = path.strip()
    unknown = sorted(set(paths) - {lr.name for lr in learners})
    if unknown:
        raise SystemExit(f"--checkpoint: no learner named {unknown}; learners: "
                         f"{[lr.name for lr in learners]}")  # fmt: skip
    return [dataclasses.replace(lr, checkpoint=paths.get(lr.name, "")) for lr in learners]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits, tiny budgets (the smoke test)")
    p.add_argument("--dataset", default="mnist", choices=sorted(DEFAULT_LEARNERS))
    p.add_argument("--data-dir", default=None, help="data root (default ./data)")
    p.add_argument("--no-download", action="store_true", help="never download missing files")
    p.add_argument("--out", default=None, help="output folder (default comparison-<dataset>)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--accelerator", default=None, help="Lightning accelerator (default auto)")
    p.add_argument("--sections", default=None, help=f"comma list of {','.join(SECTIONS)}")
    p.add_argument(
        "--learner",
        dest="learners",
        action="append",
        type=_learner,
        default=None,
        help="NAME=CONFIG.yaml [ARGS] (repeat; replaces the default learners)",
    )
    p.add_argument(
        "--peers",
        action="store_true",
        help="append the Hebbian peers' presets (Krotov-Hopfield, SoftHebb) to the learners",
    )
    p.add_argument(
        "--checkpoint",
        dest="checkpoints",
        action="append",
        default=None,
        help="NAME=PATH: evaluate learner NAME's trained checkpoint (from "
        "`bioplausible-lightning fit --config` of its config) instead of training it in the "
        "main run (repeat)",
    )
    p.add_argument("--reference", help="clean-gap reference and transfer source")
    p.add_argument("--reference-source", help="transfer source for the reference")
    p.add_argument("--goal-learner",
                   help="the learners issue 7's goals are checked for (comma list; default "
                   "hebbian,hebbian-dot)")
    sizes = p.add_argument_group("budgets (override the --quick / full defaults)")
    sizes.add_argument("--epochs", type=int, help="every learner (default: its config's)")
    sizes.add_argument("--eps", type=_floats, help="e.g. 0.05,0.1 or 2/255,8/255")
    sizes.add_argument("--attacks", help="comma list of fgsm,pgd,square,autoattack,transfer")
    sizes.add_argument("--attack-samples", type=int)
    sizes.add_argument("--autoattack-samples", type=int, help="AutoAttack on the first N only")
    sizes.add_argument("--pgd-steps", type=int)
    sizes.add_argument("--pgd-restarts", type=int)
    sizes.add_argument("--square-queries", type=int)
    sizes.add_argument("--shots", type=_ints, help="protocol (a) K values, e.g. 1,5,10")
    sizes.add_argument("--fewshot-seeds", type=_ints, help="e.g. 0,1,2,3,4")
    sizes.add_argument("--fewshot-steps", type=int)
    sizes.add_argument("--fewshot-shift", type=int,
                       help="protocol (a): shift the K-shot images at random by up to N pixels "
                       "each time they are drawn, every learner alike (default 0)")
    sizes.add_argument("--probe-seeds", type=_ints, help="protocol (c) draws, e.g. 0,1,2,3,4")
    sizes.add_argument("--episodic-shots", type=_ints)
    sizes.add_argument("--episodes", type=int)
    sizes.add_argument("--episodic-metric", choices=("euclidean", "cosine"),
                       help="protocol (b)'s prototype metric, the same for the raw-pixel "
                       "reference (default euclidean)")
    sizes.add_argument("--base-epochs", type=int)
    sizes.add_argument("--depths", type=_ints, help="e.g. 1,2,4,8,16")
    sizes.add_argument("--depth-epochs", type=int)
    sizes.add_argument("--depth-width", type=int, help="default: each learner's own width")
    sizes.add_argument("--representation-samples", type=int)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    overrides = {
        k: v
        for k, v in vars(args).items()
        if v is not None
        and k not in ("quick", "dataset", "data_dir", "out", "no_download", "peers",
                      "checkpoints")
    }
    learners = overrides.get("learners") or list(DEFAULT_LEARNERS[args.dataset])
    if args.peers:
        if args.dataset not in PEER_LEARNERS:
            raise SystemExit(f"--peers: no peer presets for --dataset {args.dataset}")
        overrides["learners"] = learners = [*learners, *PEER_LEARNERS[args.dataset]]
    if args.checkpoints:
        overrides["learners"] = _with_checkpoints(learners, args.checkpoints)
    for key in ("attacks", "sections"):
        if key in overrides:
            overrides[key] = [s.strip() for s in overrides[key].split(",") if s.strip()]
    if args.no_download:
        overrides["download"] = False
    words = argv if argv is not None else sys.argv[1:]
    overrides["command"] = "python examples/compare.py " + shlex.join(words)
    if args.quick:
        config = quick_config(args.out or "comparison-quick", **overrides)
    else:
        config = full_config(args.dataset, args.data_dir, args.out, **overrides)
    report = run_comparison(config)
    print(open(f"{config.out_dir}/summary.md", encoding="utf-8").read())
    print(f"Wrote {', '.join(report['files'].values())} to {config.out_dir}/")
    return report


if __name__ == "__main__":
    main()
