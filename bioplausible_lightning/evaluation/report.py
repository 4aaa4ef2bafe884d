"""One command for the whole comparison: the bio rule vs backprop, same model/data/seed/budget.

:func:`run_comparison` trains both, then runs robustness (FGSM, PGD, Square, transfer),
few-shot protocols (a) and (b), a depth sweep and a representation report, and writes
``report.json``, PNG plots and ``summary.md`` into ``config.out_dir``.  ``examples/compare.py``
is its command-line front end.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from ..data.base import SplitDataModule
from ..metrics.activity import activity_sparsity
from ..metrics.distribution import weight_distribution
from ..metrics.layers import named_weights
from . import plots
from ._common import accuracy, collect
from .datamodules import PreloadedDataModule, dataset_labels
from .depth import depth_sweep
from .fewshot import PROTOCOL_A, PROTOCOL_B, episodic_few_shot
from .representations import collect_activations, representation_report
from .robustness import AttackConfig, evaluate_robustness
from .stats import mean_ci
from .training import ModuleFactory, fit

# =========================================================================================
# TUNED SETTINGS — the ONE place to update the models' and learning rules' hyper-parameters.
# Both learners always get the same architecture ("model"), data, seed, batch size and number
# of updates and LR schedule; only the gradient source differs.  "bio" builds a
# PerturbationModule with the named rule, "backprop" a BackpropModule; "module_kwargs" go to the
# module as is.  "lr_scheduler": None or "cosine" (cosine annealing to 0 over each run's budget:
# its epochs, or its optimizer steps for the step-budgeted few-shot runs).
# =========================================================================================
_MLP = {
    "kind": "mlp",
    "sparsity": 0.0,
    "inhibitory_fraction": 0.2,
    "parametrization": "exp",
    "dale": True,
}
TUNED: dict[str, dict[str, Any]] = {
    # = examples/digits.yaml (the package's default run)
    "digits": {
        "model": {**_MLP, "hidden_sizes": [256]},
        "bio": {"rule": "node",
                "rule_kwargs": {"sigma": 0.1, "num_directions": 8, "layerwise": True},
                "optimizer": "Adam", "optimizer_kwargs": {"lr": 1e-2}, "module_kwargs": {}},
        "backprop": {"optimizer": "Adam", "optimizer_kwargs": {"lr": 1e-2}, "module_kwargs": {}},
        "lr_scheduler": None,
        "batch_size": 64,
    },
    # = examples/mnist.yaml
    "mnist": {
        "model": {**_MLP, "hidden_sizes": [256]},
        "bio": {"rule": "node",
                "rule_kwargs": {"sigma": 0.05, "num_directions": 8, "layerwise": False},
                "optimizer": "Adam", "optimizer_kwargs": {"lr": 1e-2}, "module_kwargs": {}},
        "backprop": {"optimizer": "Adam", "optimizer_kwargs": {"lr": 1e-2}, "module_kwargs": {}},
        "lr_scheduler": "cosine",
        "batch_size": 64,
    },
    # not tuned separately: the MNIST rule settings on a wider MLP
    "cifar10": {
        "model": {**_MLP, "hidden_sizes": [512]},
        "bio": {"rule": "node",
                "rule_kwargs": {"sigma": 0.05, "num_directions": 8, "layerwise": False},
                "optimizer": "Adam", "optimizer_kwargs": {"lr": 1e-2}, "module_kwargs": {}},
        "backprop": {"optimizer": "Adam", "optimizer_kwargs": {"lr": 1e-2}, "module_kwargs": {}},
        "lr_scheduler": "cosine",
        "batch_size": 64,
    },
}  # fmt: skip
TUNED["imagefolder"] = TUNED["cifar10"]

#: The project's targets for the full MNIST report (checked, never tuned for).
MNIST_GOALS: list[dict[str, Any]] = [
    {"goal": "clean accuracy within 1 point of backprop", "key": "clean_gap", "min": -0.01},
    {"goal": "FGSM ε=0.1 ≥ 50%", "key": "fgsm@0.1", "min": 0.50},
    {"goal": "PGD ε=0.1 ≥ 30%", "key": "pgd@0.1", "min": 0.30},
    {"goal": "Square ε=0.1 ≥ 30%", "key": "square@0.1", "min": 0.30},
    {"goal": "transfer ε=0.1 ≥ 30%", "key": "transfer@0.1", "min": 0.30},
    {"goal": "from-scratch 1-shot ≥ 55% (protocol a)", "key": "shot1", "min": 0.55},
    {"goal": "from-scratch 5-shot ≥ 75% (protocol a)", "key": "shot5", "min": 0.75},
]
LEARNERS = ("bio", "backprop")
SECTIONS = ("robustness", "fewshot", "episodic", "depth", "representations")


@dataclass
class ComparisonConfig:
    """Sizes of every part of the comparison; :func:`quick_config` and :func:`full_config`
    give the two standard settings.  Every field is recorded in ``report.json``."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = True
    out_dir: str = "comparison"
    seed: int = 0
    epochs: int = 20
    val_fraction: float = 0.1
    eps: Sequence[float] = (0.05, 0.1, 0.2, 0.3)
    attacks: Sequence[str] = ("fgsm", "pgd", "square", "transfer")
    attack_samples: int = 1000
    pgd_steps: int = 20
    pgd_restarts: int = 1
    square_queries: int = 1000
    shots: Sequence[int] = (1, 5, 10)
    fewshot_seeds: Sequence[int] = (0, 1, 2, 3, 4)
    fewshot_steps: int = 300
    episodic_shots: Sequence[int] = (1, 5)
    episodes: int = 200
    n_query: int = 15
    base_epochs: int | None = None
    depths: Sequence[int] = (1, 2, 4, 8, 16)
    depth_epochs: int = 5
    depth_width: int = 128
    representation_samples: int = 2000
    sections: Sequence[str] = SECTIONS
    threads: int | None = None
    accelerator: str = "auto"
    tuned: dict[str, Any] | None = None
    command: str | None = None

    def __post_init__(self) -> None:
        if self.dataset not in TUNED:
            raise ValueError(
                f"dataset={self.dataset!r} is invalid: allowed values are {tuple(TUNED)}."
            )
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise ValueError(f"sections={list(self.sections)!r} is invalid: allowed {SECTIONS}.")
        if self.dataset == "imagefolder" and not self.data_dir:
            raise ValueError("data_dir=None is invalid for dataset='imagefolder': give its root.")
        for name in ("epochs", "attack_samples", "fewshot_steps", "episodes", "depth_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: it must be >= 1.")
        if self.episodes < 100 and "episodic" in self.sections:
            raise ValueError(f"episodes={self.episodes!r} is invalid: protocol (b) needs >= 100.")


