"""LightningModules: the perturbation-trained classifier and its backprop baseline.

Both use *manual* optimisation with one shared training step, so the only difference
between them is where the gradient comes from (a rule's estimate vs ``backward()``):
optimizer, scheduler, clipping, accumulation and logging behave identically, which is
what makes the comparison fair.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric

from ._validation import check_min_int
from .losses import PerSampleLoss, resolve_loss
from .rules.rule import LearningRule

ClipAlgorithm = Literal["norm", "value"]


class ClassifierModule(L.LightningModule):
    """Shared machinery; subclasses implement :meth:`compute_gradients`.

    Args:
        model: Any ``nn.Module`` mapping inputs to logits.  Default: a Dale-law
            :class:`~bioplausible_lightning.nn.BioMLP` for the 8×8 digits.
        optimizer: Callable ``params -> Optimizer`` (default ``torch.optim.Adam``).
        lr_scheduler: Optional callable ``optimizer -> LRScheduler``.
        lr_scheduler_interval: Step the scheduler every ``"epoch"`` or every optimizer ``"step"``.
        lr_scheduler_frequency: Step it every this many intervals.
        lr_scheduler_monitor: Metric passed to ``ReduceLROnPlateau``.
        loss: ``"cross_entropy"``, ``"mse"`` or a per-sample callable ``(logits, y) -> (N,)``.
        gradient_clip_val: Clip gradients before each optimizer step (None = off).  Set it here:
            Lightning's ``Trainer(gradient_clip_val=...)`` is refused under manual optimisation.
        gradient_clip_algorithm: ``"norm"`` or ``"value"``.
        accumulate_grad_batches: Optimizer step every this many batches (Trainer's own
            option is refused under manual optimisation).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        lr_scheduler_frequency: int = 1,
        lr_scheduler_monitor: str = "val/loss",
        loss: str | PerSampleLoss = "cross_entropy",
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: ClipAlgorithm = "norm",
        accumulate_grad_batches: int = 1,
    ) -> None:
        super().__init__()
        if lr_scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"lr_scheduler_interval={lr_scheduler_interval!r} is invalid: "
                "allowed values are ('epoch', 'step')."
            )
        check_min_int("lr_scheduler_frequency", lr_scheduler_frequency)
        check_min_int("accumulate_grad_batches", accumulate_grad_batches)
        if gradient_clip_val is not None and not gradient_clip_val > 0:
            raise ValueError(f"gradient_clip_val={gradient_clip_val!r} is invalid: None or > 0.")
        if gradient_clip_algorithm not in ("norm", "value"):
            raise ValueError(
                f"gradient_clip_algorithm={gradient_clip_algorithm!r} is invalid: "
                "allowed values are ('norm', 'value')."
            )
        self.automatic_optimization = False
        if model is None:
            from .nn import BioMLP

            model = BioMLP(seed=0)
        self.model = model
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.lr_scheduler_frequency = lr_scheduler_frequency
        self.lr_scheduler_monitor = lr_scheduler_monitor
        self.loss_fn = resolve_loss(loss)
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.accumulate_grad_batches = accumulate_grad_batches
        self.skipped_steps = 0
        self._rule_optimizers: list[torch.optim.Optimizer] = []
        self._pending_rule_optimizer_states: list[dict[str, Any]] | None = None
        self._metrics = nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric() for stage in ("train", "val", "test")
             for name in ("loss", "acc")}
        )  # fmt: skip
        self.save_hyperparameters(
            ignore=["model", "rule", "optimizer", "lr_scheduler", "loss"], logger=False
        )

    # -- what subclasses provide ---------------------------------------------------------
    def compute_gradients(
        self, inputs: Tensor, targets: Tensor, grad_scale: float
    ) -> tuple[Tensor, Tensor, bool]:
        """Add gradients to ``.grad``; return ``(loss, logits, finite)``."""
        raise NotImplementedError

    # -- forward / optimisation ----------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def own_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers that a rule keeps for its own parameters (none for gradient rules)."""
        return []

    def configure_optimizers(self) -> Any:
        # A rule's own optimizers stay plain torch optimizers held here, not handed to
        # Lightning: under manual optimisation every Lightning optimizer's step() advances
        # global_step, which would make max_steps, step schedulers and logging count twice.
        # Their state travels in the checkpoint through on_save/on_load_checkpoint.
        own = self.own_optimizers()
        self._rule_optimizers = own
        if self._pending_rule_optimizer_states is not None:
            self._load_rule_optimizer_states(self._pending_rule_optimizer_states)
        claimed = {id(p) for opt in own for group in opt.param_groups for p in group["params"]}
        params = [p for p in self.model.parameters() if id(p) not in claimed]
        optimizer = self.optimizer_factory(params)
        if self.lr_scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self.lr_scheduler_factory(optimizer),
                "interval": self.lr_scheduler_interval,
                "frequency": self.lr_scheduler_frequency,
            },  # the monitor is read in _step_schedulers: Lightning ignores it when manual
        }

    def _load_rule_optimizer_states(self, states: list[dict[str, Any]]) -> None:
        if len(states) != len(self._rule_optimizers):
            raise ValueError(
                f"the checkpoint holds {len(states)} rule optimizer state(s) but the rule now "
                f"has {len(self._rule_optimizers)}: was it written with another rule?"
            )
        for optimizer, state in zip(self._rule_optimizers, states):
            optimizer.load_state_dict(state)
        self._pending_rule_optimizer_states = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rule_optimizers"] = [opt.state_dict() for opt in self._rule_optimizers]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rule_optimizers")
        if states:
            self._pending_rule_optimizer_states = states
            if self._rule_optimizers:
                self._load_rule_optimizer_states(states)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        optimizers = [self.optimizers(), *self._rule_optimizers]
        k = self.accumulate_grad_batches
        loss, logits, finite = self.compute_gradients(inputs, targets, 1.0 / k)
        if not finite:
            for optimizer in optimizers:
                optimizer.zero_grad()
            self._skip(loss)
            return loss.detach()
        if (batch_idx + 1) % k == 0 or self.trainer.is_last_batch:
            for optimizer in optimizers:
                if self.gradient_clip_val is not None:
                    self.clip_gradients(
                        optimizer,
                        gradient_clip_val=self.gradient_clip_val,
                        gradient_clip_algorithm=self.gradient_clip_algorithm,
                    )
                optimizer.step()
                optimizer.zero_grad()
            self._step_schedulers("step")
        self._log_metrics("train", loss, logits, targets, on_step=True)
        return loss.detach()

    def on_train_epoch_end(self) -> None:
        self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        """Lightning leaves scheduler stepping to us under manual optimisation."""
        counter = self.global_step if interval == "step" else self.current_epoch + 1
        for config in self.trainer.lr_scheduler_configs:
            if config.interval != interval or counter % config.frequency:
                continue
            if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                metric = self.trainer.callback_metrics.get(self.lr_scheduler_monitor)
                if metric is None:
                    raise ValueError(
                        f"lr_scheduler_monitor={self.lr_scheduler_monitor!r} was not logged; "
                        "available: "
                        f"{sorted(self.trainer.callback_metrics)}."
                    )
                config.scheduler.step(metric)
            else:
                config.scheduler.step()

    def _skip(self, loss: Tensor) -> None:
        if self.skipped_steps == 0:
            rank_zero_warn(
                f"Non-finite loss ({loss.item()}) at global step {self.global_step} "
                f"(epoch {self.current_epoch}): this update was skipped and the parameters were "
                "left unchanged. Further skips are counted in 'train/skipped_steps'.",
                category=RuntimeWarning,
            )
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)

    # -- evaluation ----------------------------------------------------------------------
    def _eval_step(self, stage: str, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, targets = batch
        logits = self.model(inputs)
        loss = self.loss_fn(logits, targets).mean()
        self._log_metrics(stage, loss, logits, targets, on_step=False)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step("val", batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step("test", batch)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.model(inputs).argmax(-1)

    def _log_metrics(
        self, stage: str, loss: Tensor, logits: Tensor, targets: Tensor, on_step: bool
    ) -> None:
        batch = targets.shape[0]
        loss_metric, acc_metric = self._metrics[f"{stage}_loss"], self._metrics[f"{stage}_acc"]
        loss_metric(loss.detach(), weight=batch)  # forward(): also gives the per-step value
        acc_metric.update((logits.argmax(-1) == targets).float())
        self.log(f"{stage}/loss", loss_metric, on_step=on_step, on_epoch=True, prog_bar=True,
                 batch_size=batch)  # fmt: skip
        self.log(f"{stage}/acc", acc_metric, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch)  # fmt: skip


class PerturbationModule(ClassifierModule):
    """Trains any ``nn.Module`` with a backprop-free learning rule.

    The rule adds its update to ``p.grad``; the configured torch optimizer steps (a rule
    such as :class:`~bioplausible_lightning.CompetitiveHebbian` keeps an SGD optimizer of
    its own for the layers it trains, see ``LearningRule.own_optimizers``).  No
    ``backward()`` runs in a training step.  The rule's state (perturbation RNG, Hebbian
    thresholds) is stored in every checkpoint, so a resumed run continues bit-identically.

    Args:
        model: Any ``nn.Module`` mapping inputs to logits (default: Dale ``BioMLP``).
        rule: The learning rule (default :class:`~bioplausible_lightning.NodePerturbation`;
            :class:`~bioplausible_lightning.HebbianPerturbation` is the paper's rule).
        optimizer: Callable ``params -> Optimizer`` (default ``torch.optim.Adam``).
        lr_scheduler: Optional callable ``optimizer -> LRScheduler``.
        lr_scheduler_interval: ``"epoch"`` or ``"step"``.
        lr_scheduler_frequency: Step the scheduler every this many intervals.
        lr_scheduler_monitor: Metric passed to ``ReduceLROnPlateau``.
        loss: ``"cross_entropy"``, ``"mse"`` or a per-sample callable.
        gradient_clip_val: Clip the estimated gradients (None = off).
        gradient_clip_algorithm: ``"norm"`` or ``"value"``.
        accumulate_grad_batches: Optimizer step every this many batches.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        rule: LearningRule | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        lr_scheduler_frequency: int = 1,
        lr_scheduler_monitor: str = "val/loss",
        loss: str | PerSampleLoss = "cross_entropy",
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: ClipAlgorithm = "norm",
        accumulate_grad_batches: int = 1,
    ) -> None:
        super().__init__(
            model, optimizer, lr_scheduler, lr_scheduler_interval, lr_scheduler_frequency,
            lr_scheduler_monitor, loss, gradient_clip_val, gradient_clip_algorithm,
            accumulate_grad_batches,
        )  # fmt: skip
        if rule is None:
            from .rules import NodePerturbation

            rule = NodePerturbation()
        if not isinstance(rule, LearningRule):
            raise ValueError(
                f"rule={rule!r} is invalid: expected a LearningRule (NodePerturbation, "
                "WeightPerturbation, CompetitiveHebbian, HebbianPerturbation, or a subclass)."
            )
        self.rule = rule
        self.rule.targets(self.model)  # fail fast on a model the rule cannot train

    def own_optimizers(self) -> list[torch.optim.Optimizer]:
        return [own.factory(own.params) for own in self.rule.own_optimizers(self.model)]

    def compute_gradients(
        self, inputs: Tensor, targets: Tensor, grad_scale: float
    ) -> tuple[Tensor, Tensor, bool]:
        out = self.rule.estimate(self.model, self.loss_fn, inputs, targets, grad_scale)
        return out.loss, out.logits, out.finite

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["perturbation_rule"] = self.rule.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "perturbation_rule" in checkpoint:
            self.rule.load_state_dict(checkpoint["perturbation_rule"])


class BackpropModule(ClassifierModule):
    """The baseline: the same model, data, optimizer and logging, trained by autograd.

    Takes :class:`ClassifierModule`'s arguments (``PerturbationModule``'s minus ``rule``).
    """

    def compute_gradients(
        self, inputs: Tensor, targets: Tensor, grad_scale: float
    ) -> tuple[Tensor, Tensor, bool]:
        logits = self.model(inputs)
        loss = self.loss_fn(logits, targets).mean()
        finite = bool(torch.isfinite(loss))
        if finite:
            self.manual_backward(loss * grad_scale)
        return loss.detach(), logits.detach(), finite

