"""One command for the whole comparison: a list of learners, each built from the LightningCLI
YAML config users run (``bioplausible-lightning fit --config ...``), on the same data and seed.

:func:`run_comparison` trains every learner, then runs one function per section: robustness
(FGSM, PGD, Square, AutoAttack, transfer), few-shot protocols (a), (b) and (c), a depth sweep
and a representation report, and writes ``report.json``, PNG plots and ``summary.md`` into
``config.out_dir``.  ``examples/compare.py`` is its command-line front end.

The learners' settings live only in their YAML files (``model:`` section: the module, its
model, rule, optimizer and LR schedule; ``data.init_args.batch_size``; ``trainer.max_epochs``).
The report overrides, for every run, the model's ``input_shape``, ``num_classes`` and ``seed``
(to the data and the run), its ``hidden_sizes`` in the depth sweep, the run's budget
(``ComparisonConfig.epochs`` if set, else ``trainer.max_epochs``; fixed steps in few-shot (a)),
and the ``T_max`` of a ``CosineAnnealingLR`` so that the schedule spans each run's budget.
Other ``trainer:`` and ``data:`` settings are not used: every run is a quiet fixed-budget
:func:`fit` on the comparison's own splits.  A learner that sets one that would change what
it learns (``trainer.gradient_clip_val``, ``data.max_shift``, ...) is refused when the
setting is an override and announced by a warning when it is in the config file.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from .._validation import check_choice, check_min_int
from ..data.augment import shifted_copies
from ..data.base import SplitDataModule
from ..data.preloaded import PreloadedDataModule, dataset_labels
from ..metrics.activity import activity_sparsity
from ..metrics.distribution import weight_distribution
from ..metrics.layers import named_weights
from . import plots
from ._common import accuracy, collect
from .depth import depth_sweep
from .fewshot import (
    PROTOCOL_A,
    PROTOCOL_B,
    PROTOCOL_C,
    Metric,
    episodic_few_shot,
    extract_features,
    linear_probe_few_shot,
    nearest_neighbour_accuracy,
)
from .learners import DEFAULT_LEARNERS, Learner, LearnerRun
from .representations import collect_activations, representation_report
from .robustness import AttackConfig, evaluate_robustness
from .stats import mean_ci
from .training import fit

log = logging.getLogger(__name__)

#: Issue 7's goals for the paper's rule on MNIST (checked, never tuned for).  ``clean_gap``
#: is the goal learner's clean accuracy minus the reference's (the Dale backprop baseline).
MNIST_GOALS: list[dict[str, Any]] = [
    {"goal": "clean ≥ Dale backprop − 0.5 pt", "key": "clean_gap", "min": -0.005},
    {"goal": "FGSM ε=0.1 ≥ 50%", "key": "fgsm@0.1", "min": 0.50},
    {"goal": "PGD ε=0.1 ≥ 30%", "key": "pgd@0.1", "min": 0.30},
    {"goal": "Square ε=0.1 ≥ 30%", "key": "square@0.1", "min": 0.30},
    {"goal": "transfer ε=0.1 ≥ 40%", "key": "transfer@0.1", "min": 0.40},
    {"goal": "1-shot ≥ 50% (protocol a)", "key": "shot1", "min": 0.50},
    {"goal": "5-shot ≥ 70% (protocol a)", "key": "shot5", "min": 0.70},
    {"goal": "depth 8 ≥ depth 1 − 5 pts", "key": "depth_gap", "min": -0.05},
    {"goal": "1-shot above raw-pixel prototypes (protocol b, same metric)",
     "key": "episodic1_gap", "min": 0.0, "strict": True},
    {"goal": "5-shot above raw-pixel prototypes (protocol b, same metric)",
     "key": "episodic5_gap", "min": 0.0, "strict": True},
]
#: How protocol (b)'s protocol text names each prototype metric.
METRIC_WORDS: dict[str, str] = {
    "euclidean": "prototype metric: Euclidean distance",
    "cosine": "prototype metric: cosine similarity",
}
SECTIONS = ("robustness", "fewshot", "episodic", "fewshot_c", "depth", "representations")


@dataclass
class ComparisonConfig:
    """Sizes of every part of the comparison; :func:`quick_config` and :func:`full_config`
    give the two standard settings.  Every field is recorded in ``report.json``.

    ``learners`` defaults to :data:`DEFAULT_LEARNERS` of the data set.  ``reference`` is the
    learner whose clean accuracy the goals compare with and on which transfer examples are
    crafted for every other learner; ``reference_source`` is the transfer source for the
    reference itself.  ``epochs=None``: each learner's own ``trainer.max_epochs``.
    ``depth_width=None``: the depth sweep repeats each learner's own first hidden width.
    ``shots`` are the K of protocols (a) and (c); ``fewshot_seeds`` the draws of (a) (each a
    training run), ``probe_seeds`` those of (c) (cheap: a logistic regression each).
    ``fewshot_shift > 0``: protocol (a)'s K-shot training images are shifted at random by up to
    that many pixels every time they are drawn (``SplitDataModule.max_shift``), for every
    learner alike; the pixel look-up reference then also searches every shift of them.
    ``episodic_metric``: protocol (b)'s nearest-prototype metric, for the learners and the
    raw-pixel reference alike.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = True
    out_dir: str = "comparison"
    seed: int = 0
    learners: Sequence[Learner] | None = None
    reference: str = "backprop-dale"
    reference_source: str = "backprop"
    goal_learner: str = "hebbian,hebbian-dot"
    epochs: int | None = None
    val_fraction: float = 0.1
    eps: Sequence[float] = (0.05, 0.1, 0.2, 0.3)
    attacks: Sequence[str] = ("fgsm", "pgd", "square", "autoattack", "transfer")
    attack_samples: int = 1000
    autoattack_samples: int = 200
    pgd_steps: int = 20
    pgd_restarts: int = 1
    square_queries: int = 1000
    shots: Sequence[int] = (1, 5, 10)
    fewshot_seeds: Sequence[int] = (0, 1, 2, 3, 4)
    fewshot_steps: int = 300
    fewshot_shift: int = 0
    probe_seeds: Sequence[int] = (0, 1, 2, 3, 4)
    episodic_shots: Sequence[int] = (1, 5)
    episodes: int = 200
    n_query: int = 15
    episodic_metric: Metric = "euclidean"
    base_epochs: int | None = None
    depths: Sequence[int] = (1, 2, 4, 8, 16)
    depth_epochs: int = 5
    depth_width: int | None = None
    representation_samples: int = 2000
    sections: Sequence[str] = SECTIONS
    threads: int | None = None
    accelerator: str = "auto"
    command: str | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DEFAULT_LEARNERS:
            raise ValueError(
                f"dataset={self.dataset!r} is invalid: allowed values are "
                f"{tuple(DEFAULT_LEARNERS)}."
            )
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise ValueError(f"sections={list(self.sections)!r} is invalid: allowed {SECTIONS}.")
        if self.dataset == "imagefolder" and not self.data_dir:
            raise ValueError("data_dir=None is invalid for dataset='imagefolder': give its root.")
        for name in ("attack_samples", "autoattack_samples", "fewshot_steps", "episodes",
                     "depth_epochs"):  # fmt: skip
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: it must be >= 1.")
        check_min_int("fewshot_shift", self.fewshot_shift, 0)
        for name in ("epochs", "base_epochs", "depth_width"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name}={value!r} is invalid: it must be >= 1 or None.")
        check_choice("episodic_metric", self.episodic_metric, get_args(Metric))
        if self.episodes < 100 and "episodic" in self.sections:
            raise ValueError(f"episodes={self.episodes!r} is invalid: protocol (b) needs >= 100.")
        if self.learners is None:
            self.learners = DEFAULT_LEARNERS[self.dataset]
        names = [lr.name for lr in self.learners]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"learners={names!r} is invalid: need >= 2 learners, unique names.")
        if self.reference not in names:
            raise ValueError(f"reference={self.reference!r} is invalid: allowed {names}.")