def quick_config(out_dir: str = "comparison-quick", **overrides: Any) -> ComparisonConfig:
    """Digits, tiny budgets: the end-to-end smoke test (well under a minute on 2 cores)."""
    settings: dict[str, Any] = dict(
        dataset="digits", out_dir=out_dir, epochs=8, eps=(0.1, 0.2), attack_samples=200,
        pgd_steps=10, square_queries=100, shots=(1, 5), fewshot_seeds=(0, 1), fewshot_steps=40,
        episodic_shots=(1, 5), episodes=100, n_query=5, base_epochs=4, depths=(1, 2, 4),
        depth_epochs=2, depth_width=64, representation_samples=450,
    )  # fmt: skip
    settings.update(overrides)
    return ComparisonConfig(**settings)


def full_config(
    dataset: str = "mnist",
    data_dir: str | None = None,
    out_dir: str | None = None,
    **overrides: Any,
) -> ComparisonConfig:
    """The full setting: MNIST-5k (~7 min on one CPU thread) or the CIFAR-10 subset (~11 min)."""
    settings: dict[str, Any] = dict(dataset=dataset, data_dir=data_dir,
                                    out_dir=out_dir or f"comparison-{dataset}")  # fmt: skip
    if dataset == "mnist":
        settings.update(epochs=60, depths=(1, 2, 4, 8, 16), depth_epochs=5)
    else:  # ~3x the cost per example of MNIST, with twice the examples: smaller budgets
        settings.update(epochs=15, eps=(2 / 255, 4 / 255, 8 / 255, 16 / 255),
                        attack_samples=500, square_queries=500, fewshot_seeds=(0, 1, 2),
                        fewshot_steps=200, base_epochs=10, depths=(1, 2, 4, 8),
                        depth_epochs=3, depth_width=256)  # fmt: skip
    settings.update(overrides)
    return ComparisonConfig(**settings)


