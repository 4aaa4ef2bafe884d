import functools
import warnings

import lightning as L
import pytest
import torch
from _helpers import quiet_trainer, trap_autograd
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from bioplausible_lightning import (
    BackpropModule,
    BioMLP,
    DigitsDataModule,
    NodePerturbation,
    PerturbationModule,
    WeightPerturbation,
)
from bioplausible_lightning.losses import cross_entropy
from bioplausible_lightning.rules.layers import is_exp_dale


def _module(rule=None, lr=0.01, **kwargs):
    return PerturbationModule(
        BioMLP(hidden_sizes=(64,), seed=0),
        rule or NodePerturbation(num_directions=2, seed=0),
        optimizer=functools.partial(torch.optim.Adam, lr=lr),
        **kwargs,
    )


def _params(module):
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def test_perturbation_module_learns_digits_without_backward(monkeypatch):
    trap_autograd(monkeypatch)
    L.seed_everything(0)
    module = _module()
    signs = {n: torch.sign(m.weight).clone() for n, m in module.model.named_modules()
             if is_exp_dale(m)}  # fmt: skip
    assert len(signs) == 2
    trainer = quiet_trainer(max_epochs=15)
    data = DigitsDataModule(seed=0)
    trainer.fit(module, data)
    assert {"train/loss_epoch", "train/acc", "val/loss", "val/acc"} <= set(trainer.logged_metrics)
    result = trainer.test(module, data, verbose=False)[0]
    assert result["test/acc"] > 0.85  # chance is 0.10
    # Dale's law: every effective weight kept its initial sign through training
    for name, m in module.model.named_modules():
        if is_exp_dale(m):
            assert torch.equal(torch.sign(m.weight), signs[name]), name


def test_backprop_baseline_learns_with_the_same_interface():
    L.seed_everything(0)
    module = BackpropModule(
        BioMLP(hidden_sizes=(64,), seed=0), optimizer=functools.partial(torch.optim.Adam, lr=0.01)
    )
    trainer = quiet_trainer(max_epochs=5)
    data = DigitsDataModule(seed=0)
    trainer.fit(module, data)
    assert trainer.test(module, data, verbose=False)[0]["test/acc"] > 0.9


@pytest.mark.parametrize("rule_factory", [
    lambda: NodePerturbation(num_directions=2, seed=5),
    lambda: WeightPerturbation(num_directions=4, seed=5),
])  # fmt: skip
def test_resume_from_checkpoint_is_bit_identical(tmp_path, rule_factory):
    data_kwargs = dict(batch_size=128, seed=0)

    def fit(max_epochs, ckpt_path=None, callbacks=None):
        L.seed_everything(0)
        module = _module(rule_factory(), lr=0.01,
                         lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR,
                                                        step_size=1,
                                                        gamma=0.9))  # fmt: skip
        trainer = quiet_trainer(tmp_path, max_epochs=max_epochs, callbacks=callbacks or [],
                           enable_checkpointing=bool(callbacks))  # fmt: skip
        trainer.fit(module, DigitsDataModule(**data_kwargs), ckpt_path=ckpt_path)
        return module

    straight = fit(4)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    fit(2, callbacks=[ckpt])
    resumed = fit(4, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    a, b = _params(straight), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the rule's RNG went on from where it stopped, not from its seed
    assert torch.equal(straight.rule.state_dict()["generator_state"],
                       resumed.rule.state_dict()["generator_state"])  # fmt: skip


def test_non_finite_loss_skips_update_warns_once_and_continues():
    calls = {"n": 0}

    def flaky_loss(logits, targets):
        calls["n"] += 1
        losses = cross_entropy(logits, targets)
        return losses * float("nan") if calls["n"] in (3, 5) else losses

    class Recorder(L.Callback):
        def __init__(self):
            self.before, self.after = {}, {}

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.before[batch_idx] = _params(module)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.after[batch_idx] = _params(module)

    recorder = Recorder()
    module = _module(loss=flaky_loss)
    trainer = quiet_trainer(max_steps=6, limit_val_batches=0, callbacks=[recorder])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, DigitsDataModule())
    messages = [str(w.message) for w in caught if "Non-finite loss" in str(w.message)]
    assert len(messages) == 1 and "global step 2" in messages[0]
    assert module.skipped_steps == 2
    for skipped in (2, 4):  # batch indices whose loss was NaN
        before, after = recorder.before[skipped], recorder.after[skipped]
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.global_step == 6  # training went on to max_steps
    assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.parametrize("interval, expected_steps", [("step", 10), ("epoch", 2)])
