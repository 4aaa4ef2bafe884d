"""Is a soft winner-take-all learner's robustness gradient masking?  An adaptive check.

A :class:`~bioplausible_lightning.SoftWinnerTakeAll` code with a small temperature on large
responses is close to one-hot: the logits are almost piecewise constant in the input, so
gradients (PGD, FGSM) and margin-based random search (Square) can both stall without the
model being robust.  The adaptive attack for such a code (Athalye et al. 2018's advice: attack
a differentiable approximation of the model) is PGD on a copy whose activation temperatures
are multiplied by ``--smooth`` (the same weights, a softer code), its examples then scored on
the real model ("transfer from the smoothed copy").  If the real model keeps much less
under it than under white-box PGD, the white-box figure was masked.

    python examples/smoothed_transfer.py --config examples/mnist_hebbian_dot.yaml
    python examples/smoothed_transfer.py --config CONFIG --checkpoint PATH.ckpt --smooth 5,25

Trains the config on MNIST-5k exactly as the comparison's main run does (or loads
``--checkpoint``), then attacks the report's test sample (seeded, ``--samples`` images).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from torch import nn

from bioplausible_lightning import SoftWinnerTakeAll
from bioplausible_lightning.evaluation import Learner
from bioplausible_lightning.evaluation.report import Context, _sample
from bioplausible_lightning.evaluation.robustness import AttackConfig, evaluate_robustness

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def smoothed(model: nn.Module, factor: float) -> nn.Module:
    """A copy of ``model`` whose soft winner-take-all temperatures are ``factor`` times
    larger (same weights: only the code's hardness changes)."""
    copy_ = copy.deepcopy(model)
    found = [m for m in copy_.modules() if isinstance(m, SoftWinnerTakeAll)]
    if not found:
        raise ValueError("the model has no SoftWinnerTakeAll activation to smooth.")
    for m in found:
        m.temperature = m.temperature * factor
    return copy_.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="examples/mnist_hebbian_dot.yaml")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=str(SHARED / "mnist-5k"))
    p.add_argument("--eps", default="0.05,0.1,0.2,0.3")
    p.add_argument("--smooth", default="5,25", help="temperature factors of the copies")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.data_dir).exists():
        print(f"{args.data_dir} not found; skipping.")
        return
    learner = Learner("learner", args.config, checkpoint=args.checkpoint)
    ctx = Context.single(learner, args.dataset, args.data_dir)
    run = ctx.learners["learner"]
    model = run.model(ctx.data, ctx.config.seed)
    module = run.module(model, epochs=ctx.epochs(run))
    if args.checkpoint:
        run.load_checkpoint(module)
    else:
        ctx.fit(module, ctx.data_for(run), max_epochs=ctx.epochs(run))
    model.eval()
    x, y = _sample(ctx.data, args.samples, ctx.config.seed)
    eps = [float(e) for e in args.eps.split(",")]
    cfg = AttackConfig(pgd_steps=args.pgd_steps, seed=ctx.config.seed)
    white = evaluate_robustness(model, (x, y), eps, ["pgd"], cfg)
    results = {"config": args.config, "samples": len(y), "eps": eps, "smoothed": {},
               "clean": white.clean_accuracy, "pgd": white.accuracy["pgd"]}  # fmt: skip
    print(f"clean {white.clean_accuracy:.3f}; white-box PGD at ε={eps}: "
          f"{[round(a, 3) for a in white.accuracy['pgd']]}")  # fmt: skip
    for factor in (float(f) for f in args.smooth.split(",")):
        source = smoothed(model, factor)
        res = evaluate_robustness(model, (x, y), eps, ["transfer"], cfg, source_model=source,
                                  source_name=f"smoothed x{factor:g}")  # fmt: skip
        own = evaluate_robustness(source, (x, y), eps, ["pgd"], cfg)
        results["smoothed"][f"{factor:g}"] = {"transfer": res.accuracy["transfer"],
                                              "copy_clean": own.clean_accuracy,
                                              "copy_pgd": own.accuracy["pgd"]}  # fmt: skip
        print(f"temperature x{factor:g}: the copy's clean {own.clean_accuracy:.3f}, its own PGD "
              f"{[round(a, 3) for a in own.accuracy['pgd']]}; its examples on the model: "
              f"{[round(a, 3) for a in res.accuracy['transfer']]}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