# -- building blocks ---------------------------------------------------------------------
def make_datamodule(config: ComparisonConfig, batch_size: int) -> SplitDataModule:
    """The data module the config names (seeded split, [0, 1] inputs)."""
    from ..data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule, MNISTDataModule

    common = dict(batch_size=batch_size, val_fraction=config.val_fraction, seed=config.seed)
    root = config.data_dir or "data"
    if config.dataset == "digits":
        return DigitsDataModule(**common)
    if config.dataset == "mnist":
        return MNISTDataModule(root, download=config.download, **common)
    if config.dataset == "cifar10":
        return CIFAR10DataModule(root, download=config.download, **common)
    return ImageFolderDataModule(root, **common)


def build_model(
    spec: dict[str, Any],
    data: PreloadedDataModule,
    seed: int,
    hidden_layers: int | None = None,
    width: int | None = None,
) -> nn.Module:
    """The architecture in ``spec``; ``hidden_layers`` makes an MLP of that depth instead."""
    from ..nn import BioConvNet, BioMLP

    spec = dict(spec)
    kind = spec.pop("kind", "mlp")
    common = dict(input_shape=data.input_shape, num_classes=data.num_classes,
                  input_mean=data.input_mean, input_std=data.input_std, seed=seed)  # fmt: skip
    if hidden_layers is not None:
        spec.pop("channels", None)
        spec.pop("hidden_size", None)
        spec["hidden_sizes"] = [width or 128] * hidden_layers
        kind = "mlp"
    if kind == "mlp":
        return BioMLP(**common, **spec)
    if kind == "conv":
        return BioConvNet(**common, **spec)
    raise ValueError(f"model kind={kind!r} is invalid: allowed values are 'mlp', 'conv'.")


def _optimizer(spec: dict[str, Any]) -> Callable:
    return functools.partial(getattr(torch.optim, spec["optimizer"]), **spec["optimizer_kwargs"])


def module_factories(
    tuned: dict[str, Any], epochs: int | None = None, steps: int | None = None
) -> dict[str, ModuleFactory]:
    """``{"bio": model -> PerturbationModule, "backprop": model -> BackpropModule}``.

    ``epochs`` or ``steps`` is the run's budget, which a ``"cosine"`` schedule spans.
    """
    from ..module import BackpropModule, PerturbationModule
    from ..rules import NodePerturbation, WeightPerturbation

    rules = {"node": NodePerturbation, "weight": WeightPerturbation}
    bio, bp = tuned["bio"], tuned["backprop"]
    if bio["rule"] not in rules:
        raise ValueError(f"rule={bio['rule']!r} is invalid: allowed values are {tuple(rules)}.")
    schedule: dict[str, Any] = {}
    name = tuned.get("lr_scheduler")
    if name == "cosine":
        if (epochs is None) == (steps is None):
            raise ValueError("a 'cosine' lr_scheduler needs exactly one of epochs or steps.")
        t_max = epochs if epochs is not None else steps
        schedule = {
            "lr_scheduler": functools.partial(
                torch.optim.lr_scheduler.CosineAnnealingLR, T_max=t_max
            ),
            "lr_scheduler_interval": "epoch" if epochs is not None else "step",
        }
    elif name is not None:
        raise ValueError(f"lr_scheduler={name!r} is invalid: allowed values are None, 'cosine'.")

    def make_bio(model: nn.Module) -> L.LightningModule:
        rule = rules[bio["rule"]](**bio["rule_kwargs"])
        return PerturbationModule(
            model, rule, optimizer=_optimizer(bio), **schedule, **bio["module_kwargs"]
        )

    def make_bp(model: nn.Module) -> L.LightningModule:
        return BackpropModule(model, optimizer=_optimizer(bp), **schedule, **bp["module_kwargs"])

    return {"bio": make_bio, "backprop": make_bp}


