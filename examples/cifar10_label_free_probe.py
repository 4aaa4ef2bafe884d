"""What the label-free stage of the SoftHebb conv preset adds on CIFAR-10, measured.

Trains only the three Hebbian conv layers of :class:`~bioplausible_lightning.SoftHebbConvNet`
(24-96-384 channels, one epoch per layer, greedy, as in ``examples/cifar10_softhebb.yaml``)
with the :class:`~bioplausible_lightning.SoftHebb` rule at each plasticity rate given, then
freezes them and fits the same linear probe on their pooled features for each rate: the
anchors' classifier, dropout 0.5 + a linear layer trained by Adam (lr 5e-4, batch 32,
``--probe-epochs`` epochs, seed 0) on all training images, tested on all test images.  The
probe is a measuring instrument, trained by backprop on frozen features; the package's own
readout (node perturbation) reaches about one point less on the same features.  Rate 0 is
the same network with its convolutions left at their random initialisation: what the
features are worth without any learning.  No label reaches the conv layers, and no
``backward()`` runs in them.

    python examples/cifar10_label_free_probe.py                     # rates 0, 0.03, 0.1, 1
    python examples/cifar10_label_free_probe.py --rates 0,0.1 --data-dir ../shared/data/cifar10-jpeg

Prints one line per rate and writes ``label_free_probe.json`` into ``--out``.
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


def train_label_free(model: SoftHebbConvNet, images: torch.Tensor, lr: float, batch: int,
                     seed: int, temperature: float = 1.0,
                     anti_hebbian: float = 1.0) -> None:  # fmt: skip
    """One epoch per conv layer, from the input up, with the preset's settings.  ``lr=0``
    runs the same forward passes without plasticity: the BatchNorm statistics are then
    measured on the same data, so rate 0 differs from the others in the weights alone."""
    convs = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    gen = torch.Generator().manual_seed(seed)
    no_labels = torch.zeros(batch, dtype=torch.long)
    model.train()
    for name in convs:
        rule = SoftHebb(lr=lr or 1.0, temperature=temperature, anti_hebbian=anti_hebbian,
                        layers=[name])
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
    parser.add_argument("--rates", default="0,0.03,0.1,1")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0, help="SoftHebb's T")
    parser.add_argument("--anti-hebbian", type=float, default=1.0)
    parser.add_argument("--probe-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="docs/results/cifar10")
    args = parser.parse_args()
    if not Path(args.data_dir, "train").is_dir():
        print(f"No CIFAR-10 image folder under {args.data_dir}; skipping.")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    data = ImageFolderDataModule(args.data_dir, batch_size=256, seed=args.seed)
    data.setup("fit")
    data.setup("test")
    (x_train, y_train), (x_test, y_test) = tensors(data.train_set), tensors(data.test_set)
    results = []
    for lr in [float(r) for r in args.rates.split(",")]:
        model = SoftHebbConvNet((3, 32, 32), 10, (24, 96, 384), seed=args.seed)
        t0 = time.perf_counter()
        train_label_free(model, x_train, lr, args.batch, args.seed, args.temperature,
                         args.anti_hebbian)
        seconds = time.perf_counter() - t0
        acc = linear_probe((features(model, x_train), y_train),
                           (features(model, x_test), y_test), args.probe_epochs, args.seed)
        norms = [round(float(m.weight.flatten(1).norm(dim=1).mean()), 3)
                 for m in model.modules() if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
        row = {"lr": lr, "test_accuracy": acc, "label_free_seconds": round(seconds, 1),
               "mean_unit_norms": norms}  # fmt: skip
        results.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = (f"python examples/cifar10_label_free_probe.py --rates {args.rates} "
               f"--temperature {args.temperature} --anti-hebbian {args.anti_hebbian}")
    report = {"command": command,
              "train_images": len(x_train), "test_images": len(x_test), "results": results}
    (out / "label_free_probe.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
