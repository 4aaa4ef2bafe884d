"""The learners of a comparison, each built from a LightningCLI YAML config.

A :class:`Learner` names a config file — the very file ``bioplausible-lightning fit --config``
runs (``model: {class_path, init_args}``) — and optional CLI-style overrides; a
:class:`LearnerRun` parses it once and builds fresh models and modules for every run of the
report, with the data's input shape and classes, the run's seed and budget.  The settings
live only in the YAML files.
"""

from __future__ import annotations

import copy
import functools
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

from ..data.base import SplitDataModule

#: The repository root: learner configs given as relative paths are looked up here when they
#: are not found relative to the working directory.
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Learner:
    """One column of the comparison.

    Attributes:
        name: Column name in the report.
        config: A LightningCLI YAML config (``model: {class_path, init_args}``).
        args: LightningCLI-style overrides applied after it, e.g.
            ``("--model", "bioplausible_lightning.BackpropModule")``.
        description: One line for the summary (default: the config and the overrides).
    """

    name: str
    config: str
    args: tuple[str, ...] = ()
    description: str = ""


_BACKPROP = ("--model", "bioplausible_lightning.BackpropModule")


def _learners(prefix: str) -> tuple[Learner, ...]:
    """The standard four learners from ``examples/<prefix>{,_backprop,_hebbian}.yaml``."""
    return (
        Learner("node-dale", f"examples/{prefix}.yaml",
                description="node perturbation on the Dale BioMLP"),
        Learner("backprop-dale", f"examples/{prefix}.yaml", _BACKPROP,
                description="backprop on the same Dale BioMLP"),
        Learner("backprop", f"examples/{prefix}_backprop.yaml",
                description="standard backprop baseline: plain nn.Linear MLP, default init"),
        Learner("hebbian", f"examples/{prefix}_hebbian.yaml",
                description="HebbianPerturbation (the paper's rule) on a plain MLP"),
    )  # fmt: skip


#: The learners of the standard comparison, per data set (file names only: the settings are
#: in the YAML files).
DEFAULT_LEARNERS: dict[str, tuple[Learner, ...]] = {
    "digits": _learners("digits"),
    "mnist": _learners("mnist"),
    "cifar10": _learners("cifar10"),
    "imagefolder": _learners("cifar10"),
}


#: The Hebbian peers as presets of the package's rule (``--peers`` in ``examples/compare.py``
#: appends them to the standard learners); Krotov–Hopfield has an MLP config only.
PEER_LEARNERS: dict[str, tuple[Learner, ...]] = {
    "mnist": (
        Learner("krotov-hopfield", "examples/mnist_krotov.yaml",
                description="Krotov & Hopfield 2019 as a preset (KrotovHopfield, HebbianMLP)"),
        Learner("softhebb", "examples/mnist_softhebb.yaml",
                description="SoftHebb as a preset (SoftHebb, HebbianMLP)"),
    ),
    "cifar10": (
        Learner("softhebb", "examples/cifar10_softhebb.yaml",
                description="SoftHebb conv 24-96-384 as a preset (SoftHebb, SoftHebbConvNet)"),
    ),
}  # fmt: skip


@functools.lru_cache(maxsize=1)
def config_parser() -> Any:
    """A jsonargparse parser for the CLI's config files: ``model`` is any
    :class:`~bioplausible_lightning.module.ClassifierModule` (as in ``bioplausible-lightning``);
    ``trainer`` and ``data`` are read as plain mappings (the report builds its own)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from ..module import ClassifierModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--seed_everything", type=int | bool, default=True)
    parser.add_argument("--test_after_fit", type=bool, default=True)
    parser.add_argument("--trainer", type=dict, default={})
    parser.add_argument("--data", type=dict, default={})
    parser.add_subclass_arguments(ClassifierModule, "model", required=True)
    return parser


def _config_path(path: str) -> str:
    p = Path(path)
    if not p.is_file() and not p.is_absolute() and (ROOT / p).is_file():
        p = ROOT / p
    if not p.is_file():
        raise ValueError(f"config={path!r} is invalid: no such file (nor under {ROOT}).")
    return str(p)


class LearnerRun:
    """A parsed learner config that builds fresh models and modules for every run."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.cfg = config_parser().parse_args(
            ["--config", _config_path(learner.config), *learner.args]
        )
        self.model_args = self.cfg.model.init_args.model.init_args

    @property
    def name(self) -> str:
        return self.learner.name

    @property
    def batch_size(self) -> int:
        return int((self.cfg.data or {}).get("init_args", {}).get("batch_size", 64))

    @property
    def max_epochs(self) -> int | None:
        return (self.cfg.trainer or {}).get("max_epochs")

    def width(self) -> int:
        sizes = self.model_args.get("hidden_sizes")
        if not sizes:
            raise ValueError(f"learner {self.name!r}: its model has no hidden_sizes to repeat.")
        return int(sizes[0])

    def model(
        self, data: SplitDataModule, seed: int, hidden_sizes: Sequence[int] | None = None
    ) -> nn.Module:
        """The config's model for ``data`` (input shape, classes) and ``seed``."""
        cfg = copy.deepcopy(self.cfg)
        net = cfg.model.init_args.model.init_args
        overrides = {"input_shape": list(data.input_shape), "num_classes": int(data.num_classes),
                     "seed": int(seed)}  # fmt: skip
        for key, value in overrides.items():
            if key in net:
                net[key] = value
        if hidden_sizes is not None:
            self.width()
            net["hidden_sizes"] = [int(h) for h in hidden_sizes]
        return config_parser().instantiate(cfg).model.model

    def module(
        self, model: nn.Module, epochs: int | None = None, steps: int | None = None
    ) -> L.LightningModule:
        """The config's LightningModule around ``model``; a cosine schedule spans the budget."""
        cfg = copy.deepcopy(self.cfg)
        init = cfg.model.init_args
        scheduler = init.get("lr_scheduler")
        if scheduler is not None and scheduler.class_path.endswith(".CosineAnnealingLR"):
            if (epochs is None) == (steps is None):
                raise ValueError("a CosineAnnealingLR schedule needs one of epochs or steps.")
            scheduler.init_args.T_max = int(epochs if epochs is not None else steps)
            init.lr_scheduler_interval = "epoch" if epochs is not None else "step"
        init.model = model
        return config_parser().instantiate(cfg).model

    def label_free_hidden(self) -> bool:
        """Whether the hidden layers learn without labels (the rule is HebbianPerturbation)."""
        from ..rules import HebbianPerturbation

        rule = self.cfg.model.init_args.get("rule")
        return rule is not None and _import(rule.class_path) is HebbianPerturbation

    def describe(self) -> str:
        overrides = f" {' '.join(self.learner.args)}" if self.learner.args else ""
        what = f"{self.learner.description}: " if self.learner.description else ""
        return f"{what}`{self.learner.config}{overrides}`, batch {self.batch_size}"


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


__all__ = ["DEFAULT_LEARNERS", "PEER_LEARNERS", "ROOT", "Learner", "LearnerRun", "config_parser"]
