"""CIFAR-10 through a retina-like front end: the rule's dot-product MLP on ON/OFF channels.

On raw CIFAR-10 pixels the rule's MLP configurations learn poor codes: brightness dominates
every image, so competing prototypes learn brightness (docs/results/cifar10/mlp_codes.md).
The retina and LGN do not pass raw intensities on: they pass contrast, split into ON and OFF
channels.  This script puts a fixed (not learned) front end of that kind before the
MNIST-robust dot-product configuration (``examples/mnist_hebbian_dot.yaml``'s rule and
activation, 2000 units, on CIFAR-10's 9,000 training images):

* per-image contrast normalisation: ``c = g · (x − mean(x)) / (rms(x − mean(x)) + 0.05)``
  over the whole image (``g = --gain``: 0.16 brings ``‖c‖`` to about a raw MNIST digit's,
  the energy the configuration's rate was set for);
* ON/OFF rectification: ``[max(c, 0), max(−c, 0)]``, 6 non-negative channels.

Then 2 label-free epochs of the Hebbian layer, 5 epochs of the node-perturbation readout,
and the clean accuracy on the 2,000 test images, an exact linear probe of the code, and
FGSM / PGD / Square on the comparison's seeded 200-image test sample, plus PGD examples
crafted on a copy with 5x the activation temperature (``examples/smoothed_transfer.py``'s
adaptive check for gradient masking).  About 4 min on 2 cores.  `--backprop same` trains
the same network by backprop instead, `--backprop relu` a ReLU MLP behind the front end.

``--kernel K --stride S --units U`` gives the layer local receptive fields instead: a plain
``Conv2d`` of ``U`` units on ``K`` × ``K`` patches, the same competition across its channels
at every position, and the readout on every position's code (no pooling).
``--temperature T`` sets the code's softmax temperature (default 0.2) for the rule and the
backprop baseline alike; the rule's competition keeps its own (1/12).

    python examples/cifar10_on_off.py --out docs/results/cifar10/on_off.json
    python examples/cifar10_on_off.py --kernel 16 --stride 4 --units 500 \
        --out docs/results/cifar10/on_off_local.json
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from readout_probe import probe_accuracy
from smoothed_transfer import smoothed
from torch import Tensor, nn

from bioplausible_lightning import (
    BackpropModule,
    CompetitiveHebbian,
    HebbianMLP,
    HebbianPerturbation,
    NodePerturbation,
    PerturbationModule,
    SoftWinnerTakeAll,
)
from bioplausible_lightning.data import ImageFolderDataModule, PreloadedDataModule
from bioplausible_lightning.evaluation.report import _sample, accuracy
from bioplausible_lightning.evaluation.robustness import AttackConfig, evaluate_robustness
from bioplausible_lightning.evaluation.training import fit

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg"


class ContrastOnOff(nn.Module):
    """Per-image contrast normalisation, then ON and OFF channels (fixed, no parameters)."""

    def __init__(self, gain: float = 0.16) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x: Tensor) -> Tensor:
        c = x - x.mean(dim=(1, 2, 3), keepdim=True)
        rms = c.flatten(1).norm(dim=1).view(-1, 1, 1, 1) / c[0].numel() ** 0.5
        c = self.gain * c / (rms + 0.05)
        return torch.cat([F.relu(c), F.relu(-c)], dim=1)


def local_layer(
    units: int, kernel: int, stride: int, activation: nn.Module, seed: int = 0
) -> nn.Sequential:
    """One plain ``Conv2d`` (default init, no bias) of ``kernel`` × ``kernel`` receptive
    fields at ``stride``, the activation across its channels at every position, and a linear
    readout of every position's code: the MLP's layer with local receptive fields."""
    side = (32 - kernel) // stride + 1
    if side < 1:
        raise ValueError(f"kernel={kernel!r} is invalid: give 1 to 32 (a CIFAR-10 image's width).")
    torch.manual_seed(seed)
    conv = nn.Conv2d(6, units, kernel, stride, bias=False)
    return nn.Sequential(conv, activation, nn.Flatten(), nn.Linear(units * side * side, 10))


def build(
    gain: float,
    steps_per_epoch: int,
    label_free_epochs: int,
    backprop: str | None = None,
    kernel: int | None = None,
    stride: int = 4,
    units: int = 2000,
    seed: int = 0,
    temperature: float = 0.2,
) -> L.LightningModule:
    """The rule on the front end's MLP (``kernel=None``) or on its layer with local receptive
    fields (:func:`local_layer`); ``backprop``: ``"same"`` trains the same network by
    backprop (Adam 1e-3), ``"relu"`` the same layer with ReLU units on the front end;
    ``temperature``: the code's softmax temperature (the rule's competition keeps its own)."""
    if backprop == "relu":
        activation: nn.Module = nn.ReLU()
    else:
        activation = SoftWinnerTakeAll(0.0, temperature, total_activity=1.0)
    if kernel is None:
        layer: nn.Module = HebbianMLP((6, 32, 32), 10, [units], init="torch", seed=seed,
                                      activation=activation)  # fmt: skip
    else:
        layer = local_layer(units, kernel, stride, activation, seed)
    net = nn.Sequential(ContrastOnOff(gain), layer)
    if backprop is not None:
        return BackpropModule(net, optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    rule = HebbianPerturbation(
        CompetitiveHebbian(lr=0.3, competition="soft", temperature=1 / 12, homeostasis=0.01,
                           adaptive_rate=True, similarity="dot"),  # fmt: skip
        NodePerturbation(sigma=0.05, num_directions=8, seed=seed, replicate_at="first_target"),
        readout_start=label_free_epochs * steps_per_epoch,
    )
    adam = functools.partial(torch.optim.Adam, lr=0.01)
    return PerturbationModule(net, rule=rule, optimizer=adam)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(SHARED))
    p.add_argument("--gain", type=float, default=0.16)
    p.add_argument("--label-free-epochs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5, help="readout epochs")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backprop", choices=("same", "relu"), default=None,
                   help="the baseline: backprop on the same network, or on a ReLU MLP")
    p.add_argument("--units", type=int, default=2000, help="hidden units (channels)")
    p.add_argument("--kernel", type=int, default=None,
                   help="local receptive fields of this size (default: the whole image)")
    p.add_argument("--stride", type=int, default=4, help="their stride, with --kernel")
    p.add_argument("--temperature", type=float, default=0.2,
                   help="the code's softmax temperature (the readout's input)")
    p.add_argument("--eps", type=float, nargs="+", default=[2, 4, 8, 16], help="in /255")
    p.add_argument("--attacks", nargs="+", default=["fgsm", "pgd", "square"])
    p.add_argument("--no-adaptive", action="store_true",
                   help="skip the softened-copy transfer check (a quicker screening run)")
    p.add_argument("--seed", type=int, default=0,
                   help="the network's, the rule's and the run's seed (the split stays seed 0)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not (Path(args.data_dir) / "train").exists():
        print(f"CIFAR-10 not found under {args.data_dir}; skipping.")
        return
    torch.set_num_threads(args.threads)
    t0 = time.time()
    data = PreloadedDataModule.from_datamodule(
        ImageFolderDataModule(args.data_dir, batch_size=32, seed=0))  # fmt: skip
    data.setup("fit")
    steps = -(-len(data.train_set) // 32)
    L.seed_everything(args.seed, verbose=False)
    module = build(args.gain, steps, args.label_free_epochs, args.backprop, args.kernel,
                   args.stride, args.units, args.seed, args.temperature)  # fmt: skip
    fit(module, data, max_epochs=args.label_free_epochs + args.epochs, accelerator="cpu")
    model = module.model.eval()
    clean = accuracy(model, data.test_set)
    # protocol (c)'s readout on the code (the readout's input), fitted on every training image
    probe = probe_accuracy(model, data.train_set, data.test_set, 10, 1e-4, unit_length=True)
    x, y = _sample(data, args.samples, 0)
    eps = [e / 255 for e in args.eps]
    res = evaluate_robustness(model, (x, y), eps, args.attacks,
                              AttackConfig(square_queries=500))  # fmt: skip
    report = {"settings": vars(args), "clean_test_accuracy": clean, "linear_probe": probe,
              "robustness": res.to_dict()}  # fmt: skip
    rows = dict(res.accuracy)
    if args.backprop != "relu" and not args.no_adaptive:  # a soft WTA code: the adaptive check
        adaptive = evaluate_robustness(model, (x, y), eps, ["transfer"], AttackConfig(),
                                       source_model=smoothed(model, 5.0),
                                       source_name="5x activation temperature")  # fmt: skip
        report["smoothed_transfer"] = adaptive.to_dict()
        rows["smoothed x5 transfer"] = adaptive.accuracy["transfer"]
    report["seconds"] = round(time.time() - t0)
    at = ", ".join(f"{e:g}" for e in args.eps)
    print(f"clean {clean:.3f} ({len(data.test_set):,} test images), probe {probe:.3f}; "
          f"on {len(y)} images (clean {res.clean_accuracy:.3f}) at ε = {at} /255:")  # fmt: skip
    for name, acc in rows.items():
        print(f"  {name}: {[round(a, 3) for a in acc]}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
