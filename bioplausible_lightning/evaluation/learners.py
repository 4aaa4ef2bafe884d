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
import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

from .._validation import check_min_int
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
        checkpoint: A checkpoint of this config written by ``bioplausible-lightning fit``
            (or any Lightning checkpoint of the same module): the report evaluates its
            weights instead of training the learner in the main run; the other sections
            still train from scratch.  Empty: train.
    """

    name: str
    config: str
    args: tuple[str, ...] = ()
    description: str = ""
    checkpoint: str = ""


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
    "mnist": (
        *_learners("mnist"),
        Learner("hebbian-dot", "examples/mnist_hebbian_dot.yaml",
                description="HebbianPerturbation with competition on the responses (dot "
                            "product); the first 60 % of any budget label-free"),
    ),
    "cifar10": (
        *_learners("cifar10"),
        Learner("backprop-cnn", "examples/cifar10_backprop_cnn.yaml",
                description="backprop on the SoftHebb conv network (the conv presets' model)"),
    ),
    "imagefolder": _learners("cifar10"),
}


#: The Hebbian peers as presets of the package's rule (``--peers`` in ``examples/compare.py``
#: appends them to the standard learners); Krotov–Hopfield is an MLP, SoftHebb a conv network
#: on CIFAR-10.
PEER_LEARNERS: dict[str, tuple[Learner, ...]] = {
    "mnist": (
        Learner("krotov-hopfield", "examples/mnist_krotov.yaml",
                description="Krotov & Hopfield 2019 as a preset (KrotovHopfield, HebbianMLP)"),
        Learner("softhebb", "examples/mnist_softhebb.yaml",
                description="SoftHebb as a preset (SoftHebb, HebbianMLP)"),
    ),
    "cifar10": (
        Learner("krotov-hopfield", "examples/cifar10_krotov.yaml",
                description="Krotov & Hopfield 2019 as a preset (KrotovHopfield, HebbianMLP)"),
        Learner("softhebb", "examples/cifar10_softhebb.yaml",
                description="SoftHebb conv 24-96-384 as a preset (SoftHebb, SoftHebbConvNet)"),
    ),
}  # fmt: skip


@functools.lru_cache(maxsize=1)
def config_parser() -> Any:
    """A jsonargparse parser for the CLI's config files, with the sections typed as
    ``bioplausible-lightning`` types them: ``model`` is any
    :class:`~bioplausible_lightning.module.ClassifierModule`, ``trainer`` the
    :class:`~lightning.pytorch.Trainer`'s arguments and ``data`` any LightningDataModule.
    Typed, an override such as ``--trainer.max_epochs 10`` or ``--data.batch_size 16`` is
    parsed and checked as on the CLI, not kept as a string or filed under the wrong key."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from ..module import ClassifierModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--seed_everything", type=int | bool, default=True)
    parser.add_argument("--test_after_fit", type=bool, default=True)
    parser.add_class_arguments(L.Trainer, "trainer", fail_untyped=False, instantiate=False,
                               sub_configs=True)  # fmt: skip
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=False,
                                  instantiate=False)  # fmt: skip
    parser.add_subclass_arguments(ClassifierModule, "model", required=True)
    return parser


#: Trainer settings that do not change what a learner learns.  The report builds its own
#: quiet Trainer for every run (one device, the comparison's accelerator and seed) and reads
#: only ``max_epochs``; a config's other settings are ignored, and :class:`LearnerRun` says so.
INERT_TRAINER_KEYS = frozenset({
    "max_epochs", "log_every_n_steps", "deterministic", "logger", "enable_progress_bar",
    "enable_model_summary", "enable_checkpointing", "default_root_dir", "num_sanity_val_steps",
    "check_val_every_n_epoch", "val_check_interval", "accelerator", "devices", "num_nodes",
    "strategy",
})
#: Data settings that name where the data are, not which: the report trains every learner on
#: the comparison's own splits and reads only ``batch_size``.
INERT_DATA_KEYS = frozenset({
    "batch_size", "root", "data_dir", "download", "seed", "num_workers", "pin_memory",
    "persistent_workers",
})