def describe_learners(tuned: dict[str, Any]) -> dict[str, str]:
    bio, bp = tuned["bio"], tuned["backprop"]
    kw = ", ".join(f"{k}={v}" for k, v in bio["rule_kwargs"].items())
    sched = f", {tuned['lr_scheduler']} LR schedule" if tuned.get("lr_scheduler") else ""
    return {
        "bio": f"{bio['rule']} perturbation ({kw}), {bio['optimizer']} "
        f"{bio['optimizer_kwargs']}{sched}",
        "backprop": f"backprop, {bp['optimizer']} {bp['optimizer_kwargs']}{sched}",
    }


class ActivityHistory(Callback):
    """Records each hidden layer's sparseness on a fixed probe batch at every epoch end."""

    def __init__(self, probe: tuple[Tensor, Tensor]) -> None:
        self.probe = probe
        self.history: dict[str, dict[str, list[float]]] = {}

    def _record(self, model: nn.Module, epoch: int) -> None:
        acts, _ = collect_activations(model, self.probe, max_samples=None)
        for layer, a in acts.items():
            stats = activity_sparsity(a)
            series = self.history.setdefault(
                layer, {"epoch": [], "population_sparseness": [], "silent_fraction": []}
            )
            series["epoch"].append(epoch)
            series["population_sparseness"].append(stats["population_sparseness"])
            series["silent_fraction"].append(stats["dead_fraction"])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(pl_module.model, 0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(pl_module.model, trainer.current_epoch + 1)


def _sample(
    data: PreloadedDataModule, n: int, seed: int, split: str = "test"
) -> tuple[Tensor, Tensor]:
    """A seeded random subset (test sets may be sorted by class, e.g. image folders)."""
    dataset = data.test_set if split == "test" else (data.val_set or data.train_set)
    x, y = collect(dataset)
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def weight_histograms(model: nn.Module, bins: int = 50) -> tuple[dict, dict]:
    """Histogram of log10|w| and distribution statistics of every weight layer."""
    hists, stats = {}, {}
    for name, _, weight in named_weights(model):
        w = weight.detach().float().cpu().flatten()
        logw = w.abs().clamp_min(1e-12).log10()
        density, edges = torch.histogram(logw, bins=bins, density=True)
        hists[name] = {"density": density.tolist(), "edges": edges.tolist()}
        stats[name] = weight_distribution(w)
    return hists, stats


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# -- the comparison ----------------------------------------------------------------------
def run_comparison(config: ComparisonConfig) -> dict[str, Any]:
    """Run every section in ``config.sections`` and write the report files.

    Returns the report dict (also written to ``<out_dir>/report.json``).
    """
    start = time.perf_counter()
    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, start)
    finally:
        torch.set_num_threads(old_threads)