def test_lr_scheduler_is_stepped_per_configured_interval(interval, expected_steps):
    module = _module(
        lr=0.1,
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        lr_scheduler_interval=interval,
    )
    data = DigitsDataModule(batch_size=256)  # 5 batches per epoch
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0)
    trainer.fit(module, data)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(0.1 * 0.5**expected_steps)


def test_reduce_on_plateau_reads_the_monitored_metric():
    module = _module(
        lr=0.1,
        lr_scheduler=functools.partial(
            torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, factor=0.5, threshold=10.0
        ),
        lr_scheduler_monitor="val/loss",
    )
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(module, DigitsDataModule(batch_size=256))
    # threshold=10 (relative) makes every epoch count as "no improvement"
    assert trainer.optimizers[0].param_groups[0]["lr"] < 0.1


def test_gradient_clipping_on_the_module_bounds_the_update():
    def update_norm(**kwargs):
        module = _module(lr=1.0, **kwargs)
        module.optimizer_factory = functools.partial(torch.optim.SGD, lr=1.0)
        before = torch.cat([p.detach().flatten().clone() for p in module.parameters()])
        quiet_trainer(max_steps=1, limit_val_batches=0).fit(module, DigitsDataModule())
        after = torch.cat([p.detach().flatten() for p in module.parameters()])
        return (after - before).norm().item()

    unclipped = update_norm()
    clipped = update_norm(gradient_clip_val=1e-3)
    assert unclipped > 0.1
    # SGD with lr 1 moves the parameters by exactly the clipped gradient (float32 rounding)
    assert clipped == pytest.approx(1e-3, rel=0.01)


def test_trainer_gradient_clipping_is_refused_under_manual_optimization():
    with pytest.raises(Exception, match="gradient_clip_val"):
        quiet_trainer(max_steps=1, gradient_clip_val=1.0).fit(_module(), DigitsDataModule())


def test_accumulate_grad_batches_steps_every_k_batches():
    module = _module(accumulate_grad_batches=2)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(module, DigitsDataModule(batch_size=256))  # 5 batches
    assert trainer.global_step == 3  # after batches 2, 4 and the last one


def test_loggers_checkpoints_and_trainer_flags(tmp_path):
    module = _module()
    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")]
    trainer = L.Trainer(
        max_epochs=2, val_check_interval=0.5, logger=loggers, log_every_n_steps=2,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val/acc", mode="max")],
        enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, DigitsDataModule())
    metrics = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert "val/acc" in metrics and "train/loss_step" in metrics
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    best = trainer.checkpoint_callback.best_model_path
    restored = PerturbationModule.load_from_checkpoint(
        best, model=BioMLP(hidden_sizes=(64,)), rule=NodePerturbation(num_directions=2, seed=0)
    )
    assert restored.rule.state_dict()["generator_state"] is not None
    fast = quiet_trainer(fast_dev_run=True)
    fast.fit(_module(), DigitsDataModule())
    assert fast.global_step == 1


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"rule": "node"}, "rule"),
        ({"accumulate_grad_batches": 0}, "accumulate_grad_batches"),
        ({"loss": "hinge"}, "loss"),
        ({"gradient_clip_val": -1.0}, "gradient_clip_val"),
        ({"lr_scheduler_interval": "batch"}, "lr_scheduler_interval"),
    ],
)
def test_bad_module_config_names_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PerturbationModule(BioMLP(), **kwargs)


