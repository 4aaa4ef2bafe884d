"""The learning module: one LightningModule whose gradient comes from a rule object.

:class:`ClassifierModule` uses *manual* optimisation with one training step for every rule,
so the only difference between a backprop-free rule and the backprop baseline
(:class:`~bioplausible_lightning.rules.Backprop`, whose estimate runs the forward pass and
whose ``backward()`` runs once every process found its loss finite) is where the gradient
comes from: optimizer, scheduler, clipping, accumulation, logging and checkpoints behave
identically, which is what makes the comparison fair.  :class:`PerturbationModule` and
:class:`BackpropModule` are its two public names (the second with ``rule=Backprop()``).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric
from typing_extensions import override

from . import lean
from ._global_rng import global_rng_state, resumed_inside_epoch, set_global_rng_state
from ._validation import (
    check_bool,
    check_callable,
    check_choice,
    check_instance,
    check_min_int,
    check_positive,
)
from .distributed import Reducer, all_processes_agree, all_reduce_mean_
from .dopamine import AdapterRunner, StepSizeAdapterCallable
from .losses import PerSampleLoss, resolve_loss
from .rules.backprop import Backprop
from .rules.rule import LearningRule

ClipAlgorithm = Literal["norm", "value"]
SchedulerInterval = Literal["epoch", "step"]

#: Learning rate of the default optimizer.  The packaged CLI config names no optimizer and
#: no rule settings, so ``PerturbationModule(model)`` and ``bioplausible-lightning fit`` train
#: with the same defaults (these and :class:`~bioplausible_lightning.NodePerturbation`'s).
DEFAULT_LR = 1e-2


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """The default optimizer: ``torch.optim.Adam(params, lr=DEFAULT_LR)``."""
    return torch.optim.Adam(params, lr=DEFAULT_LR)


def rule_config(rule: Any) -> dict[str, Any]:
    """What a checkpoint records about a rule: its class and its public settings (the
    attributes not starting with ``_``; values other than plain data by ``repr``)."""

    def plain(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return repr(value)

    settings = {k: plain(v) for k, v in sorted(vars(rule).items()) if not k.startswith("_")}
    return {"class": _qualified_name(rule), "settings": settings}


def eager_model(model: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped, else ``model``: a rule's forward hooks change
    every step, so its replicated pass runs eagerly (evaluation stays compiled)."""
    return getattr(model, "_orig_mod", model) if _is_compiled(model) else model


def check_strategy(strategy: Any, world_size: int) -> None:
    """Refuse a multi-process strategy that :class:`PerturbationModule` cannot train under.

    Supported: Lightning's ``DDPStrategy`` (``"ddp"``, ``"ddp_spawn"``, ``"ddp_fork"``,
    ``"ddp_notebook"``, a subclass of it), where every process holds the whole model and
    the module averages the rule's estimates itself.  Sharding strategies (FSDP, DeepSpeed,
    model parallel) split parameters and gradients across processes, which the rules read
    and write whole; XLA runs its collectives outside ``torch.distributed``.
    """
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, XLAStrategy

    if isinstance(strategy, DDPStrategy) and not isinstance(
        strategy, (DeepSpeedStrategy, XLAStrategy)
    ):
        return
    raise RuntimeError(
        f"PerturbationModule cannot train under strategy={type(strategy).__name__} with "
        f"world_size={world_size}: the rules read and write whole parameters and gradients, "
        "and their estimates are averaged over processes with torch.distributed. Allowed "
        "multi-process strategies: 'ddp', 'ddp_spawn', 'ddp_fork', 'ddp_notebook' "
        "(DDPStrategy); or train on one device (devices=1)."
    )


def _is_compiled(model: nn.Module) -> bool:
    return type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod")