def quick_config(out_dir: str = "comparison-quick", **overrides: Any) -> ComparisonConfig:
    """Digits, tiny budgets: the end-to-end smoke test (well under a minute on 2 cores).

    AutoAttack is left out (its cost barely shrinks with the sample count); add it with
    ``attacks=(..., "autoattack"), autoattack_samples=...``."""
    settings: dict[str, Any] = dict(
        dataset="digits", out_dir=out_dir, epochs=4, eps=(0.1, 0.2), attack_samples=200,
        attacks=("fgsm", "pgd", "square", "transfer"), pgd_steps=10, square_queries=100,
        shots=(1, 5), fewshot_seeds=(0, 1), probe_seeds=(0, 1), fewshot_steps=40,
        episodic_shots=(1, 5), episodes=100, n_query=5, base_epochs=3, depths=(1, 2),
        depth_epochs=1, depth_width=64, representation_samples=450,
    )  # fmt: skip
    settings.update(overrides)
    return ComparisonConfig(**settings)


def full_config(
    dataset: str = "mnist",
    data_dir: str | None = None,
    out_dir: str | None = None,
    **overrides: Any,
) -> ComparisonConfig:
    """The full setting: MNIST-5k or the CIFAR-10 subset, each learner's own epochs."""
    settings: dict[str, Any] = dict(dataset=dataset, data_dir=data_dir,
                                    out_dir=out_dir or f"comparison-{dataset}")  # fmt: skip
    if dataset != "mnist":  # ~3x the cost per example of MNIST, with twice the examples
        settings.update(eps=(2 / 255, 4 / 255, 8 / 255, 16 / 255), attack_samples=500,
                        autoattack_samples=100, square_queries=500, fewshot_seeds=(0, 1, 2),
                        fewshot_steps=200, base_epochs=10, depths=(1, 2, 4, 8),
                        depth_epochs=3)  # fmt: skip
    settings.update(overrides)
    return ComparisonConfig(**settings)


