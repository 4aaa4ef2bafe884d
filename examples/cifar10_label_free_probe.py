"""What the label-free stage of the SoftHebb conv preset adds on CIFAR-10, measured.

Trains only the three Hebbian conv layers of :class:`~bioplausible_lightning.SoftHebbConvNet`
(24-96-384 channels, one epoch per layer, greedy, as in ``examples/cifar10_softhebb.yaml``)
with the :class:`~bioplausible_lightning.SoftHebb` rule at each plasticity setting given,
then freezes them and fits the same linear probe on their pooled features for each: the
anchors' classifier, dropout 0.5 + a linear layer trained by Adam (lr 5e-4, batch 32,
``--probe-epochs`` epochs) on all training images, tested on all test images.  The probe is
a measuring instrument, trained by backprop on frozen features; the package's own readout
(node perturbation) is the config's.  Rate 0 is the same network with its convolutions left
at their random initialisation: what the features are worth without any learning.  No label
reaches the conv layers, and no ``backward()`` runs in them.

A rate or a temperature is one number for all three layers or ``a/b/c``, one per layer.
The defaults are the config's (SoftHebb's recipe); ``--init torch --padding-mode zeros
--normalize unit --rates 0,0.1 --temperature 1`` is the recipe before it.

    python examples/cifar10_label_free_probe.py                 # rate 0 and the config's
    python examples/cifar10_label_free_probe.py --rates 0,0.1 --seeds 0,1,2

Prints one line per setting and seed and writes ``--name`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bioplausible_lightning import SoftHebb, SoftHebbConvNet
from bioplausible_lightning.data import ImageFolderDataModule

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg"


def per_layer(text: str) -> list[float]:
    """``"0.1"`` → the same for each of the three layers; ``"a/b/c"`` → one each."""
    values = [float(v) for v in text.split("/")]
    if len(values) not in (1, 3):
        raise SystemExit(f"{text!r} is invalid: give one number or three separated by '/'.")
    return values * 3 if len(values) == 1 else values


def train_label_free(model: SoftHebbConvNet, images: torch.Tensor, rates: list[float],
                     batch: int, seed: int, temperatures: list[float],
                     anti_hebbian: float = 1.0, normalize: str = "max") -> None:  # fmt: skip
    """One epoch per conv layer, from the input up.  Rate 0 runs the same forward passes
    without plasticity: the BatchNorm statistics are then measured on the same data, so it
    differs from the others in the weights alone."""
    convs = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    gen = torch.Generator().manual_seed(seed)
    no_labels = torch.zeros(batch, dtype=torch.long)
    model.train()
    for name, lr, temperature in zip(convs, rates, temperatures):
        rule = SoftHebb(lr=lr or 1.0, temperature=temperature, anti_hebbian=anti_hebbian,
                        layers=[name], normalize=normalize)  # fmt: skip
        (own,) = rule.own_optimizers(model)
        optimizer = own.factory(own.params)
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), batch):
            x = images[order[i : i + batch]]
            if lr == 0:
                with torch.no_grad():
                    model(x)  # BatchNorm statistics only
                continue
            rule.estimate(model, lambda out, y: out.new_zeros(len(y)), x, no_labels[: len(x)])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def tensors(dataset: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*torch.utils.data.DataLoader(dataset, batch_size=1000))
    return torch.cat(xs), torch.cat(ys)


def linear_probe(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 epochs: int, seed: int) -> float:  # fmt: skip
    """Test accuracy of dropout + a linear layer trained by Adam on frozen features."""
    torch.manual_seed(seed)
    head = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(train[0].shape[1], 10))
    optimizer = torch.optim.Adam(head.parameters(), lr=5e-4)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(train[0]), generator=gen)
            for i in range(0, len(order), 32):
                idx = order[i : i + 32]
                loss = torch.nn.functional.cross_entropy(head(train[0][idx]), train[1][idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    head.eval()
    with torch.no_grad():
        return float((head(test[0]).argmax(1) == test[1]).float().mean())


@torch.no_grad()
def features(model: SoftHebbConvNet, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model.features(images[i : i + 500]).flatten(1)
                      for i in range(0, len(images), 500)])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(SHARED))
    parser.add_argument("--rates", default="0,0.08/0.03/0.06")
    parser.add_argument("--temperature", default="1/1.538/4", help="SoftHebb's T")
    parser.add_argument("--anti-hebbian", type=float, default=1.0)
    parser.add_argument("--normalize", default="max", choices=["max", "unit"])
    parser.add_argument("--init", default="wide", choices=["wide", "torch", "normal"])
    parser.add_argument("--padding-mode", default="reflect", choices=["reflect", "zeros"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--probe-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="docs/results/cifar10")
    parser.add_argument("--name", default="label_free_probe.json")
    args = parser.parse_args()
    if not Path(args.data_dir, "train").is_dir():
        print(f"No CIFAR-10 image folder under {args.data_dir}; skipping.")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    data = ImageFolderDataModule(args.data_dir, batch_size=256, seed=0)
    data.setup("fit")
    data.setup("test")
    (x_train, y_train), (x_test, y_test) = tensors(data.train_set), tensors(data.test_set)
    temperatures = per_layer(args.temperature)
    results = []
    for rate in args.rates.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            rates = per_layer(rate)
            model = SoftHebbConvNet((3, 32, 32), 10, (24, 96, 384), init=args.init,
                                    padding_mode=args.padding_mode, seed=seed)  # fmt: skip
            t0 = time.perf_counter()
            train_label_free(model, x_train, rates, args.batch, seed, temperatures,
                             args.anti_hebbian, args.normalize)  # fmt: skip
            seconds = time.perf_counter() - t0
            acc = linear_probe((features(model, x_train), y_train),
                               (features(model, x_test), y_test), args.probe_epochs, seed)
            norms = [round(float(m.weight.detach().flatten(1).norm(dim=1).mean()), 3)
                     for m in model.modules() if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
            row = {"rates": rates, "seed": seed, "test_accuracy": acc,
                   "label_free_seconds": round(seconds, 1), "mean_unit_norms": norms}  # fmt: skip
            results.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = ("python examples/cifar10_label_free_probe.py "
               + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                          if k not in ("data_dir", "out", "name", "threads")))  # fmt: skip
    report = {"command": command, "temperatures": temperatures,
              "train_images": len(x_train), "test_images": len(x_test), "results": results}
    (out / args.name).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
