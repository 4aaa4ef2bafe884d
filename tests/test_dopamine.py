import dataclasses
import functools
import math

import lightning as L
import pytest
import torch
from _helpers import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from bioplausible_lightning import (
    BioMLP,
    DigitsDataModule,
    DopamineStepSize,
    NodePerturbation,
    PerturbationModule,
    WeightPerturbation,
)
from bioplausible_lightning.cli import run_cli
from bioplausible_lightning.losses import cross_entropy


def _replica_losses(rule, model, x, y):
    """Run one estimate and read every replica's logits off a hook behind the last layer."""
    captured = {}
    model[-1].register_forward_hook(lambda m, a, out: captured.setdefault("logits", out.clone()))
    out = rule.estimate(model, cross_entropy, x, y)
    logits = captured["logits"].view(rule.replicas_per_block, x.shape[0], -1)
    return out, torch.stack([cross_entropy(z, y).mean() for z in logits])


@pytest.mark.parametrize("rule_factory", [
    lambda est: WeightPerturbation(sigma=0.05, num_directions=3, estimator=est,
                                   structure="dense", seed=1),
    lambda est: WeightPerturbation(sigma=0.05, num_directions=3, estimator=est, seed=1),
    lambda est: NodePerturbation(sigma=0.05, num_directions=3, estimator=est, layerwise=False,
                                 seed=1),
])  # fmt: skip
@pytest.mark.parametrize("estimator", ["forward", "antithetic"])
def test_rpe_equals_a_hand_computation(rule_factory, estimator):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Identity())
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    with torch.no_grad():
        clean = cross_entropy(model(x), y).mean()  # the unperturbed model's actual loss
    rule = rule_factory(estimator)
    out, losses = _replica_losses(rule, model, x, y)
    assert out.rpe.shape == (3,)
    if estimator == "forward":
        torch.testing.assert_close(losses[0], clean)  # the clean replica is the model itself
        expected = losses[1:] - clean  # perturbed replica k vs the unperturbed loss
        # mean: expected loss of the perturbed replicas minus the actual, unperturbed loss
        torch.testing.assert_close(out.rpe.mean(), losses[1:].mean() - clean)
    else:
        pair_mean = (losses[0::2] + losses[1::2]) / 2  # the expectation of each ± pair
        expected = losses[0::2] - pair_mean
    torch.testing.assert_close(out.rpe, expected)
    assert not torch.equal(out.rpe, torch.zeros(3))


def _feed(adapter, values):
    return [adapter.step(torch.tensor([v])) for v in values]


def test_step_size_grows_when_the_rpe_shrinks_and_shrinks_when_it_grows():
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    adapter = DopamineStepSize(opt, beta=0.5, warmup=3, max_scale=4.0)
    assert _feed(adapter, [1.0, -1.0, 1.0]) == [1.0, 1.0, 1.0]  # warm-up: reference v̂ = 1
    assert adapter.rms == pytest.approx(1.0)
    scales = _feed(adapter, [0.1] * 3)  # RPE 10× smaller: the step grows
    assert 1.0 < scales[0] < scales[1] < scales[2] <= 4.0
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * scales[-1])
    assert adapter.get_last_lr() == [opt.param_groups[0]["lr"]]
    _feed(adapter, [0.01] * 20)
    assert adapter.scale == 4.0  # clipped at max_scale
    shrinking = _feed(adapter, [100.0] * 3)  # RPE far above the reference: the step shrinks
    assert shrinking[0] < 1.0 and shrinking[-1] == adapter.min_scale == 0.1
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.1)
    adapter.step(torch.tensor([math.nan]))  # ignored
    assert adapter.scale == 0.1 and adapter.num_steps == 29
    reversed_ = DopamineStepSize(opt, beta=0.5, gamma=-1.0, warmup=3)  # the ablation
    _feed(reversed_, [1.0, 1.0, 1.0])
    assert _feed(reversed_, [0.1])[0] < 1.0  # a smaller RPE now shrinks the step