class ClassifierModule(L.LightningModule):
    """Trains any ``nn.Module`` with a learning rule: the one learning module.

    The rule adds its update to ``p.grad`` (:class:`~bioplausible_lightning.rules.Backprop`
    by ``backward()``; every other rule without one); the configured torch optimizer steps
    (a rule such as :class:`~bioplausible_lightning.CompetitiveHebbian` keeps an SGD
    optimizer of its own for the layers it trains, see ``LearningRule.own_optimizers``).
    The rule's state (perturbation RNG, Hebbian thresholds) is stored in every checkpoint,
    so a resumed run continues bit-identically.  ``PerturbationModule`` is this module;
    ``BackpropModule(model, ...)`` is it with ``rule=Backprop()``.

    Args:
        model: Any ``nn.Module`` mapping inputs to logits.  Default: a Dale-law
            :class:`~bioplausible_lightning.nn.BioMLP` for the 8×8 digits.  A
            ``torch.compile``'d model is accepted: a hooking rule's perturbed pass runs the
            wrapped module eagerly, evaluation (and backprop) runs compiled.
        rule: The learning rule (default :class:`~bioplausible_lightning.NodePerturbation`
            with its defaults; :class:`~bioplausible_lightning.HebbianPerturbation` is the
            paper's rule, :class:`~bioplausible_lightning.rules.Backprop` the baseline).
            Checkpoints record its class and settings; resuming with a different rule warns
            and keeps the given rule, seed and all (its random state then starts from its
            own seed instead of the checkpoint's).
        optimizer: Callable ``params -> Optimizer`` (default :func:`default_optimizer`:
            Adam, lr ``DEFAULT_LR`` = 1e-2).
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
        max_consecutive_skips: Stop with an error after this many training steps in a row
            were skipped (non-finite loss or empty batch): skipped steps do not advance
            ``global_step``, so ``max_steps`` alone would never end such a run.
        step_size_adapter: Optional callable ``optimizer -> DopamineStepSize``: the rule's
            reward prediction error (logged as ``train/rpe``) adapts the learning rate after
            every optimizer step (see :mod:`bioplausible_lightning.dopamine`); checkpointed.
            Needs a rule that measures one (the perturbation rules; not ``Backprop``).
        inplace_update: Memory-lean training (opt-in, see :mod:`bioplausible_lightning.lean`):
            the rule's update is applied to each layer's weights as it is formed, as plain
            SGD with the optimizer's learning rate, and no ``.grad`` buffer is allocated.
            Needs ``optimizer`` building ``torch.optim.SGD`` without momentum or weight
            decay, ``gradient_clip_val=None``, ``accumulate_grad_batches=1``, a rule that
            writes its update through ``rules.layers`` and has no optimizer of its own (not
            ``Backprop`` or the Hebbian rules), and, under several processes, seed-shared
            weight perturbation; anything else is refused with a ``ValueError``.

    The arguments after ``lr_scheduler`` are keyword-only.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        rule: LearningRule | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        *,
        lr_scheduler_interval: SchedulerInterval = "epoch",
        lr_scheduler_frequency: int = 1,
        lr_scheduler_monitor: str = "val/loss",
        loss: str | PerSampleLoss = "cross_entropy",
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: ClipAlgorithm = "norm",
        accumulate_grad_batches: int = 1,
        max_consecutive_skips: int = 100,
        step_size_adapter: StepSizeAdapterCallable | None = None,
        inplace_update: bool = False,
    ) -> None:
        super().__init__()
        check_instance("model", model, nn.Module, optional=True)
        check_callable("optimizer", optimizer)
        check_callable("lr_scheduler", lr_scheduler, optional=True)
        check_choice("lr_scheduler_interval", lr_scheduler_interval, get_args(SchedulerInterval))
        check_min_int("lr_scheduler_frequency", lr_scheduler_frequency)
        check_instance(
            "lr_scheduler_monitor", lr_scheduler_monitor, str, what="a metric name (str)"
        )
        check_min_int("accumulate_grad_batches", accumulate_grad_batches)
        if gradient_clip_val is not None:
            check_positive("gradient_clip_val", gradient_clip_val)
        check_choice("gradient_clip_algorithm", gradient_clip_algorithm, get_args(ClipAlgorithm))
        check_min_int("max_consecutive_skips", max_consecutive_skips)
        check_bool("inplace_update", inplace_update)
        self.automatic_optimization = False
        self._default_model = model is None
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
        self.max_consecutive_skips = max_consecutive_skips
        self.inplace_update = inplace_update
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self._rule_optimizers: list[torch.optim.Optimizer] = []
        self._pending_rule_optimizer_states: list[dict[str, Any]] | None = None
        self._metrics = nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric() for stage in ("train", "val", "test")
             for name in ("loss", "acc")}
        )  # fmt: skip
        self.save_hyperparameters(
            ignore=["model", "rule", "optimizer", "lr_scheduler", "loss", "step_size_adapter"],
            logger=False,
        )
        if rule is None:
            from .rules import NodePerturbation

            rule = NodePerturbation()
        check_instance(
            "rule", rule, LearningRule,
            what="a LearningRule (NodePerturbation, WeightPerturbation, CompetitiveHebbian, "
            "HebbianPerturbation, Backprop, or a subclass)",
        )  # fmt: skip
        if step_size_adapter is not None and isinstance(rule, Backprop):
            raise ValueError(
                f"step_size_adapter={step_size_adapter!r} is invalid with rule={rule!r}: the "
                "adapter follows the reward prediction error of a perturbation rule, which "
                "backprop does not measure."
            )
        self.rule = rule
        self.rule.targets(self._rule_model)  # fail fast on a model it cannot train
        if inplace_update:
            if rule.autograd_only or isinstance(rule, Backprop):
                raise ValueError(
                    f"rule={rule!r} is invalid with inplace_update=True: autograd writes "
                    "backprop's gradients into .grad. Allowed: the perturbation rules."
                )
            lean.check_module_config(rule, self._rule_model, optimizer, default_optimizer,
                                     gradient_clip_val, accumulate_grad_batches)  # fmt: skip
        self._adapter = AdapterRunner(step_size_adapter)
        self._pending_rpe: Tensor | None = None
        #: the global RNG state of a checkpoint being resumed, until the loop is where the
        #: uninterrupted run was when it was saved (``_global_rng``)
        self._pending_global_rng: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # pickling (torch.save(module), ddp_spawn): parametrised layers, including ones
        # registered with torch's own function, are made picklable first
        from .nn import make_picklable

        make_picklable(self.model)
        return super().__getstate__()

    @property
    def _rule_model(self) -> nn.Module:
        """The model the rule is given: the compiled one for an autograd-only rule, else the
        module ``torch.compile`` wrapped (see :func:`eager_model`)."""
        return self.model if self.rule.autograd_only else eager_model(self.model)

    # -- the gradient, from the rule -------------------------------------------------------
    def compute_gradients(
        self, inputs: Tensor, targets: Tensor, grad_scale: float
    ) -> tuple[Tensor, Tensor, bool]:
        """Measure this process's batch with the rule; return ``(loss, logits, finite)``.

        The rule adds its gradients to ``.grad`` here or, when they must wait until every
        process found its batch finite (a ``backward()`` that DDP all-reduces), in
        :meth:`finish_gradients`.
        """
        out = self.rule.estimate(self._rule_model, self.loss_fn, inputs, targets, grad_scale)
        self._pending_rpe = out.rpe if out.finite else None
        return out.loss, out.logits, out.finite

    def finish_gradients(self) -> None:
        """Every process agreed that the step is taken: the rule completes its gradients
        (``Backprop`` runs ``manual_backward`` here, inside which Lightning's DDP all-reduces
        them).  Under DDP: average the rule's scalars and state over the processes (one
        small all-reduce; seed-shared weight perturbation writes its update here); then
        hand the reward prediction error to the step-size adapter."""
        self.rule.finish(self.manual_backward)
        rpe, self._pending_rpe = self._pending_rpe, None
        if self.world_size > 1:
            reducer = Reducer(self.world_size)
            if rpe is not None:
                rpe = rpe.detach().clone()
                reducer.mean([rpe])
            self.rule.synchronize(reducer)
            reducer.run()
        self._adapter.record(rpe)

    def discard_gradients(self) -> None:
        """The step is skipped everywhere (the ``.grad`` buffers are zeroed by the caller).
        The rule's ``discard()`` undoes what it can (the Hebbian thresholds and step
        count).  Under DDP, processes that did measure their batch may still have advanced
        state that is not undone (a perturbation rule's generator) while others did not:
        rank 0's state is broadcast to all, so they stay identical (a rare path; nothing is
        sent for a rule without state)."""
        self._pending_rpe = None
        self.rule.discard()
        if self.world_size > 1:
            state = self.rule.state_dict()
            if state:  # the same structure on every process, so all take this branch alike
                state = self.trainer.strategy.broadcast(state, src=0)
                self.rule.load_state_dict(state)

    def reduce_gradients(self) -> None:
        """Under DDP: average the accumulated ``.grad`` of every parameter whose update
        depends on the process's data, in buckets (one all-reduce per ~25 MB), before the
        optimizers step; seed-shared parameters, and those Lightning's DDP averaged inside
        ``backward()``, are identical already and left out."""
        if self.world_size == 1:
            return
        shared = {id(p) for p in self.synchronized_parameters()}
        grads = [p.grad for p in self.model.parameters()
                 if p.grad is not None and id(p) not in shared]  # fmt: skip
        all_reduce_mean_(grads, self.world_size)

    def synchronized_parameters(self) -> list[nn.Parameter]:
        """Parameters whose ``.grad`` the rule makes identical on every process itself."""
        return self.rule.synchronized_parameters(self._rule_model)

    # -- processes -------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        """Processes training this module (1 without a Trainer or with one device)."""
        trainer = self._trainer
        return 1 if trainer is None else int(trainer.world_size)

    # -- forward / optimisation ----------------------------------------------------------
    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    @override
    def setup(self, stage: str) -> None:
        # Lightning's DDP averages gradients inside backward(), which no rule but Backprop
        # calls: this module communicates itself (see bioplausible_lightning.distributed),
        # which needs every process to hold the whole model; sharding strategies are refused.
        world = self.world_size
        if world > 1 and not self.rule.autograd_only:
            check_strategy(self.trainer.strategy, world)
        self.rule.set_distributed(self.trainer.global_rank if world > 1 else 0, world)
        if self.inplace_update and world > 1:
            lean.check_distributed(self.rule, self._rule_model, self.trainer.strategy, world)

    @override
    def teardown(self, stage: str) -> None:
        self.rule.set_distributed(0, 1)  # a rule used on its own afterwards runs alone
        self._pending_rpe = None

    def own_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers that a rule keeps for its own parameters (none for gradient rules)."""
        return [own.factory(own.params) for own in self.rule.own_optimizers(self._rule_model)]

    @property
    def step_size_adapter(self) -> Any:
        """The :class:`~bioplausible_lightning.DopamineStepSize` in use (None without one)."""
        return self._adapter.adapter

    @override
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
        if self.inplace_update:
            lean.check_optimizer(optimizer)
        self._adapter.build(optimizer)
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

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        self._adapter.start(self.global_step)
        state, self._pending_global_rng = self._pending_global_rng, None
        if state is not None and resumed_inside_epoch(self.trainer):
            set_global_rng_state(state)  # after the resumed epoch's DataLoader iterator

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        rpe, scale = self._adapter.after_batch(self.global_step)
        if rpe is not None:  # averaged over the processes already: the sync is for the mean
            self.log("train/rpe", rpe, on_step=True, on_epoch=True, batch_size=1,
                     sync_dist=self.world_size > 1)  # fmt: skip
        if scale is not None:
            self.log("train/step_size_scale", scale, on_step=True, on_epoch=False)

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        if not self.inplace_update:
            return self._training_step(batch, batch_idx)
        # inplace_update=True: the rule's writes go into the weights (lean.py).  The step is
        # the usual one (skips, DDP agreement, optimizer.step() advancing global_step,
        # schedulers), but no .grad exists: optimizer.step() finds none
        with lean.applied_in_place(self.optimizers(use_pl_optimizer=False), self.model):
            return self._training_step(batch, batch_idx)

    def _training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        optimizers = [self.optimizers(), *self._rule_optimizers]
        k = self.accumulate_grad_batches
        loss = logits = None
        local = False  # an empty batch, e.g. a collate_fn that dropped every sample
        if len(targets) > 0:
            loss, logits, local = self.compute_gradients(inputs, targets, 1.0 / k)
        finite = local
        if self.world_size > 1:
            # every process must take the same decision, or they step different numbers of
            # times and drift apart (and a DDP backward on one process alone would hang)
            finite = all_processes_agree(local, self.device)
        if not finite:
            for optimizer in optimizers:
                optimizer.zero_grad()
            self.discard_gradients()
            if local:
                reason = "A non-finite loss or an empty batch on another process"
            else:
                reason = "Empty batch" if loss is None else f"Non-finite loss ({loss.item()})"
            self._skip(reason)
            return None if loss is None else loss.detach()
        self.finish_gradients()
        self.consecutive_skips = 0
        if (batch_idx + 1) % k == 0 or self.trainer.is_last_batch:
            self.reduce_gradients()
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

    @override
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

    def _skip(self, reason: str) -> None:
        """Count a skipped step (``reason`` says why); stop after too many in a row."""
        if self.skipped_steps == 0:
            rank_zero_warn(
                f"{reason} at global step {self.global_step} "
                f"(epoch {self.current_epoch}): this update was skipped and the parameters were "
                "left unchanged. Further skips are counted in 'train/skipped_steps'.",
                category=RuntimeWarning,
            )
        self.skipped_steps += 1
        self.consecutive_skips += 1
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        if self.consecutive_skips >= self.max_consecutive_skips:
            raise RuntimeError(
                f"{self.consecutive_skips} consecutive training steps were skipped (the last: "
                f"{reason}, at epoch {self.current_epoch}); "
                "no update is being made, and skipped steps do not advance global_step, so "
                "max_steps would never be reached. Check the data (empty or non-finite "
                "batches) and the loss / learning rate (a diverged run), or raise "
                "max_consecutive_skips."
            )

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_steps"] = {
            "total": self.skipped_steps, "consecutive": self.consecutive_skips,
        }  # fmt: skip
        checkpoint["rule_optimizers"] = [opt.state_dict() for opt in self._rule_optimizers]
        checkpoint["perturbation_rule"] = self.rule.state_dict()  # the key's historical name
        checkpoint["perturbation_rule_config"] = rule_config(self.rule)
        checkpoint["model_class"] = _qualified_name(eager_model(self.model))
        checkpoint["global_rng"] = global_rng_state()  # Dropout's: Lightning does not save it
        if self.step_size_adapter is not None:
            checkpoint["step_size_adapter"] = self._adapter.state_dict()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_checkpoint_model(checkpoint)
        self._resume_global_rng(checkpoint.get("global_rng"))
        skipped = checkpoint.get("skipped_steps", {})
        self.skipped_steps = skipped.get("total", 0)
        self.consecutive_skips = skipped.get("consecutive", 0)
        states = checkpoint.get("rule_optimizers")
        if states:
            self._pending_rule_optimizer_states = states
            if self._rule_optimizers:
                self._load_rule_optimizer_states(states)
        self._adapter.load_state_dict(checkpoint.get("step_size_adapter"))
        if "perturbation_rule" not in checkpoint:
            return  # e.g. a BackpropModule checkpoint of an earlier version
        saved, current = checkpoint.get("perturbation_rule_config"), rule_config(self.rule)
        if saved is not None and saved != current:
            rank_zero_warn(
                f"The checkpoint was trained with {_describe(saved)}, but this module's rule is "
                f"{_describe(current)}. The given rule is used as configured; the checkpoint's "
                "rule state (its random-number state) is not loaded, so the rule's noise "
                f"starts from its own seed. Pass the checkpoint's rule to resume exactly.",
                category=UserWarning,
            )
            return
        self.rule.load_state_dict(checkpoint["perturbation_rule"])

    def _resume_global_rng(self, state: dict[str, Any] | None) -> None:
        """A fit resumed from a checkpoint continues the global RNG (``_global_rng``):
        set now, before the loop creates its DataLoader iterator (which draws from it, as
        the uninterrupted run's next epoch did), and again at ``on_train_start`` if the fit
        resumes inside an epoch (whose iterator the uninterrupted run had already made).
        Loading for anything but ``fit`` leaves the global RNG alone."""
        trainer = self._trainer
        if state is None or trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return
        set_global_rng_state(state)
        self._pending_global_rng = state

    def _check_checkpoint_model(self, checkpoint: dict[str, Any]) -> None:
        """The model is not a hyper-parameter, so a checkpoint loaded without it gets the
        default one: say so, by class, instead of torch's list of missing keys."""
        saved = checkpoint.get("model_class")
        current = _qualified_name(eager_model(self.model))
        if saved is None or saved == current:
            return
        default = " (the default: no model was given)" if self._default_model else ""
        message = (
            f"The checkpoint was trained with a {saved} model, but this module's model is a "
            f"{current}{default}. Pass the checkpoint's model: "
            f"{type(self).__name__}.load_from_checkpoint(path, model=..., rule=...), or from "
            "the command line `bioplausible-lightning test --config CONFIG --ckpt_path PATH`."
        )
        own_keys = {f"model.{k}" for k in self.model.state_dict()}
        saved_keys = {k for k in checkpoint.get("state_dict", {}) if k.startswith("model.")}
        if own_keys != saved_keys:
            raise ValueError(
                message + " (To load part of the weights on purpose, load the checkpoint's "
                "'state_dict' into your model yourself.)"
            )
        rank_zero_warn(message + " Its weights fit this model's and are loaded.",
                       category=UserWarning)  # fmt: skip

    # -- evaluation ----------------------------------------------------------------------
    def _eval_step(self, stage: str, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, targets = batch
        logits = self.model(inputs)
        loss = self.loss_fn(logits, targets).mean()
        self._log_metrics(stage, loss, logits, targets, on_step=False)
        return loss

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step("val", batch)

    @override
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step("test", batch)

    @override
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


def _qualified_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _describe(config: dict[str, Any]) -> str:
    settings = ", ".join(f"{k}={v!r}" for k, v in config["settings"].items())
    return f"{config['class'].rsplit('.', 1)[-1]}({settings})"


class PerturbationModule(ClassifierModule):
    """:class:`ClassifierModule` under its usual name: a model trained by a backprop-free
    rule (default :class:`~bioplausible_lightning.NodePerturbation`).  No ``backward()`` runs
    in a training step unless the rule is :class:`~bioplausible_lightning.rules.Backprop`.
    Takes :class:`ClassifierModule`'s arguments."""


class BackpropModule(ClassifierModule):
    """The baseline: the same model, data, optimizer and logging, trained by autograd.

    ``BackpropModule(model, optimizer, lr_scheduler, **kwargs)`` is
    ``ClassifierModule(model, Backprop(), optimizer, lr_scheduler, **kwargs)``: the
    keyword-only arguments are :class:`ClassifierModule`'s (a ``step_size_adapter`` is
    refused: backprop measures no reward prediction error).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, Backprop(), optimizer, lr_scheduler, **kwargs)