# -- guards that hold for any rule: empty batches, endless skips, compile, resume checks ----


def _tiny_loader(batch_size=16, n=64, collate_fn=None):
    from torch.utils.data import DataLoader, TensorDataset

    from bioplausible_lightning.data import load_digits_tensors

    images, labels = load_digits_tensors()
    dataset = TensorDataset(images[:n], labels[:n])
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn)


@pytest.mark.parametrize(
    "rule", [NodePerturbation(num_directions=2), WeightPerturbation(num_directions=2)]
)
def test_empty_batch_is_skipped_like_a_non_finite_step(rule):
    from torch.utils.data import default_collate

    calls = {"n": 0}

    def drop_second_batch(samples):  # a collate_fn that filters every sample out
        calls["n"] += 1
        x, y = default_collate(samples)
        return (x[:0], y[:0]) if calls["n"] == 2 else (x, y)

    module = _module(rule)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    with pytest.warns(RuntimeWarning, match="Empty batch"):
        trainer.fit(module, _tiny_loader(collate_fn=drop_second_batch))
    assert module.skipped_steps == 1
    assert trainer.global_step == 3  # the other three batches stepped
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_consecutive_skipped_steps_stop_the_run_with_an_error():
    def always_nan(logits, targets):
        return cross_entropy(logits, targets) * float("nan")

    module = _module(loss=always_nan, max_consecutive_skips=3)
    trainer = quiet_trainer(max_steps=5, limit_val_batches=0)
    with (
        pytest.warns(RuntimeWarning, match="Non-finite loss"),
        pytest.raises(RuntimeError, match="3 consecutive training steps were skipped"),
    ):
        trainer.fit(module, _tiny_loader())
    assert module.skipped_steps == 3 and trainer.global_step == 0


@pytest.mark.parametrize("plain_forward_first", [False, True])
def test_torch_compiled_model_trains_in_any_call_order(plain_forward_first):
    def fit(compiled):
        L.seed_everything(0)
        net = BioMLP(hidden_sizes=(16,), seed=0)
        model = torch.compile(net, backend="eager") if compiled else net
        if plain_forward_first:
            with torch.no_grad():
                model(torch.rand(16, 1, 8, 8))
        module = _module(NodePerturbation(num_directions=2, seed=0))
        module.model = model
        trainer = quiet_trainer(max_steps=4, num_sanity_val_steps=0, limit_val_batches=1,
                           val_check_interval=2)  # fmt: skip
        trainer.fit(module, _tiny_loader())
        return net.state_dict()

    eager, compiled = fit(False), fit(True)
    assert all(torch.equal(eager[k], compiled[k]) for k in eager)


def test_resuming_with_a_different_rule_warns_and_keeps_the_given_rule(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0, enable_checkpointing=True,
                       callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])  # fmt: skip
    trainer.fit(_module(NodePerturbation(num_directions=2, seed=0)), _tiny_loader())
    ckpt = str(tmp_path / "last.ckpt")
    recorded = torch.load(ckpt, weights_only=False)["perturbation_rule_config"]
    assert recorded["class"].endswith("NodePerturbation")
    assert recorded["settings"]["seed"] == 0 and recorded["settings"]["num_directions"] == 2
    other_seed, other_rule = NodePerturbation(num_directions=2, seed=1), WeightPerturbation()
    for rule, changed in [(other_seed, "seed=1"), (other_rule, "WeightPerturbation")]:
        module = _module(rule)
        with pytest.warns(UserWarning, match=rf"trained with NodePerturbation\(.*{changed}"):
            trainer = quiet_trainer(max_epochs=2, limit_val_batches=0)
            trainer.fit(module, _tiny_loader(), ckpt_path=ckpt)
        assert module.rule is rule and rule.seed == (1 if changed == "seed=1" else 0)
    # the same rule resumes without a warning and continues the checkpoint's random stream
    module = _module(NodePerturbation(num_directions=2, seed=0))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*trained with")
        quiet_trainer(max_epochs=1, limit_val_batches=0).fit(module, _tiny_loader(), ckpt_path=ckpt)


