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
from .dopamine import AdapterRunner, StepSizeAdapterCallable
from .losses import PerSampleLoss, resolve_loss
from .rules.base import PerturbationRule

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
        self._metrics = nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric() for stage in ("train", "val", "test")
             for name in ("loss", "acc")}
        )  # fmt: skip
        self.save_hyperparameters(
            ignore=["model", "rule", "optimizer", "lr_scheduler", "loss", "step_size_adapter"],
            logger=False,
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

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.model.parameters())
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

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        optimizer = self.optimizers()
        k = self.accumulate_grad_batches
        loss, logits, finite = self.compute_gradients(inputs, targets, 1.0 / k)
        if not finite:
            optimizer.zero_grad()
            self._skip(loss)
            return loss.detach()
        if (batch_idx + 1) % k == 0 or self.trainer.is_last_batch:
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
    """Trains any ``nn.Module`` with a backprop-free perturbation rule.

    The rule adds its gradient estimate to ``p.grad``; the configured torch optimizer steps.
    No ``backward()`` runs in a training step.  The rule's RNG state is stored in every
    checkpoint, so a resumed run continues bit-identically.

    Args:
        model: Any ``nn.Module`` mapping inputs to logits (default: Dale ``BioMLP``).
        rule: The learning rule (default :class:`~bioplausible_lightning.NodePerturbation`).
        optimizer: Callable ``params -> Optimizer`` (default ``torch.optim.Adam``).
        lr_scheduler: Optional callable ``optimizer -> LRScheduler``.
        lr_scheduler_interval: ``"epoch"`` or ``"step"``.
        lr_scheduler_frequency: Step the scheduler every this many intervals.
        lr_scheduler_monitor: Metric passed to ``ReduceLROnPlateau``.
        loss: ``"cross_entropy"``, ``"mse"`` or a per-sample callable.
        gradient_clip_val: Clip the estimated gradients (None = off).
        gradient_clip_algorithm: ``"norm"`` or ``"value"``.
        accumulate_grad_batches: Optimizer step every this many batches.
        step_size_adapter: Optional callable ``optimizer -> DopamineStepSize``: the rule's
            reward prediction error (logged as ``train/rpe``) adapts the learning rate after
            every optimizer step (see :mod:`bioplausible_lightning.dopamine`); checkpointed.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        rule: PerturbationRule | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        lr_scheduler_frequency: int = 1,
        lr_scheduler_monitor: str = "val/loss",
        loss: str | PerSampleLoss = "cross_entropy",
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: ClipAlgorithm = "norm",
        accumulate_grad_batches: int = 1,
        *,
        step_size_adapter: StepSizeAdapterCallable | None = None,
    ) -> None:
        super().__init__(
            model, optimizer, lr_scheduler, lr_scheduler_interval, lr_scheduler_frequency,
            lr_scheduler_monitor, loss, gradient_clip_val, gradient_clip_algorithm,
            accumulate_grad_batches,
        )  # fmt: skip
        if rule is None:
            from .rules import NodePerturbation

            rule = NodePerturbation()
        if not isinstance(rule, PerturbationRule):
            raise ValueError(
                f"rule={rule!r} is invalid: expected a PerturbationRule "
                "(NodePerturbation, WeightPerturbation, or a subclass)."
            )
        self.rule = rule
        self.rule.targets(self.model)  # fail fast on a model the rule cannot train
        self._adapter = AdapterRunner(step_size_adapter)

    @property
    def step_size_adapter(self) -> Any:
        """The :class:`~bioplausible_lightning.DopamineStepSize` in use (None without one)."""
        return self._adapter.adapter

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        self._adapter.build(config["optimizer"] if isinstance(config, dict) else config)
        return config

    def on_train_start(self) -> None:
        super().on_train_start()
        self._adapter.start(self.global_step)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        rpe, scale = self._adapter.after_batch(self.global_step)
        if rpe is not None:
            self.log("train/rpe", rpe, on_step=True, on_epoch=True, batch_size=1)
        if scale is not None:
            self.log("train/step_size_scale", scale, on_step=True, on_epoch=False)

    def compute_gradients(
        self, inputs: Tensor, targets: Tensor, grad_scale: float
    ) -> tuple[Tensor, Tensor, bool]:
        out = self.rule.estimate(self.model, self.loss_fn, inputs, targets, grad_scale)
        if out.finite:
            self._adapter.record(out.rpe)
        return out.loss, out.logits, out.finite

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["perturbation_rule"] = self.rule.state_dict()
        if self.step_size_adapter is not None:
            checkpoint["step_size_adapter"] = self._adapter.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "perturbation_rule" in checkpoint:
            self.rule.load_state_dict(checkpoint["perturbation_rule"])
        self._adapter.load_state_dict(checkpoint.get("step_size_adapter"))


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

