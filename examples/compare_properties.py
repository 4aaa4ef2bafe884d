"""Dale's law, lognormal weights and activity sparsity: perturbation learning vs backprop.

Trains the same ``BioMLP`` (same seed, same initial weights) on the scikit-learn digits
with ``PerturbationModule`` + ``NodePerturbation`` and with ``BackpropModule``, for the
Dale (``exp``) parametrisation and, as a control, the unconstrained ``plain`` one.  The
three monitoring callbacks are attached to every Trainer; the script prints their final
values as a Markdown table (for the README), beside the untrained network's.

    python examples/compare_properties.py               # ~3-5 min on 2 CPU cores
    python examples/compare_properties.py --epochs 5 --variants dale

Columns: sign consistency = fraction of presynaptic units whose non-zero outgoing weights
share one sign (all layers pooled); KS = Kolmogorov–Smirnov distance of the hidden layer's
``|w|`` to its fitted lognormal / normal (smaller fits better); activity = zero fraction
and Treves–Rolls population sparseness of the hidden layer on a fixed validation batch.
"""

from __future__ import annotations

import argparse
import os
from functools import partial

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from bioplausible_lightning.callbacks import (
    DaleLawMonitor,
    SparsityMonitor,
    WeightDistributionMonitor,
)
from bioplausible_lightning.data import DigitsDataModule
from bioplausible_lightning.metrics import activity_sparsity, dale_statistics, lognormal_fit
from bioplausible_lightning.module import BackpropModule, PerturbationModule
from bioplausible_lightning.nn import BioMLP
from bioplausible_lightning.rules import NodePerturbation

# ==== HYPER-PARAMETERS (tuned by the lead; everything the comparison depends on) ===========
HPARAMS = {
    "epochs": 60,  # = the default run (examples/digits.yaml)
    "batch_size": 64,
    "seed": 0,
    "model": {"hidden_sizes": (256,), "inhibitory_fraction": 0.2, "sparsity": 0.0},
    "perturbation": {"sigma": 0.1, "num_directions": 8, "layerwise": True, "lr": 0.01},
    "backprop": {"lr": 0.01},
}
# ============================================================================================

PARAMETRIZATIONS = {"dale": "exp", "plain": "plain"}
HIDDEN_WEIGHT, HIDDEN_ACTIVITY = "model.layers.0", "model.layers.1"


def make_model(parametrization: str) -> BioMLP:
    return BioMLP(
        input_shape=(1, 8, 8), num_classes=10, parametrization=parametrization,
        seed=HPARAMS["seed"], **HPARAMS["model"],
    )  # fmt: skip


def make_module(rule: str, parametrization: str) -> L.LightningModule:
    model = make_model(parametrization)
    if rule == "perturbation":
        cfg = dict(HPARAMS["perturbation"])
        optimizer = partial(torch.optim.Adam, lr=cfg.pop("lr"))
        rule_ = NodePerturbation(seed=HPARAMS["seed"], **cfg)
        return PerturbationModule(model, rule_, optimizer=optimizer)
    return BackpropModule(model, optimizer=partial(torch.optim.Adam, lr=HPARAMS["backprop"]["lr"]))


def initial_row(parametrization: str, data: DigitsDataModule) -> dict[str, float]:
    """The untrained network, measured with the same pure functions the monitors use."""
    model = make_model(parametrization).eval()
    data.setup("fit")
    probe = next(iter(data.val_dataloader()))[0]
    with torch.no_grad():
        hidden = model.layers[:2](model.normalize(probe).flatten(1))
        weights = [m.weight for m in model.layers if hasattr(m, "weight")]
        units = [dale_statistics(w) for w in weights]
        fit = lognormal_fit(weights[0])
    activity = activity_sparsity(hidden, unit_dim=1)
    return {
        "acc": float("nan"),
        "sign": sum(u["consistent_units"] for u in units) / sum(u["units"] for u in units),
        "ks_log": fit.ks_lognormal,
        "ks_norm": fit.ks_normal,
        "zero": activity["zero_fraction"],
        "pop": activity["population_sparseness"],
    }


def trained_row(rule: str, parametrization: str, epochs: int, out: str) -> dict[str, float]:
    L.seed_everything(HPARAMS["seed"], verbose=False)
    monitors = [
        SparsityMonitor(),  # samples at every validation epoch end
        DaleLawMonitor(log_on_epoch_end=True),
        WeightDistributionMonitor(log_on_epoch_end=True, save_figure=True),
    ]
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=monitors, deterministic=True,
        logger=CSVLogger(out, name=f"{rule}-{parametrization}"),
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    data = DigitsDataModule(batch_size=HPARAMS["batch_size"], seed=HPARAMS["seed"])
    module = make_module(rule, parametrization)
    trainer.fit(module, data)
    test = trainer.test(module, data, verbose=False)[0]
    sparsity, dale, weights = (m.latest for m in monitors)
    print(f"  {rule}/{parametrization}: figure {monitors[2].figure_path}")
    return {
        "acc": test["test/acc"],
        "sign": dale["dale/sign_consistency"],
        "ks_log": weights[f"weights/{HIDDEN_WEIGHT}/ks_lognormal"],
        "ks_norm": weights[f"weights/{HIDDEN_WEIGHT}/ks_normal"],
        "zero": sparsity[f"sparsity/{HIDDEN_ACTIVITY}/zero_fraction"],
        "pop": sparsity[f"sparsity/{HIDDEN_ACTIVITY}/population_sparseness"],
    }


def table(rows: list[tuple[str, dict[str, float]]]) -> str:
    lines = [
        "| network | test acc | sign consistency | KS lognormal | KS normal | better fit "
        "| hidden zero fraction | hidden population sparseness |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        acc = "–" if r["acc"] != r["acc"] else f"{r['acc']:.3f}"
        better = "lognormal" if r["ks_log"] < r["ks_norm"] else "normal"
        lines.append(
            f"| {name} | {acc} | {r['sign']:.3f} | {r['ks_log']:.3f} | {r['ks_norm']:.3f} "
            f"| {better} | {r['zero']:.3f} | {r['pop']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=HPARAMS["epochs"])
    parser.add_argument("--variants", default="dale,plain", help="comma list of dale,plain")
    parser.add_argument("--out", default="outputs/compare_properties")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(PARAMETRIZATIONS)
    if unknown or not variants:
        parser.error(f"--variants={args.variants!r}: allowed are {sorted(PARAMETRIZATIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    rows = []
    for variant in variants:
        param = PARAMETRIZATIONS[variant]
        label = "Dale BioMLP" if variant == "dale" else "BioMLP, plain weights"
        data = DigitsDataModule(batch_size=HPARAMS["batch_size"], seed=HPARAMS["seed"])
        rows.append((f"{label}, untrained", initial_row(param, data)))
        for rule in ("perturbation", "backprop"):
            name = "node perturbation" if rule == "perturbation" else "backprop"
            rows.append((f"{label}, {name}", trained_row(rule, param, args.epochs, args.out)))
    print(f"\nDigits, {args.epochs} epochs, seed {HPARAMS['seed']} "
          f"(`python examples/compare_properties.py --epochs {args.epochs}`):\n")  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