class _RenamedMLP(BioMLP):
    """Another class with BioMLP's parameters."""


def test_loading_a_checkpoint_without_its_model_names_both_classes(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0, enable_checkpointing=True,
                       callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])  # fmt: skip
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    trainer.fit(PerturbationModule(model, NodePerturbation(seed=0)), _tiny_loader())
    ckpt = str(tmp_path / "last.ckpt")
    recorded = torch.load(ckpt, weights_only=False)["model_class"]
    assert recorded == "torch.nn.modules.container.Sequential"
    # no model given: the default BioMLP cannot take these weights
    with pytest.raises(ValueError, match=r"trained with a torch\.nn.*Sequential model.*"
                       r"BioMLP \(the default: no model was given\).*model=\.\.\."):
        PerturbationModule.load_from_checkpoint(ckpt, rule=NodePerturbation(seed=0))
    # the checkpoint's model loads without a word
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*trained with")
        restored = PerturbationModule.load_from_checkpoint(
            ckpt, model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
            rule=NodePerturbation(seed=0),
        )
    assert torch.equal(restored.model[1].weight, model[1].weight)


def test_a_checkpoint_of_another_model_class_with_the_same_weights_loads_with_a_warning(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0, enable_checkpointing=True,
                       callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])  # fmt: skip
    module = _module()
    trainer.fit(module, _tiny_loader())
    with pytest.warns(UserWarning, match=r"BioMLP model, but this module's model is a .*"
                      r"_RenamedMLP\. .*weights fit this model's and are loaded"):
        restored = PerturbationModule.load_from_checkpoint(
            str(tmp_path / "last.ckpt"), model=_RenamedMLP(hidden_sizes=(64,), seed=1),
            rule=NodePerturbation(num_directions=2, seed=0),
        )
    assert all(torch.equal(v, _params(module)[k]) for k, v in _params(restored).items())


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"gradient_clip_val": "1"}, "gradient_clip_val"),
        ({"gradient_clip_val": True}, "gradient_clip_val"),
        ({"gradient_clip_val": float("inf")}, "gradient_clip_val"),
        ({"accumulate_grad_batches": True}, "accumulate_grad_batches"),
        ({"max_consecutive_skips": 0}, "max_consecutive_skips"),
        ({"max_consecutive_skips": 2.0}, "max_consecutive_skips"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"lr_scheduler": 3}, "lr_scheduler"),
        ({"lr_scheduler_frequency": True}, "lr_scheduler_frequency"),
        ({"lr_scheduler_monitor": 1}, "lr_scheduler_monitor"),
        ({"gradient_clip_algorithm": "l2"}, "gradient_clip_algorithm"),
        ({"model": "mlp"}, "model"),
    ],
)
def test_module_arguments_are_type_checked_at_construction(kwargs, name):
    with pytest.raises(ValueError, match=rf"{name}=.* is invalid: .*(allowed|must)"):
        PerturbationModule(**{"model": BioMLP(), **kwargs})


# -- defaults that train (the packaged CLI config uses the same: see test_cli.py) ---------


def test_default_module_solves_xor_with_a_plain_tanh_mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    module = PerturbationModule(net)
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1, 0])
    optimizer = module.configure_optimizers()
    for _ in range(200):  # the steps training_step takes, without the Trainer's overhead
        optimizer.zero_grad()
        assert module.compute_gradients(x, y, 1.0)[2]
        optimizer.step()
    assert torch.equal(net(x).argmax(1), y)


def test_default_module_learns_digits_like_the_cli_config():
    # the CLI config (same rule and optimizer defaults) reaches 98 % in 60 epochs; the old
    # defaults (Adam lr 1e-3, one direction) were at 51 % after 20
    L.seed_everything(0)
    module = PerturbationModule(BioMLP(hidden_sizes=(256,), seed=0))
    data = DigitsDataModule(batch_size=64, seed=0)
    trainer = quiet_trainer(max_epochs=8, limit_val_batches=0)
    trainer.fit(module, data)
    assert trainer.test(module, data, verbose=False)[0]["test/acc"] > 0.88