def _run(config: ComparisonConfig, start: float) -> dict[str, Any]:
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tuned = copy.deepcopy(config.tuned or TUNED[config.dataset])
    dm = make_datamodule(config, tuned["batch_size"])
    data = PreloadedDataModule.from_datamodule(dm)
    data.setup("fit")
    seconds: dict[str, float] = {}
    report: dict[str, Any] = {
        "config": {**asdict(replace(config, tuned=None)), "tuned": tuned},
        "learners": describe_learners(tuned),
        "data": {
            "dataset": config.dataset,
            "train": len(data.train_set),
            "val": len(data.val_set) if data.val_set is not None else 0,
            "test": len(data.test_set),
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
        },
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "accelerator": config.accelerator,
        },
    }
    files = {"report": "report.json", "summary": "summary.md"}

    # 1. main training, same model init for both learners
    t = time.perf_counter()
    probe = _sample(data, 512, config.seed, split="val")
    models: dict[str, nn.Module] = {}
    clean, history, train_seconds = {}, {}, {}
    factories = module_factories(tuned, epochs=config.epochs)
    for name in LEARNERS:
        model = build_model(tuned["model"], data, config.seed)
        recorder = ActivityHistory(probe)
        t0 = time.perf_counter()
        fit(factories[name](model), data, max_epochs=config.epochs, seed=config.seed,
            callbacks=[recorder], accelerator=config.accelerator)  # fmt: skip
        train_seconds[name] = round(time.perf_counter() - t0, 2)
        models[name] = model.eval()
        clean[name] = accuracy(model, data.test_dataloader())
        history[name] = recorder.history
    report["clean"] = {
        "accuracy": clean,
        "train_seconds": train_seconds,
        "protocol": (
            f"train on {len(data.train_set)} images for {config.epochs} epochs "
            f"(batch {tuned['batch_size']}, seed {config.seed}), test on all "
            f"{len(data.test_set)} test images"
        ),
    }
    report["sparsity_history"] = history
    seconds["train"] = time.perf_counter() - t

    # 2. weights
    hists, wstats = {}, {}
    for name, model in models.items():
        hists[name], wstats[name] = weight_histograms(model)
    report["weights"] = wstats

    # 3. robustness
    if "robustness" in config.sections:
        t = time.perf_counter()
        x, y = _sample(data, config.attack_samples, config.seed)
        attack_cfg = AttackConfig(
            pgd_steps=config.pgd_steps,
            pgd_restarts=config.pgd_restarts,
            square_queries=config.square_queries,
            seed=config.seed,
        )
        report["robustness"] = {}
        for name, other in (("bio", "backprop"), ("backprop", "bio")):
            res = evaluate_robustness(models[name], (x, y), config.eps, config.attacks,
                                      attack_cfg, models[other], source_name=other)  # fmt: skip
            report["robustness"][name] = res.to_dict()
        seconds["robustness"] = time.perf_counter() - t

    # 4. few-shot (a): from scratch on K per class
    if "fewshot" in config.sections:
        t = time.perf_counter()
        test_loader = data.test_dataloader()
        results: dict[str, dict[str, Any]] = {name: {} for name in LEARNERS}
        factories = module_factories(tuned, steps=config.fewshot_steps)
        for k in config.shots:
            for name in LEARNERS:
                accs = []
                for s in config.fewshot_seeds:
                    split = data.resplit(samples_per_class=int(k), seed=int(s), val_fraction=0.0)
                    model = build_model(tuned["model"], data, int(s))
                    fit(factories[name](model), split, max_steps=config.fewshot_steps,
                        seed=int(s), accelerator=config.accelerator)  # fmt: skip
                    accs.append(accuracy(model, test_loader))
                results[name][str(k)] = mean_ci(accs).to_dict()
        report["fewshot"] = {"from_scratch": {
            "protocol": f"{PROTOCOL_A}; {config.fewshot_steps} optimizer steps per run "
                        f"(batch ≤ {tuned['batch_size']}), seeds {list(config.fewshot_seeds)}",
            "results": results,
        }}  # fmt: skip
        seconds["fewshot"] = time.perf_counter() - t

    # 5. few-shot (b): episodic on held-out classes
    if "episodic" in config.sections:
        t = time.perf_counter()
        n_cls = data.num_classes
        base = list(range(n_cls // 2 + n_cls % 2))
        held = list(range(len(base), n_cls))
        n_way = len(held)
        base_data = data.resplit(classes=base)
        base_epochs = config.base_epochs or config.epochs
        test_labels = dataset_labels(data.test_set)
        keep = torch.nonzero(torch.isin(test_labels, torch.as_tensor(held))).flatten()
        x_all, y_all = collect(data.test_set)
        held_data = (x_all[keep], y_all[keep])
        results = {name: {} for name in LEARNERS}
        factories = module_factories(tuned, epochs=base_epochs)
        for name in LEARNERS:
            model = build_model(tuned["model"], base_data, config.seed)
            fit(factories[name](model), base_data, max_epochs=base_epochs, seed=config.seed,
                accelerator=config.accelerator)  # fmt: skip
            for k in config.episodic_shots:
                est = episodic_few_shot(model, held_data, held, n_way, int(k), config.n_query,
                                        config.episodes, seed=config.seed)  # fmt: skip
                results[name][str(k)] = est.to_dict()
        # reference: prototypes of raw pixels, on the very same episodes
        results["pixels"] = {
            str(k): episodic_few_shot(nn.Flatten(), held_data, held, n_way, int(k),
                                      config.n_query, config.episodes, layer="",
                                      seed=config.seed).to_dict()
            for k in config.episodic_shots
        }  # fmt: skip
        report["fewshot"] = report.get("fewshot", {})
        report["fewshot"]["episodic"] = {
            "protocol": (
                f"{PROTOCOL_B}; trained {base_epochs} epochs on classes {base}, episodes on the "
                f"test images of held-out classes {held}; features: input of the readout layer; "
                f"{config.episodes} episodes, {config.n_query} queries per class"
            ),
            "n_way": n_way,
            "base_classes": base,
            "held_out_classes": held,
            "results": results,
        }
        seconds["episodic"] = time.perf_counter() - t

    # 6. depth sweep
    if "depth" in config.sections:
        t = time.perf_counter()

        def model_at(depth: int) -> nn.Module:
            return build_model(tuned["model"], data, config.seed, depth, config.depth_width)

        factories = module_factories(tuned, epochs=config.depth_epochs)
        res = depth_sweep(model_at, factories, data, config.depths, config.depth_epochs,
                          seed=config.seed)  # fmt: skip
        report["depth"] = res.to_dict()
        report["depth"]["protocol"] = f"MLP of width {config.depth_width}; " + res.protocol
        seconds["depth"] = time.perf_counter() - t

    # 7. representations
    if "representations" in config.sections:
        t = time.perf_counter()
        rep_data = _sample(data, config.representation_samples, config.seed)
        report["representations"] = {
            name: representation_report(model, rep_data, num_classes=data.num_classes)
            for name, model in models.items()
        }
        seconds["representations"] = time.perf_counter() - t

    # 8. files
    files["weights"] = plots.plot_weights(hists, out / "weights.png").name
    files["sparsity"] = plots.plot_sparsity(history, out / "sparsity.png").name
    if "robustness" in report:
        files["robustness"] = plots.plot_robustness(
            report["robustness"], out / "robustness.png"
        ).name
    if "fewshot" in report:
        files["fewshot"] = plots.plot_fewshot(report["fewshot"], out / "fewshot.png").name
    if "depth" in report:
        files["depth"] = plots.plot_depth(report["depth"], out / "depth.png").name
    seconds["total"] = time.perf_counter() - start
    report["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    if config.dataset == "mnist":
        report["goals"] = check_goals(report)
    report["files"] = files
    report = _json_safe(report)
    (out / "summary.md").write_text(summary_markdown(report))
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


# -- summary -----------------------------------------------------------------------------
def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _est(d: dict[str, Any] | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    return (
        _pct(d["mean"]) if d.get("ci") is None else f"{100 * d['mean']:.1f} ± {100 * d['ci']:.1f}%"
    )


def _headline_eps(eps: list[float]) -> float:
    return min(eps, key=lambda e: abs(e - 0.1)) if eps else math.nan


def _robust_at(report: dict[str, Any], name: str, attack: str, eps: float) -> float | None:
    res = report.get("robustness", {}).get(name)
    if not res or attack not in res["accuracy"]:
        return None
    for e, acc in zip(res["eps"], res["accuracy"][attack], strict=True):
        if abs(e - eps) < 1e-9:
            return acc
    return None


def check_goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each MNIST goal with its measured value and whether it is met."""
    clean = report["clean"]["accuracy"]
    few = report.get("fewshot", {}).get("from_scratch", {}).get("results", {}).get("bio", {})
    values = {
        "clean_gap": clean["bio"] - clean["backprop"],
        "shot1": (few.get("1") or {}).get("mean"),
        "shot5": (few.get("5") or {}).get("mean"),
    }
    for attack in ("fgsm", "pgd", "square", "transfer"):
        values[f"{attack}@0.1"] = _robust_at(report, "bio", attack, 0.1)
    goals = []
    for g in MNIST_GOALS:
        v = values.get(g["key"])
        goals.append({"goal": g["goal"], "value": v, "met": None if v is None else v >= g["min"]})
    return goals


def summary_markdown(report: dict[str, Any]) -> str:
    """The Markdown summary: one table, the protocol next to every number."""
    cfg, learners = report["config"], report["learners"]
    lines = [
        f"# Bio rule vs backprop on {cfg['dataset']}",
        "",
        f"- bio: {learners['bio']}",
        f"- backprop: {learners['backprop']}",
        f"- model (both): `{json.dumps(cfg['tuned']['model'])}`, seed {cfg['seed']}",
    ]
    if cfg.get("command"):
        lines.append(f"- command: `{cfg['command']}`")
    lines += ["", "| Metric | Protocol | bio | backprop |", "|---|---|---|---|"]

    def row(metric: str, protocol: str, bio: str, bp: str) -> None:
        lines.append(f"| {metric} | {protocol} | {bio} | {bp} |")

    clean = report["clean"]
    row("clean test accuracy", clean["protocol"], _pct(clean["accuracy"]["bio"]),
        _pct(clean["accuracy"]["backprop"]))  # fmt: skip
    if "robustness" in report:
        rob = report["robustness"]
        n = rob["bio"]["n_samples"]
        for attack in cfg["attacks"]:
            if attack not in rob["bio"]["accuracy"]:
                continue
            for e in rob["bio"]["eps"]:
                protocol = rob["bio"]["protocol"][attack]
                if attack == "transfer":
                    protocol += " (source: the other learner)"
                row(f"{attack} ε={e:.3g}", f"robust accuracy, {n} test images; {protocol}",
                    _pct(_robust_at(report, "bio", attack, e)),
                    _pct(_robust_at(report, "backprop", attack, e)))  # fmt: skip
    few = report.get("fewshot", {})
    if "from_scratch" in few:
        fs = few["from_scratch"]
        for k in fs["results"]["bio"]:
            row(f"{k}-shot (a)", fs["protocol"], _est(fs["results"]["bio"][k]),
                _est(fs["results"]["backprop"][k]))  # fmt: skip
    if "episodic" in few:
        ep = few["episodic"]
        for k in ep["results"]["bio"]:
            pixels = ep["results"].get("pixels", {}).get(k)
            ref = f" (raw-pixel prototypes, same episodes: {_est(pixels)})" if pixels else ""
            row(f"{ep['n_way']}-way {k}-shot (b)", ep["protocol"] + ref,
                _est(ep["results"]["bio"][k]), _est(ep["results"]["backprop"][k]))  # fmt: skip
    if "depth" in report:
        d = report["depth"]
        for i, depth in enumerate(d["depths"]):
            row(f"depth {depth}", d["protocol"], _pct(d["accuracy"]["bio"][i]),
                _pct(d["accuracy"]["backprop"][i]))  # fmt: skip
    if "representations" in report:
        reps = report["representations"]
        protocol = f"{cfg['representation_samples']} test images; "
        for layer in reps["bio"]:
            for key, label, how in (
                ("silent_fraction", "silent units", "never active"),
                ("population_sparseness", "population sparseness", "Treves–Rolls, 0–1"),
                ("lifetime_sparseness", "lifetime sparseness", "Treves–Rolls, 0–1"),
                ("selectivity_mean", "class selectivity", "mean over active units, 0–1"),
                ("task_specific_fraction", "task-specific units", "selectivity > 0.5"),
            ):
                b, p = reps["bio"][layer].get(key), reps["backprop"].get(layer, {}).get(key)
                fmt = (
                    _pct
                    if key.endswith("fraction")
                    else (lambda v: "–" if v is None else f"{v:.2f}")
                )
                row(f"{label} ({layer})", protocol + how, fmt(b), fmt(p))
    if "goals" in report:
        lines += ["", "## Project goals (MNIST)", "", "| Goal | bio | met |", "|---|---|---|"]
        for g in report["goals"]:
            met = "–" if g["met"] is None else ("yes" if g["met"] else "**no**")
            value = _pct(g["value"]) if g["value"] is not None else "–"
            if g["goal"].startswith("clean") and g["value"] is not None:
                value = f"{100 * g['value']:+.1f} points"
            lines.append(f"| {g['goal']} | {value} | {met} |")
    s = report.get("seconds", {})
    lines += ["", "Wall-clock seconds: " + ", ".join(f"{k} {v}" for k, v in s.items()), ""]
    return "\n".join(lines)


__all__ = [
    "MNIST_GOALS",
    "TUNED",
    "ActivityHistory",
    "ComparisonConfig",
    "build_model",
    "check_goals",
    "full_config",
    "make_datamodule",
    "module_factories",
    "quick_config",
    "run_comparison",
    "summary_markdown",
]