def test_scale_equals_the_documented_formula_and_composes_with_a_scheduler():
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    adapter = DopamineStepSize(opt, beta=0.9, gamma=1.0, warmup=1)
    rpes = [torch.tensor([2.0, -2.0]), torch.tensor([1.0]), torch.tensor([0.5, 0.5])]
    v = 0.0
    for t, rpe in enumerate(rpes, start=1):
        v = 0.9 * v + 0.1 * float(rpe.pow(2).mean())
        v_hat = v / (1 - 0.9**t)
        ref = 4.0  # v̂ after the single warm-up step
        opt.step()
        sched.step()
        assert adapter.step(rpe) == pytest.approx(math.sqrt(ref / v_hat))
        assert opt.param_groups[0]["lr"] == pytest.approx(0.5**t * math.sqrt(ref / v_hat))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta": 1.0}, r"beta=1.0 is invalid: it must be a number in \[0.0, 1.0\)"),
        ({"beta": -0.1}, r"beta=-0.1 is invalid"),
        ({"gamma": 0.0}, r"gamma=0.0 is invalid: it must be a finite number != 0"),
        ({"warmup": 0}, r"warmup=0 is invalid: it must be an int >= 1"),
        ({"min_scale": 0.0}, r"min_scale=0.0 is invalid: it must be a number in \(0.0, 1.0\]"),
        ({"min_scale": 2.0}, r"min_scale=2.0 is invalid"),
        ({"max_scale": 0.5}, r"max_scale=0.5 is invalid: it must be a number >= 1"),
    ],
)
def test_bad_settings_name_parameter_value_and_what_is_allowed(kwargs, message):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=message):
        DopamineStepSize(opt, **kwargs)
    with pytest.raises(ValueError, match="optimizer='sgd' is invalid"):
        DopamineStepSize("sgd")




def _module(rule=None, **kwargs):
    return PerturbationModule(
        BioMLP(hidden_sizes=(32,), seed=0),
        rule or WeightPerturbation(sigma=1e-3, num_directions=4, seed=5),
        optimizer=functools.partial(torch.optim.SGD, lr=0.05),
        step_size_adapter=functools.partial(DopamineStepSize, warmup=2),
        **kwargs,
    )


def test_module_logs_rpe_and_steps_the_adapter_once_per_optimizer_step():
    module = _module(accumulate_grad_batches=2)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(module, DigitsDataModule(batch_size=256))  # 5 batches -> 3 optimizer steps
    assert {"train/rpe_step", "train/rpe_epoch", "train/step_size_scale"} <= set(
        trainer.logged_metrics
    )
    adapter = module.step_size_adapter
    assert adapter.num_steps == trainer.global_step == 3
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(0.05 * adapter.scale) and adapter.scale != 1.0


def test_a_rule_without_rpe_leaves_the_step_size_alone():
    class Silent(WeightPerturbation):
        def estimate(self, *args, **kwargs):
            return dataclasses.replace(super().estimate(*args, **kwargs), rpe=None)

    module = _module(Silent(sigma=1e-3, seed=0))
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(module, DigitsDataModule(batch_size=256))
    assert module.step_size_adapter.num_steps == 0
    assert "train/rpe_step" not in trainer.logged_metrics
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.05


def test_resume_with_the_adaptive_step_size_is_bit_identical(tmp_path):
    def fit(max_epochs, ckpt_path=None, callbacks=None):
        L.seed_everything(0)
        module = _module(lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR,
                                                        step_size=1, gamma=0.9))  # fmt: skip
        trainer = quiet_trainer(tmp_path, max_epochs=max_epochs, callbacks=callbacks or [],
                           enable_checkpointing=bool(callbacks))  # fmt: skip
        trainer.fit(module, DigitsDataModule(batch_size=256, seed=0), ckpt_path=ckpt_path)
        return module, trainer

    straight, t1 = fit(4)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    fit(2, callbacks=[ckpt])
    resumed, t2 = fit(4, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.step_size_adapter.state_dict() == resumed.step_size_adapter.state_dict()
    assert straight.step_size_adapter.num_steps == 20 and straight.step_size_adapter.scale != 1
    assert t1.optimizers[0].param_groups[0]["lr"] == t2.optimizers[0].param_groups[0]["lr"]


def test_cli_selects_the_adaptive_step_size(tmp_path):
    cli = run_cli(["fit", f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=1",
                   "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
                   "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                   "--test_after_fit=false",
                   "--model.step_size_adapter=bioplausible_lightning.DopamineStepSize",
                   "--model.step_size_adapter.init_args.gamma=0.5"])  # fmt: skip
    adapter = cli.model.step_size_adapter
    assert isinstance(adapter, DopamineStepSize) and adapter.gamma == 0.5
    assert adapter.num_steps == 3
    assert "train/rpe_step" in cli.trainer.callback_metrics