def _straight_and_resumed(tmp_path, make_module, stop, val, at_validation):
    """``make_module()`` fitted for 2 epochs straight, and fitted again from the checkpoint
    of a run stopped at step ``stop`` (written after that batch, or by the validation run
    there); and the checkpoint's path.  10 batches per epoch."""

    def fit(ckpt_path=None, callbacks=(), **kw):
        L.seed_everything(0)
        options = {"max_epochs": 2, "limit_val_batches": 0, **val, **kw}
        trainer = quiet_trainer(tmp_path, callbacks=list(callbacks),
                                enable_checkpointing=bool(callbacks), **options)  # fmt: skip
        module = make_module()
        trainer.fit(module, DigitsDataModule(batch_size=128, seed=0), ckpt_path=ckpt_path)
        return module

    straight = fit()
    when = {"monitor": "val/loss"} if at_validation else {"every_n_train_steps": stop}
    fit(callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, **when)],
        max_steps=stop)  # fmt: skip
    (path,) = (tmp_path / "ck").glob(f"*step={stop}*.ckpt")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*dataloader is not resumable")
        resumed = fit(ckpt_path=str(path))
    a, b = _params(straight), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    return resumed, path


@pytest.mark.parametrize("learner", ["perturbation", "backprop"])
@pytest.mark.parametrize("where", ["every_n_train_steps", "validation_mid_epoch", "epoch_end",
                                   "last_batch", "validation_at_last_batch"])  # fmt: skip
def test_a_dropout_model_resumes_bit_identically(tmp_path, where, learner):
    # Dropout draws from the global torch RNG, which Lightning does not checkpoint: the
    # module saves it and puts it back where the uninterrupted run stood (_global_rng);
    # Lightning restarts each of these checkpoints differently
    stop = {"every_n_train_steps": 4, "validation_mid_epoch": 4}.get(where, 10)
    val = {"validation_mid_epoch": dict(val_check_interval=4, limit_val_batches=1),
           "validation_at_last_batch": dict(val_check_interval=5, limit_val_batches=1),
           "epoch_end": dict(limit_val_batches=1)}.get(where, {})  # fmt: skip

    def make_module():
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                  torch.nn.Dropout(0.3), torch.nn.Linear(32, 10))  # fmt: skip
        if learner == "backprop":
            return BackpropModule(net)
        return PerturbationModule(net, NodePerturbation(num_directions=2, seed=3))

    resumed, path = _straight_and_resumed(tmp_path, make_module, stop, val,
                                          at_validation=bool(val))  # fmt: skip
    # a checkpoint loaded for anything but fit leaves the global RNG to the loop
    after = {}
    for ckpt_path in (None, str(path)):
        torch.manual_seed(1)
        quiet_trainer(tmp_path, limit_val_batches=1).validate(
            resumed, DigitsDataModule(seed=0), ckpt_path=ckpt_path)
        after[ckpt_path] = torch.get_rng_state()
    assert torch.equal(after[None], after[str(path)])


@pytest.mark.parametrize("where", ["every_n_train_steps", "validation_mid_epoch", "last_batch"])
def test_resume_from_a_mid_epoch_checkpoint_is_bit_identical(tmp_path, where):
    # the first run stops after step 4 (10 at the last batch)
    stop = 10 if where == "last_batch" else 4
    val = dict(val_check_interval=4, limit_val_batches=1) if where == "validation_mid_epoch" else {}
    def make_module():  # a fresh rule for every fit: its RNG state is what resumes
        return _module(WeightPerturbation(num_directions=2, seed=3), lr=0.01)

    _straight_and_resumed(tmp_path, make_module, stop, val, where == "validation_mid_epoch")