def _ignored_settings(cfg: Any) -> dict[str, Any]:
    """``{"trainer.KEY": value, "data.KEY": value}``: what the config sets, away from the
    defaults, that a comparison does not use."""
    from jsonargparse import Namespace

    defaults = config_parser().get_defaults()
    ignored = {
        f"trainer.{key}": value
        for key, value in vars(cfg.trainer).items()
        if key not in INERT_TRAINER_KEYS and value != defaults.trainer.get(key)
    }
    data = cfg.get("data")
    init = data.get("init_args") if isinstance(data, Namespace) else None
    if init is not None:
        sig = inspect.signature(_import(data.class_path).__init__).parameters
        ignored.update({
            f"data.{key}": value
            for key, value in vars(init).items()
            if key not in INERT_DATA_KEYS and key in sig
            and value != sig[key].default
        })  # fmt: skip
    return ignored


def _overridden(key: str, args: Sequence[str]) -> bool:
    """Whether the CLI-style ``args`` set ``key`` (``trainer.X`` or ``data.X``), in any of
    the forms jsonargparse accepts (``--data.X``, ``--data.init_args.X``, ``=value``)."""
    section, _, name = key.partition(".")
    forms = {f"--{key}", f"--{section}.init_args.{name}"}
    return any(arg.split("=", 1)[0] in forms for arg in args)


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
        check_min_int(f"learner {learner.name!r}: trainer.max_epochs", self.max_epochs,
                      optional=True)  # fmt: skip
        ignored = _ignored_settings(self.cfg)
        explicit = {k: v for k, v in ignored.items() if _overridden(k, learner.args)}
        if explicit:
            raise ValueError(
                f"learner {learner.name!r}: the override(s) {_settings(explicit)} are invalid "
                "in a comparison: it builds its own Trainer and data splits and reads only "
                "trainer.max_epochs and data batch_size (use --epochs for every learner's "
                "budget; fit the config with `bioplausible-lightning fit` for the rest)."
            )
        if ignored:
            warnings.warn(
                f"learner {learner.name!r}: the comparison ignores {_settings(ignored)} from "
                f"{learner.config}: it builds its own Trainer and data splits and reads only "
                "trainer.max_epochs and data batch_size.",
                UserWarning,
                stacklevel=2,
            )

    @property
    def name(self) -> str:
        return self.learner.name

    @property
    def batch_size(self) -> int:
        init = (self.cfg.get("data") or {}).get("init_args") or {}
        return int(init.get("batch_size", 64))

    @property
    def max_epochs(self) -> int | None:
        return self.cfg.trainer.get("max_epochs")

    def has_hidden_sizes(self) -> bool:
        """Whether the config's model takes ``hidden_sizes`` (what the depth sweep repeats)."""
        return bool(self.model_args.get("hidden_sizes"))

    def width(self) -> int:
        if not self.has_hidden_sizes():
            raise ValueError(f"learner {self.name!r}: its model has no hidden_sizes to repeat.")
        return int(self.model_args["hidden_sizes"][0])

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
        self,
        model: nn.Module,
        epochs: int | None = None,
        steps: int | None = None,
        *,
        epoch_steps: int | None = None,
    ) -> L.LightningModule:
        """The config's LightningModule around ``model``, its schedules fitted to the budget.

        A cosine schedule spans the budget.  A rule's step-counted schedule (a label-free
        stage ``readout_start``, greedy ``layer_steps``, ``lr_decay_steps``) keeps the share
        of the budget it has in the config: a config that learns label-free for 15 of 25
        epochs does so for 60 % of a 2-epoch or a 100-step run too.  For a ``steps`` budget
        that needs ``epoch_steps``, the optimizer steps of one epoch of the config's data.
        """
        cfg = copy.deepcopy(self.cfg)
        init = cfg.model.init_args
        share = self._budget_share(epochs, steps, epoch_steps)
        if share is not None and init.get("rule") is not None:
            _scale_step_schedules(init.rule, share)
        scheduler = init.get("lr_scheduler")
        if scheduler is not None and scheduler.class_path.endswith(".CosineAnnealingLR"):
            if (epochs is None) == (steps is None):
                raise ValueError("a CosineAnnealingLR schedule needs one of epochs or steps.")
            scheduler.init_args.T_max = int(epochs if epochs is not None else steps)
            init.lr_scheduler_interval = "epoch" if epochs is not None else "step"
        init.model = model
        return config_parser().instantiate(cfg).model

    def _budget_share(
        self, epochs: int | None, steps: int | None, epoch_steps: int | None
    ) -> float | None:
        """The run's budget as a fraction of the config's (None: the config's own)."""
        if not self.max_epochs or not _has_step_schedule(self.cfg.model.init_args.get("rule")):
            return None
        if epochs is not None:
            return epochs / self.max_epochs
        if steps is None:
            return None
        if not epoch_steps:
            raise ValueError(
                f"learner {self.name!r}: its rule counts its schedule in steps; a steps "
                "budget needs epoch_steps (optimizer steps per epoch of the config's data)."
            )
        return steps / (self.max_epochs * epoch_steps)

    def label_free_hidden(self) -> bool:
        """Whether the hidden layers learn without labels (the rule is HebbianPerturbation)."""
        from ..rules import HebbianPerturbation

        rule = self.cfg.model.init_args.get("rule")
        return rule is not None and _import(rule.class_path) is HebbianPerturbation

    def describe(self) -> str:
        overrides = f" {' '.join(self.learner.args)}" if self.learner.args else ""
        what = f"{self.learner.description}: " if self.learner.description else ""
        ckpt = self.learner.checkpoint
        ckpt = f"; main run: the weights of `{ckpt}`" if ckpt else ""
        return f"{what}`{self.learner.config}{overrides}`, batch {self.batch_size}{ckpt}"

    def load_checkpoint(self, module: L.LightningModule) -> int:
        """Load :attr:`Learner.checkpoint`'s weights (and rule state) into ``module``;
        returns the epochs it was trained for."""
        import torch

        path = Path(self.learner.checkpoint)
        if not path.is_file():
            raise ValueError(f"checkpoint={str(path)!r} is invalid: no such file.")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if "state_dict" not in ckpt:
            raise ValueError(
                f"checkpoint={str(path)!r} is invalid: not a Lightning checkpoint (no "
                "'state_dict')."
            )
        module.load_state_dict(ckpt["state_dict"])
        module.on_load_checkpoint(ckpt)
        return int(ckpt.get("epoch", -1)) + 1


#: Rule settings counted in optimizer steps, scaled with the budget by LearnerRun.module.
STEP_SCHEDULE_KEYS = ("readout_start", "layer_steps", "lr_decay_steps")


def _rule_settings(rule: Any) -> list[Any]:
    """``init_args`` of a rule config and of every rule config nested in it."""
    if rule is None or not hasattr(rule, "get") or rule.get("init_args") is None:
        return []
    found = [rule.init_args]
    for value in vars(rule.init_args).values():
        found += _rule_settings(value)
    return found


def _has_step_schedule(rule: Any) -> bool:
    return any(args.get(key) for args in _rule_settings(rule) for key in STEP_SCHEDULE_KEYS)


def _scale_step_schedules(rule: Any, share: float) -> None:
    for args in _rule_settings(rule):
        for key in STEP_SCHEDULE_KEYS:
            if args.get(key):
                args[key] = max(1, round(args[key] * share))


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _settings(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in values.items())


__all__ = ["DEFAULT_LEARNERS", "PEER_LEARNERS", "ROOT", "Learner", "LearnerRun", "config_parser"]
