"""What emerges in a plain model's hidden weights and activity under each learning rule.

One plain MLP (``nn.Linear`` layers, default torch initialisation: mixed signs, no
parametrisation, no clipping, no sign constraint), trained from the same start by
``HebbianPerturbation`` (the paper's rule), node perturbation and backprop.  For every hidden
layer, at the start and the end of training, it reports with the package's metrics:

* the fraction of positive weights (plain count, and among the weights above
  ``1e-3 · max|w|``) and the share of the ``|w|`` mass that is positive (the measures in
  which Hebbian positivity emerges: a weight whose input is never active decays towards zero
  but keeps its sign, so the plain count also measures how long the decay ran);
* Dale sign consistency, exact and with a tolerance of ``1e-3 · max|w|``;
* the KS distance of ``|w|`` to a fitted lognormal and to a fitted normal;
* the fraction of exactly-zero activity and of dead units on held-out images.

The Hebbian rule runs twice: with its config's plasticity period (``layer_steps``), and with
a longer label-free stage (``--long-steps``: the layer learns alone, then freezes while the
readout learns), which shows what the plasticity period trades.

It writes ``emergence.json``, ``emergence.md`` (the README table) and a start-vs-end
weight-histogram figure ``emergence.png`` into ``--out``.

    python examples/emergence.py                                  # MNIST-5k from ../shared/data
    python examples/emergence.py --data digits --epochs 60        # anywhere, no data needed
    python examples/emergence.py --data cifar10 --epochs 5 --out docs/results/emergence_cifar10

On CIFAR-10 (the JPEG subset in ../shared/data) the Hebbian rate is a tenth of MNIST's: a
raw CIFAR-10 image has several times a digit's energy ``‖x‖²``, and at the MNIST rate a unit
that wins one poorly aligned image jumps far past unit norm and then outbids every other
unit in the forward code.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn

from bioplausible_lightning import (
    BackpropModule,
    BioMLP,
    CompetitiveHebbian,
    DigitsDataModule,
    HebbianPerturbation,
    NodePerturbation,
    PerturbationModule,
    SoftWinnerTakeAll,
)
from bioplausible_lightning.data import ImageFolderDataModule, MNISTDataModule
from bioplausible_lightning.metrics import (
    activity_sparsity,
    fraction_positive,
    lognormal_fit,
    positive_mass_fraction,
    sign_consistency,
)

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
# the default folder of each shared data set, and the entry that shows it is there
DATA_DIRS = {"mnist": (SHARED / "mnist-5k", "MNIST"), "cifar10": (SHARED / "cifar10-jpeg", "train")}
# digits and mnist: the settings of examples/digits_hebbian.yaml and examples/mnist_hebbian.yaml;
# cifar10: mnist's at a tenth of the Hebbian rate (docs/results/cifar10/mlp_codes.md)
SETTINGS = {
    "digits": dict(shape=(1, 8, 8), hidden=2000, sparsity=0.8, temperature=0.2, hebb_lr=4.0,
                   layer_steps=400, long_steps=1500, batch=64),
    "mnist": dict(shape=(1, 28, 28), hidden=2000, sparsity=0.95, temperature=1.0, hebb_lr=3.0,
                  layer_steps=None, long_steps=2100, batch=32),
    "cifar10": dict(shape=(3, 32, 32), hidden=2000, sparsity=0.95, temperature=1.0,
                    hebb_lr=0.3, layer_steps=None, long_steps=846, batch=32),
}  # fmt: skip


def plain_model(s: dict) -> nn.Module:
    activation = SoftWinnerTakeAll(s["sparsity"], s["temperature"])
    return BioMLP(s["shape"], 10, [s["hidden"]], dale=False, input_mean=0.0, input_std=1.0,
                  seed=0, activation=activation)  # fmt: skip


def learners(s: dict) -> dict[str, callable]:
    adam = functools.partial(torch.optim.Adam, lr=1e-2)
    readout = dict(sigma=0.1 if s["shape"][-1] == 8 else 0.05, num_directions=8, seed=0)

    def hebbian(layer_steps: int | None, readout_start: int = 0) -> callable:
        return lambda m: PerturbationModule(m, rule=HebbianPerturbation(
            CompetitiveHebbian(lr=s["hebb_lr"], homeostasis=0.01, layer_steps=layer_steps),
            NodePerturbation(**readout, replicate_at="first_target"),
            readout_start=readout_start), optimizer=adam)  # fmt: skip

    long = s["long_steps"]
    return {
        "HebbianPerturbation": hebbian(s["layer_steps"]),
        f"HebbianPerturbation, {long} label-free steps": hebbian(long, long),
        "node perturbation": lambda m: PerturbationModule(
            m, rule=NodePerturbation(**readout), optimizer=adam),
        "backprop": lambda m: BackpropModule(m, optimizer=adam),
    }  # fmt: skip


def steps_per_epoch(data: L.LightningDataModule) -> int:
    data.setup("fit")
    return len(data.train_dataloader())


def hidden_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[:-1]


@torch.no_grad()
def measure(model: nn.Module, images: torch.Tensor) -> dict[str, dict[str, float]]:
    model.eval()
    activity: dict[str, torch.Tensor] = {}
    names = {m: n for n, m in hidden_layers(model)}
    activations = [m for m in model.modules() if isinstance(m, SoftWinnerTakeAll)]
    handles = [a.register_forward_hook(lambda mod, args, out, i=i: activity.__setitem__(i, out))
               for i, a in enumerate(activations)]  # fmt: skip
    model(images)
    for h in handles:
        h.remove()
    out = {}
    for i, (module, name) in enumerate(names.items()):
        w = module.weight.detach()
        fit = lognormal_fit(w)
        sparsity = activity_sparsity(activity[i])
        out[name] = {
            "positive_fraction": fraction_positive(w),
            "positive_fraction_tol": fraction_positive(w, tol=1e-3 * float(w.abs().max())),
            "positive_mass": positive_mass_fraction(w),
            "sign_consistency": sign_consistency(w),
            "sign_consistency_tol": sign_consistency(w, tol=1e-3 * float(w.abs().max())),
            "ks_lognormal": fit.ks_lognormal,
            "ks_normal": fit.ks_normal,
            "zero_activity": sparsity["zero_fraction"],
            "dead_units": sparsity["dead_fraction"],
        }
    return out


def histogram(model: nn.Module) -> torch.Tensor:
    return hidden_layers(model)[0][1].weight.detach().flatten().clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=("mnist", "digits", "cifar10"), default="mnist")
    parser.add_argument("--data-dir", default=None,
                        help="default: ../shared/data/mnist-5k or ../shared/data/cifar10-jpeg")
    parser.add_argument("--epochs", type=int, default=30,
                        help="epochs of every learner (the long label-free run: plus the "
                             "epochs its label-free stage takes)")
    parser.add_argument("--long-steps", type=int, default=None,
                        help="label-free steps of the long Hebbian run (default per data set)")
    parser.add_argument("--out", default="docs/results/emergence")
    args = parser.parse_args()
    default_dir, expected = DATA_DIRS.get(args.data, (None, None))
    data_dir = Path(args.data_dir) if args.data_dir else default_dir
    if expected and not (data_dir / expected).exists():
        print(f"{args.data} not found under {data_dir}; run with --data digits. Skipping.")
        return
    s = dict(SETTINGS[args.data])
    if args.long_steps is not None:
        s["long_steps"] = args.long_steps

    def make_data() -> L.LightningDataModule:
        if args.data == "mnist":
            return MNISTDataModule(data_dir, download=False, batch_size=s["batch"])
        if args.data == "cifar10":
            return ImageFolderDataModule(data_dir, batch_size=s["batch"])
        return DigitsDataModule(batch_size=s["batch"])

    data = make_data()
    data.setup("fit")
    probe = torch.stack([data.val_set[i][0] for i in range(min(500, len(data.val_set)))])
    start_model = plain_model(s)
    report = {"settings": s, "epochs": args.epochs, "start": measure(copy.deepcopy(start_model),
                                                                     probe)}  # fmt: skip
    hists = {"start": histogram(start_model)}
    for name, make in learners(s).items():
        L.seed_everything(0)
        model = copy.deepcopy(start_model)
        module = make(model)
        epochs = args.epochs
        if "label-free" in name:  # the readout gets as many steps as in the other runs
            epochs += math.ceil(s["long_steps"] / steps_per_epoch(make_data()))
        trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        t0 = time.time()
        trainer.fit(module, make_data())
        test = trainer.test(module, make_data(), verbose=False)[0]
        report[name] = {"test_acc": test["test/acc"], "seconds": time.time() - t0,
                        "end": measure(model, probe)}  # fmt: skip
        hists[name] = histogram(model)
        print(name, f"test acc {test['test/acc']:.4f}", json.dumps(report[name]["end"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "emergence.json").write_text(json.dumps(report, indent=2))
    (out / "emergence.md").write_text(table(report))
    figure(hists, out / "emergence.png")
    print(table(report))


def table(report: dict) -> str:
    rows = [("positive weights (count)", "positive_fraction"),
            ("positive weights (count, |w| > 1e-3·max|w|)", "positive_fraction_tol"),
            ("positive share of |w| mass", "positive_mass"),
            ("sign consistency (exact)", "sign_consistency"),
            ("sign consistency (tol 1e-3·max|w|)", "sign_consistency_tol"),
            ("KS to lognormal / to normal", None),
            ("zero activity", "zero_activity"),
            ("dead units", "dead_units")]  # fmt: skip
    names = [k for k in report if k not in ("settings", "epochs", "start")]
    layer = next(iter(report["start"]))
    head = "| hidden layer `" + layer + "` | start | " + " | ".join(names) + " |"
    lines = [head, "|---" * (2 + len(names)) + "|"]

    def cell(d: dict, key: str | None) -> str:
        if key is None:
            return f"{d['ks_lognormal']:.3f} / {d['ks_normal']:.3f}"
        return f"{d[key]:.3f}"

    for label, key in rows:
        ends = [cell(report[n]["end"][layer], key) for n in names]
        start = cell(report["start"][layer], key)
        lines.append(f"| {label} | {start} | " + " | ".join(ends) + " |")
    accs = " | ".join(f"{report[n]['test_acc']:.3f}" for n in names)
    lines.append(f"| test accuracy | – | {accs} |")
    return "\n".join(lines) + "\n"


def figure(hists: dict[str, torch.Tensor], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(hists), figsize=(4 * len(hists), 3), sharey=False)
    for ax, (name, w) in zip(axes, hists.items()):
        ax.hist(w.numpy(), bins=100, color="tab:blue" if name == "start" else "tab:orange")
        ax.set_title(f"{name}\npositive |w| mass {positive_mass_fraction(w):.3f}", fontsize=9)
        ax.set_xlabel("weight")
        ax.set_yscale("log")
    fig.suptitle("first hidden layer of a plain MLP: start vs end of training", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