class ActivityHistory(Callback):
    """Records each hidden layer's sparseness on a fixed probe batch at every epoch end."""

    def __init__(self, probe: tuple[Tensor, Tensor]) -> None:
        self.probe = probe
        self.history: dict[str, dict[str, list[float]]] = {}

    def record(self, model: nn.Module, epoch: int) -> None:
        """Add ``model``'s sparseness on the probe as the value at ``epoch``."""
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
        self.record(pl_module.model, 0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record(pl_module.model, trainer.current_epoch + 1)


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
@dataclass
class Context:
    """What every section gets: the config (trainer settings included), the loaded data,
    the learners and, after :func:`train_section`, their trained models."""

    config: ComparisonConfig
    data: PreloadedDataModule
    learners: dict[str, LearnerRun]
    models: dict[str, nn.Module] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def single(
        cls,
        learner: Learner,
        dataset: str = "mnist",
        data_dir: str | None = None,
        seed: int = 0,
        **settings: Any,
    ) -> Context:
        """A context of one learner on the full setting's data (``download=False``), for the
        example scripts that study one config; the learner is ``ctx.learners[learner.name]``.
        ``settings`` are other :class:`ComparisonConfig` fields (e.g. ``fewshot_shift``)."""
        # a comparison needs two learners: the second is never built
        config = full_config(
            dataset, data_dir, None, download=False, seed=seed,
            learners=(learner, Learner(f"{learner.name}-unused", learner.config)),
            reference=learner.name, **settings,
        )  # fmt: skip
        data = PreloadedDataModule.from_datamodule(make_datamodule(config))
        data.setup("fit")
        return cls(config, data, {learner.name: LearnerRun(learner)})

    def data_for(self, run: LearnerRun, data: PreloadedDataModule | None = None, **split: Any):
        """``data`` (default: the comparison's) re-split for ``run``'s batch size."""
        return (data or self.data).resplit(batch_size=run.batch_size, **split)

    def epochs(self, run: LearnerRun) -> int:
        epochs = self.config.epochs or run.max_epochs
        if not epochs:
            raise ValueError(f"learner {run.name!r}: no trainer.max_epochs and epochs=None.")
        return int(epochs)

    def epoch_steps(self, run: LearnerRun) -> int:
        """Optimizer steps in one epoch of the comparison's training split for ``run``."""
        return math.ceil(len(self.data.train_set) / run.batch_size)

    def fit(self, module: L.LightningModule, data: L.LightningDataModule, seed: int | None = None,
            **budget: Any) -> None:  # fmt: skip
        """:func:`fit` with the comparison's trainer settings (accelerator, seed)."""
        seed = self.config.seed if seed is None else seed
        fit(module, data, seed=seed, accelerator=self.config.accelerator, **budget)

    def fit_few_shot(
        self, run: LearnerRun, shots: int, seed: int, steps: int
    ) -> tuple[nn.Module, PreloadedDataModule]:
        """One run of protocol (a): ``run``'s model trained from scratch on ``shots`` labelled
        examples per class (draw ``seed``) for ``steps`` optimizer steps, its step schedules
        scaled to that budget; returns the trained model and its training split."""
        split = self.data_for(run, samples_per_class=shots, seed=seed, val_fraction=0.0,
                              max_shift=self.config.fewshot_shift)  # fmt: skip
        model = run.model(self.data, seed)
        module = run.module(model, steps=steps, epoch_steps=self.epoch_steps(run))
        self.fit(module, split, seed=seed, max_steps=steps)
        return model, split


def train_section(ctx: Context) -> dict[str, Any]:
    """Train every learner on the full training split; clean accuracy, activity, weights."""
    probe = _sample(ctx.data, 512, ctx.config.seed, split="val")
    clean, history, seconds, epochs, hists, wstats = {}, {}, {}, {}, {}, {}
    for name, run in ctx.learners.items():
        model = run.model(ctx.data, ctx.config.seed)
        recorder = ActivityHistory(probe)
        epochs[name] = ctx.epochs(run)
        t0 = time.perf_counter()
        module = run.module(model, epochs=epochs[name])
        if run.learner.checkpoint:  # trained already: evaluate its weights
            epochs[name] = run.load_checkpoint(module)
            recorder.record(model.eval(), epochs[name])
        else:
            ctx.fit(module, ctx.data_for(run), max_epochs=epochs[name], callbacks=[recorder])
        seconds[name] = round(time.perf_counter() - t0, 2)
        ctx.models[name] = model.eval()
        clean[name] = accuracy(model, ctx.data.test_dataloader())
        history[name] = recorder.history
        hists[name], wstats[name] = weight_histograms(model)
    ctx.figures.update(weights=hists, sparsity=history)
    data = ctx.data
    return {
        "clean": {
            "accuracy": clean,
            "train_seconds": seconds,
            "epochs": epochs,
            "protocol": (
                f"train on {len(data.train_set)} images with each learner's batch size for "
                f"the epochs listed (seed {ctx.config.seed}), test on all "
                f"{len(data.test_set)} test images"
            ),
        },
        "sparsity_history": history,
        "weights": wstats,
    }


def transfer_source(names: Sequence[str], reference: str, reference_source: str, name: str) -> str:
    """The learner whose adversarial examples are transferred to learner ``name``: the
    reference for every other learner; ``reference_source`` (else the first other learner)
    for the reference itself."""
    if name != reference:
        return reference
    if reference_source in names and reference_source != name:
        return reference_source
    return next(n for n in names if n != name)


def robustness_section(ctx: Context) -> dict[str, Any]:
    """Every attack at every ε on the same test examples, for every learner."""
    cfg = ctx.config
    x, y = _sample(ctx.data, cfg.attack_samples, cfg.seed)
    attack_cfg = AttackConfig(pgd_steps=cfg.pgd_steps, pgd_restarts=cfg.pgd_restarts,
                              square_queries=cfg.square_queries,
                              autoattack_samples=cfg.autoattack_samples, seed=cfg.seed)  # fmt: skip
    out = {}
    for name, model in ctx.models.items():
        source = transfer_source(list(ctx.learners), cfg.reference, cfg.reference_source, name)
        res = evaluate_robustness(model, (x, y), cfg.eps, cfg.attacks, attack_cfg,
                                  ctx.models[source], source_name=source)  # fmt: skip
        out[name] = res.to_dict()
    return {"robustness": out}


def fewshot_section(ctx: Context) -> dict[str, Any]:
    """Protocol (a): every learner trained from scratch on K labelled examples per class."""
    cfg, data = ctx.config, ctx.data
    test_loader = data.test_dataloader()
    results: dict[str, dict[str, Any]] = {name: {} for name in ctx.learners}
    for name, run in ctx.learners.items():
        for k in cfg.shots:
            accs = []
            for s in cfg.fewshot_seeds:
                model, _ = ctx.fit_few_shot(run, int(k), int(s), cfg.fewshot_steps)
                accs.append(accuracy(model, test_loader))
            results[name][str(k)] = mean_ci(accs).to_dict()
    # reference: the nearest labelled example in pixel space, on the very same draws (with
    # shifted training images: the nearest of every shift of them)
    test = collect(data.test_set)
    pixel_nn = {}
    for k in cfg.shots:
        accs = []
        for s in cfg.fewshot_seeds:
            split = data.resplit(samples_per_class=int(k), seed=int(s), val_fraction=0.0)
            split.setup("fit")
            x, y = collect(split.train_set)
            x, y = shifted_copies(x, cfg.fewshot_shift), y.repeat((2 * cfg.fewshot_shift + 1) ** 2)
            accs.append(nearest_neighbour_accuracy((x, y), test))
        pixel_nn[str(k)] = mean_ci(accs).to_dict()
    shift = (f"; training images shifted at random by up to {cfg.fewshot_shift} pixels each "
             "time they are drawn" if cfg.fewshot_shift else "")  # fmt: skip
    return {"from_scratch": {
        "protocol": f"{PROTOCOL_A}; {cfg.fewshot_steps} optimizer steps per run (batch ≤ each "
                    f"learner's batch size), seeds {list(cfg.fewshot_seeds)}{shift}",
        "results": results,
        "pixel_nn": pixel_nn,
        "shift": cfg.fewshot_shift,
    }}  # fmt: skip


def episodic_section(ctx: Context) -> dict[str, Any]:
    """Protocol (b): trained on the first half of the classes, episodes on the others."""
    cfg, data = ctx.config, ctx.data
    n_cls = data.num_classes
    base = list(range(n_cls // 2 + n_cls % 2))
    held = list(range(len(base), n_cls))
    n_way = len(held)
    base_data = data.resplit(classes=base)
    keep = torch.nonzero(torch.isin(dataset_labels(data.test_set), torch.as_tensor(held)))
    x_all, y_all = collect(data.test_set)
    held_data = (x_all[keep.flatten()], y_all[keep.flatten()])
    results: dict[str, dict[str, Any]] = {}
    for name, run in ctx.learners.items():
        epochs = cfg.base_epochs or ctx.epochs(run)
        model = run.model(base_data, cfg.seed)
        ctx.fit(run.module(model, epochs=epochs), ctx.data_for(run, base_data),
                max_epochs=epochs)  # fmt: skip
        results[name] = {
            str(k): episodic_few_shot(model, held_data, held, n_way, int(k), cfg.n_query,
                                      cfg.episodes, metric=cfg.episodic_metric,
                                      seed=cfg.seed).to_dict()
            for k in cfg.episodic_shots
        }  # fmt: skip
    # reference: prototypes of raw pixels, on the very same episodes
    results["pixels"] = {
        str(k): episodic_few_shot(nn.Flatten(), held_data, held, n_way, int(k), cfg.n_query,
                                  cfg.episodes, layer="", metric=cfg.episodic_metric,
                                  seed=cfg.seed).to_dict()
        for k in cfg.episodic_shots
    }  # fmt: skip
    budget = f"{cfg.base_epochs} epochs" if cfg.base_epochs else "each learner's epochs"
    return {"episodic": {
        "protocol": f"{PROTOCOL_B}; trained {budget} on classes {base}, episodes on the test "
                    f"images of held-out classes {held}; features: input of the readout layer; "
                    f"{METRIC_WORDS[cfg.episodic_metric]}; {cfg.episodes} episodes, "
                    f"{cfg.n_query} queries per class",
        "n_way": n_way,
        "metric": cfg.episodic_metric,
        "base_classes": base,
        "held_out_classes": held,
        "results": results,
    }}  # fmt: skip


def fewshot_c_section(ctx: Context) -> dict[str, Any]:
    """Protocol (c): the trained hidden representation of every learner whose hidden layers
    never saw labels, frozen, and a logistic-regression readout on K labelled examples per
    class; beside it raw pixels and the same model untrained (random hidden layers)."""
    cfg, data = ctx.config, ctx.data
    train, test = collect(data.train_set), collect(data.test_set)

    def probe(features: Callable[[tuple[Tensor, Tensor]], Tensor]) -> dict[str, Any]:
        res = linear_probe_few_shot((features(train), train[1]), (features(test), test[1]),
                                    cfg.shots, cfg.probe_seeds, data.num_classes)  # fmt: skip
        return {str(k): est.to_dict() for k, est in res.items()}

    def hidden(model: nn.Module) -> Callable[[tuple[Tensor, Tensor]], Tensor]:
        return lambda xy: extract_features(model, xy)[0]

    results: dict[str, dict[str, Any]] = {"pixels": probe(lambda xy: xy[0].flatten(1))}
    random_of: dict[str, str] = {}
    for name, run in ctx.learners.items():
        if not run.label_free_hidden():
            continue
        results[name] = probe(hidden(ctx.models[name]))
        results[f"random ({name})"] = probe(hidden(run.model(data, cfg.seed).eval()))
        random_of[f"random ({name})"] = name
    return {"fewshot_label_free": {
        "protocol": f"{PROTOCOL_C}; features: input of the readout layer, of the model trained "
                    f"in the main run; draws (seeds) {list(cfg.probe_seeds)}; 'random (X)': "
                    "X's model untrained (its initial weights), same recipe; 'pixels': raw pixels",
        "learners": [n for n in results if n != "pixels" and n not in random_of],
        "results": results,
    }}  # fmt: skip


def depth_section(ctx: Context) -> dict[str, Any]:
    """Test accuracy of deeper variants of each learner's model (hidden width repeated)."""
    cfg = ctx.config
    accs, widths, skipped = {}, {}, []
    protocol = ""
    for name, run in ctx.learners.items():
        if not run.has_hidden_sizes():  # e.g. a conv stack: nothing to repeat
            skipped.append(name)
            continue
        width = cfg.depth_width or run.width()
        widths[name] = width

        def model_at(depth: int, run: LearnerRun = run, width: int = width) -> nn.Module:
            return run.model(ctx.data, cfg.seed, [width] * depth)

        res = depth_sweep(model_at, {name: functools.partial(run.module, epochs=cfg.depth_epochs)},
                          ctx.data_for(run), cfg.depths, cfg.depth_epochs, seed=cfg.seed,
                          accelerator=cfg.accelerator)  # fmt: skip
        accs[name], protocol = res.accuracy[name], res.protocol
    return {"depth": {
        "depths": [int(d) for d in cfg.depths],
        "accuracy": accs,
        "width": widths,
        "protocol": f"each learner's model with D hidden layers of width {_widths(widths)}; "
                    + protocol
                    + (f"; not run for {', '.join(skipped)} (no hidden_sizes to repeat)"
                       if skipped else ""),
    }}  # fmt: skip


def _widths(widths: dict[str, int]) -> str:
    values = set(widths.values())
    if len(values) == 1:
        return str(values.pop())
    return ", ".join(f"{w} ({n})" for n, w in widths.items())


def representations_section(ctx: Context) -> dict[str, Any]:
    """Sparseness, silent units and class selectivity of every hidden layer."""
    rep_data = _sample(ctx.data, ctx.config.representation_samples, ctx.config.seed)
    return {name: representation_report(model, rep_data, num_classes=ctx.data.num_classes)
            for name, model in ctx.models.items()}  # fmt: skip


#: section name → (where its result goes in the report, the function).
SECTION_FUNCTIONS: dict[str, tuple[str, Callable[[Context], dict[str, Any]]]] = {
    "robustness": ("", robustness_section),
    "fewshot": ("fewshot", fewshot_section),
    "episodic": ("fewshot", episodic_section),
    "fewshot_c": ("", fewshot_c_section),
    "depth": ("", depth_section),
    "representations": ("representations", representations_section),
}


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


def make_datamodule(config: ComparisonConfig) -> SplitDataModule:
    """The data module the config names (seeded split, [0, 1] inputs)."""
    from ..data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule, MNISTDataModule

    common = dict(val_fraction=config.val_fraction, seed=config.seed)
    root = config.data_dir or "data"
    if config.dataset == "digits":
        return DigitsDataModule(**common)
    if config.dataset == "mnist":
        return MNISTDataModule(root, download=config.download, **common)
    if config.dataset == "cifar10":
        return CIFAR10DataModule(root, download=config.download, **common)
    return ImageFolderDataModule(root, **common)


def _run(config: ComparisonConfig, start: float) -> dict[str, Any]:
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    learners = {lr.name: LearnerRun(lr) for lr in config.learners}
    data = PreloadedDataModule.from_datamodule(make_datamodule(config))
    data.setup("fit")
    ctx = Context(config, data, learners)
    report: dict[str, Any] = {
        "config": asdict(config),
        "learners": {name: run.describe() for name, run in learners.items()},
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
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    report.update(train_section(ctx))
    seconds["train"] = time.perf_counter() - t
    _write(out, report, seconds, config, "train")
    for section in SECTIONS:
        if section not in config.sections:
            continue
        t = time.perf_counter()
        key, function = SECTION_FUNCTIONS[section]
        result = function(ctx)
        if key:
            report.setdefault(key, {}).update(result)
        else:
            report.update(result)
        seconds[section] = time.perf_counter() - t
        _write(out, report, seconds, config, section)
    files = {"report": "report.json", "summary": "summary.md"}
    files["weights"] = plots.plot_weights(ctx.figures["weights"], out / "weights.png").name
    files["sparsity"] = plots.plot_sparsity(ctx.figures["sparsity"], out / "sparsity.png").name
    if "robustness" in report:
        files["robustness"] = plots.plot_robustness(
            report["robustness"], out / "robustness.png"
        ).name
    if "fewshot" in report:
        files["fewshot"] = plots.plot_fewshot(report["fewshot"], out / "fewshot.png").name
    if "depth" in report:
        files["depth"] = plots.plot_depth(report["depth"], out / "depth.png").name
    seconds["total"] = time.perf_counter() - start
    report["files"] = files
    return _write(out, report, seconds, config, None)


def _write(
    out: Path,
    report: dict[str, Any],
    seconds: dict[str, float],
    config: ComparisonConfig,
    section: str | None,
) -> dict[str, Any]:
    """Write ``report.json`` and ``summary.md`` as they stand: after every section (so a
    long run that is stopped keeps what it measured; ``report["complete"]`` is False
    until the end) and at the end."""
    report["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    report["complete"] = section is None
    if config.dataset == "mnist":
        report["goals"] = check_goals(report)
    if section is not None:
        log.info("compare: %s done in %.0f s", section, seconds[section])
    report = _json_safe(report)
    (out / "summary.md").write_text(summary_markdown(report))
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


# -- summary -----------------------------------------------------------------------------
def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _est(d: dict[str, Any] | None, spread: str = "ci") -> str:
    """``mean ± ci`` (or ``± std`` with ``spread="std"``) of an :class:`Estimate` dict."""
    if not d or d.get("mean") is None:
        return "–"
    if d.get(spread) is None:
        return _pct(d["mean"])
    return f"{100 * d['mean']:.1f} ± {100 * d[spread]:.1f}%"


def _robust_at(report: dict[str, Any], name: str, attack: str, eps: float) -> float | None:
    res = report.get("robustness", {}).get(name)
    if not res or attack not in res["accuracy"]:
        return None
    for e, acc in zip(res["eps"], res["accuracy"][attack], strict=True):
        if abs(e - eps) < 1e-9:
            return acc
    return None


def check_goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 7's MNIST goals for each goal learner (``goal_learner``: a comma list; names
    not in the report are skipped): measured value, bar, met or missed."""
    names = [n.strip() for n in report["config"]["goal_learner"].split(",") if n.strip()]
    return [g for name in names for g in _goals_of(report, name)]


def _goals_of(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
    reference = report["config"]["reference"]
    clean = report["clean"]["accuracy"]
    if name not in clean:
        return []
    few = report.get("fewshot", {}).get("from_scratch", {}).get("results", {}).get(name, {})
    values: dict[str, float | None] = {
        "clean_gap": clean[name] - clean[reference] if reference in clean else None,
        "shot1": (few.get("1") or {}).get("mean"),
        "shot5": (few.get("5") or {}).get("mean"),
        "depth_gap": None,
    }
    depth = report.get("depth")
    if depth and name in depth["accuracy"] and {1, 8} <= set(depth["depths"]):
        accs = dict(zip(depth["depths"], depth["accuracy"][name], strict=True))
        if accs[1] is not None and accs[8] is not None:
            values["depth_gap"] = accs[8] - accs[1]
    for attack in ("fgsm", "pgd", "square", "transfer"):
        values[f"{attack}@0.1"] = _robust_at(report, name, attack, 0.1)
    episodic = report.get("fewshot", {}).get("episodic", {}).get("results", {})
    for k in ("1", "5"):
        mine, pixels = episodic.get(name, {}).get(k), episodic.get("pixels", {}).get(k)
        if mine and pixels:
            values[f"episodic{k}_gap"] = mine["mean"] - pixels["mean"]
    goals = []
    for g in MNIST_GOALS:
        v = values.get(g["key"])
        met = None if v is None else (v > g["min"] if g.get("strict") else v >= g["min"])
        goals.append({"goal": g["goal"], "learner": name, "key": g["key"], "value": v,
                      "min": g["min"], "met": met})  # fmt: skip
    return goals


def summary_markdown(report: dict[str, Any]) -> str:
    """The Markdown summary: one table with one column per learner, the protocol on every
    row; protocol (c) in a table of its own."""
    cfg, learners = report["config"], report["learners"]
    names = list(learners)
    lines = [f"# Learners compared on {cfg['dataset']}", ""]
    if report.get("complete") is False:
        done = ", ".join(report.get("seconds", {}))
        lines += [f"**Incomplete run**: sections done so far: {done}.", ""]
    lines += [f"- {name}: {desc}" for name, desc in learners.items()]
    lines.append(f"- seed {cfg['seed']}; transfer source: {cfg['reference']} for every other "
                 f"learner, {_reference_source(cfg)} for {cfg['reference']}")  # fmt: skip
    if cfg.get("command"):
        lines.append(f"- command: `{cfg['command']}`")
    lines += ["", "| Metric | Protocol | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]  # fmt: skip

    def row(metric: str, protocol: str, cells: list[str]) -> None:
        lines.append(f"| {metric} | {protocol} | " + " | ".join(cells) + " |")

    clean = report["clean"]
    epochs = ", ".join(f"{n} {e}" for n, e in clean.get("epochs", {}).items())
    row("clean test accuracy", f"{clean['protocol']}; epochs: {epochs}",
        [_pct(clean["accuracy"].get(n)) for n in names])  # fmt: skip
    if "robustness" in report:
        rob = report["robustness"]
        first = rob[names[0]]
        for attack in cfg["attacks"]:
            if attack not in first["accuracy"]:
                continue
            n = first.get("n_attacked", {}).get(attack, first["n_samples"])
            for e in first["eps"]:
                row(f"{attack} ε={e:.3g}",
                    f"robust accuracy, {n} test images; {first['protocol'][attack]}",
                    [_pct(_robust_at(report, m, attack, e)) for m in names])  # fmt: skip
    few = report.get("fewshot", {})
    if "from_scratch" in few:
        fs = few["from_scratch"]
        for k in fs["results"][names[0]]:
            cells = [_est(fs["results"].get(m, {}).get(k)) for m in names]
            nn_ref = fs.get("pixel_nn", {}).get(k)
            among = " or any shift of one" if fs.get("shift") else ""
            ref = f" (nearest labelled example{among} in pixel space, same draws: {_est(nn_ref)})"
            row(f"{k}-shot (a)", fs["protocol"] + (ref if nn_ref else ""), cells)
    if "episodic" in few:
        ep = few["episodic"]
        for k in ep["results"][names[0]]:
            pixels = ep["results"].get("pixels", {}).get(k)
            ref = f" (raw-pixel prototypes, same episodes: {_est(pixels)})" if pixels else ""
            metric = "" if ep.get("metric", "euclidean") == "euclidean" else f", {ep['metric']}"
            row(f"{ep['n_way']}-way {k}-shot (b){metric}", ep["protocol"] + ref,
                [_est(ep["results"].get(m, {}).get(k)) for m in names])  # fmt: skip
    if "depth" in report:
        d = report["depth"]
        for i, depth in enumerate(d["depths"]):
            row(
                f"depth {depth}",
                d["protocol"],
                [_pct(d["accuracy"][m][i]) if m in d["accuracy"] else "–" for m in names],
            )
    if "representations" in report:
        reps = report["representations"]
        protocol = f"{cfg['representation_samples']} test images; "
        layers = list(dict.fromkeys(layer for m in names for layer in reps.get(m, {})))
        for layer in layers:
            for key, label, how in (
                ("silent_fraction", "silent units", "never active"),
                ("population_sparseness", "population sparseness", "Treves–Rolls, 0–1"),
                ("lifetime_sparseness", "lifetime sparseness", "Treves–Rolls, 0–1"),
                ("selectivity_mean", "class selectivity", "mean over active units, 0–1"),
                ("task_specific_fraction", "task-specific units", "selectivity > 0.5"),
            ):
                fmt = _pct if key.endswith("fraction") else _num
                row(f"{label} ({layer})", protocol + how,
                    [fmt(reps.get(m, {}).get(layer, {}).get(key)) for m in names])  # fmt: skip
    if "fewshot_label_free" in report:
        fc = report["fewshot_label_free"]
        columns = list(fc["results"])
        ks = list(fc["results"]["pixels"])
        lines += ["", "## Few-shot protocol (c): label-free features, K-shot readout",
                  "", "Not comparable with (a): the hidden layers saw every (unlabelled) "
                  "training image.  " + fc["protocol"] + ".", "",
                  "| K per class | " + " | ".join(columns) + " |",
                  "|---|" + "---|" * len(columns)]  # fmt: skip
        for k in ks:
            cells = [_est(fc["results"][c].get(k), spread="std") for c in columns]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    if report.get("goals"):
        learners = list(dict.fromkeys(g["learner"] for g in report["goals"]))
        lines += ["", f"## Issue 7's goals (MNIST) for {', '.join(learners)}", "",
                  "| Goal | " + " | ".join(learners) + " |",
                  "|---|" + "---|" * len(learners)]  # fmt: skip

        def cell(g: dict[str, Any]) -> str:
            met = "–" if g["met"] is None else ("met" if g["met"] else "**missed**")
            value = _pct(g["value"])
            if g["key"].endswith("gap") and g["value"] is not None:
                value = f"{100 * g['value']:+.1f} points"
            return f"{value}, {met}"

        for goal in MNIST_GOALS:
            by_learner = {g["learner"]: g for g in report["goals"] if g["key"] == goal["key"]}
            cells = [cell(by_learner[n]) if n in by_learner else "–" for n in learners]
            lines.append(f"| {goal['goal']} | " + " | ".join(cells) + " |")
    s = report.get("seconds", {})
    lines += ["", "Wall-clock seconds: " + ", ".join(f"{k} {v}" for k, v in s.items()), ""]
    return "\n".join(lines)


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:.2f}"


def _reference_source(cfg: dict[str, Any]) -> str:
    names = [lr["name"] for lr in cfg["learners"]]
    return transfer_source(names, cfg["reference"], cfg["reference_source"], cfg["reference"])


__all__ = [
    "MNIST_GOALS",
    "SECTIONS",
    "ActivityHistory",
    "ComparisonConfig",
    "Context",
    "check_goals",
    "full_config",
    "make_datamodule",
    "quick_config",
    "run_comparison",
    "summary_markdown",
    "transfer_source",
]
