"""Backprop as a rule: the one module with rule=Backprop(), and backprop for a layer group."""

import functools

import lightning as L
import pytest
import torch
from _helpers import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from bioplausible_lightning import (
    Backprop,
    BackpropModule,
    BioMLP,
    ClassifierModule,
    CompetitiveHebbian,
    CompositeRule,
    DigitsDataModule,
    DopamineStepSize,
    HebbianPerturbation,
    NodePerturbation,
    PerturbationModule,
    SoftWinnerTakeAll,
)
from bioplausible_lightning.losses import cross_entropy
from bioplausible_lightning.rules.backprop import layer_name

adam = functools.partial(torch.optim.Adam, lr=0.01)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))


def _grads(model):
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def test_backprop_module_is_the_one_module_with_the_backprop_rule():
    module = BackpropModule(BioMLP(hidden_sizes=(8,), seed=0), adam)  # positional optimizer
    assert isinstance(module, ClassifierModule) and isinstance(module.rule, Backprop)
    assert module.optimizer_factory is adam
    assert module.synchronized_parameters() == list(module.model.parameters())


def test_backprop_module_and_the_module_given_backprop_train_alike():
    def fit(make):
        L.seed_everything(0)
        module = make(BioMLP(hidden_sizes=(16,), seed=0))
        quiet_trainer(max_epochs=1, limit_val_batches=0).fit(module, DigitsDataModule(seed=0))
        return module.model.state_dict()

    a = fit(lambda m: BackpropModule(m, adam, accumulate_grad_batches=2))
    b = fit(lambda m: PerturbationModule(m, Backprop(), adam, accumulate_grad_batches=2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_estimate_then_finish_is_loss_backward(digits_batch):
    x, y = digits_batch
    model = _mlp()
    cross_entropy(model(x), y).mean().mul(0.5).backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    rule = Backprop()
    out = rule.estimate(model, cross_entropy, x, y, grad_scale=0.5)
    assert out.finite and out.rpe is None and not out.loss.requires_grad
    assert all(p.grad is None for p in model.parameters())  # the backward waits for finish()
    rule.finish()
    assert all(torch.equal(expected[n], g) for n, g in _grads(model).items())
    rule.finish()  # nothing pending any more: a no-op
    assert all(torch.equal(expected[n], g) for n, g in _grads(model).items())


def test_discard_drops_the_pending_backward(digits_batch):
    x, y = digits_batch
    model, rule = _mlp(), Backprop()
    rule.estimate(model, cross_entropy, x, y)
    rule.discard()
    rule.finish()
    assert all(p.grad is None for p in model.parameters())


def test_a_non_finite_loss_writes_nothing(digits_batch):
    x, y = digits_batch
    model, rule = _mlp(), Backprop()
    out = rule.estimate(model, lambda logits, t: cross_entropy(logits, t) * float("nan"), x, y)
    assert not out.finite
    rule.finish()
    assert all(p.grad is None for p in model.parameters())


def test_a_layer_group_gets_the_full_gradient_and_nothing_else(digits_batch):
    x, y = digits_batch
    model = _mlp()
    cross_entropy(model(x), y).mean().backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    rule = Backprop(layers=["3"])
    assert [name for name, _ in rule.targets(model, warn_unowned=False)] == ["3"]
    rule.estimate(model, cross_entropy, x, y)
    rule.finish()
    grads = _grads(model)
    assert grads["1.weight"] is None and grads["1.bias"] is None
    assert torch.equal(grads["3.weight"], expected["3.weight"])
    assert torch.equal(grads["3.bias"], expected["3.bias"])


def test_a_parametrised_weight_belongs_to_its_layer():
    model = BioMLP(hidden_sizes=(8,), seed=0)  # Dale: layers.*.parametrizations.weight.original
    assert layer_name("layers.2.parametrizations.weight.original") == "layers.2"
    assert layer_name("weight") == "" and layer_name("fc.bias") == "fc"
    rule = Backprop(layers=["layers.2"])
    assert [n for n, _ in rule.targets(model, warn_unowned=False)] == ["layers.2"]
    assert {id(p) for p in rule.trained_parameters(model)} == {
        id(model.layers[2].parametrizations.weight.original),
        id(model.layers[2].bias),
    }
    with pytest.warns(UserWarning, match="layers.0.bias"):
        Backprop(layers=["layers.2"]).targets(model)


def test_hebbian_hidden_layer_and_backprop_readout(digits_batch):
    x, y = digits_batch
    model = _mlp()
    hebbian_alone = CompetitiveHebbian(layers=["1"])
    hebbian_alone.estimate(model, cross_entropy, x, y)
    hidden = _grads(model)
    model.zero_grad(set_to_none=True)
    cross_entropy(model(x), y).mean().backward()
    readout = _grads(model)
    model.zero_grad(set_to_none=True)

    rule = CompositeRule([CompetitiveHebbian(layers=["1"]), Backprop(layers=["3"])])
    assert [n for n, _ in rule.targets(model)] == ["1", "3"]
    out = rule.estimate(model, cross_entropy, x, y)
    assert out.finite
    rule.finish(torch.autograd.backward)
    grads = _grads(model)
    assert torch.equal(grads["1.weight"], hidden["1.weight"])  # the Hebbian update, alone
    assert torch.equal(grads["3.weight"], readout["3.weight"])  # autograd's, to the readout
    assert torch.equal(grads["3.bias"], readout["3.bias"])


def test_a_whole_model_backprop_part_is_refused_beside_another_rule():
    rule = CompositeRule([CompetitiveHebbian(layers=["1"]), Backprop()])
    with pytest.raises(ValueError, match="'1' is claimed by both CompetitiveHebbian and Backprop"):
        rule.targets(_mlp())


def test_a_layer_group_under_multi_process_training_is_refused():
    Backprop().set_distributed(1, 2)  # the whole model: DDP's own all-reduce does the work
    with pytest.raises(
        ValueError,
        match=r"Backprop\(layers=\['3'\]\) cannot train under "
        r"multi-process training \(world_size=2\)",
    ):
        Backprop(layers=["3"]).set_distributed(0, 2)
    rule = HebbianPerturbation(readout=Backprop())
    rule.targets(_mlp())  # assigns the readout's layers
    with pytest.raises(ValueError, match="cannot train under multi-process"):
        rule.set_distributed(0, 2)


def test_the_papers_rule_with_a_backprop_readout_learns_and_resumes_bit_identically(tmp_path):
    def fit(max_epochs, ckpt_path=None, callbacks=()):
        L.seed_everything(0)
        model = BioMLP(hidden_sizes=(32,), dale=False, input_mean=0.0, input_std=1.0, seed=0,
                       activation=SoftWinnerTakeAll(0.5, 0.2))  # fmt: skip
        rule = HebbianPerturbation(CompetitiveHebbian(lr=1.0, layer_steps=30), Backprop())
        module = PerturbationModule(model, rule, adam)
        trainer = quiet_trainer(tmp_path, max_epochs=max_epochs, callbacks=list(callbacks),
                                enable_checkpointing=bool(callbacks))  # fmt: skip
        trainer.fit(module, DigitsDataModule(batch_size=128, seed=0), ckpt_path=ckpt_path)
        return module, trainer

    straight, trainer = fit(4)
    assert straight.rule.readout.layers == ["layers.2"]
    assert float(trainer.callback_metrics["val/acc"]) > 0.5  # chance is 0.10
    fit(2, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0)])
    resumed, _ = fit(4, ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_backprop_module_resumes_bit_identically(tmp_path):
    def fit(max_epochs, ckpt_path=None, callbacks=()):
        L.seed_everything(0)
        module = BackpropModule(BioMLP(hidden_sizes=(16,), seed=0), adam)
        trainer = quiet_trainer(tmp_path, max_epochs=max_epochs, callbacks=list(callbacks),
                                enable_checkpointing=bool(callbacks))  # fmt: skip
        trainer.fit(module, DigitsDataModule(batch_size=128, seed=0), ckpt_path=ckpt_path)
        return module

    straight = fit(3)
    fit(1, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0)])
    ckpt = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)
    assert ckpt["perturbation_rule_config"]["class"].endswith("Backprop")
    resumed = fit(3, ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rarely_used_module_options_are_keyword_only():
    with pytest.raises(TypeError):
        PerturbationModule(_mlp(), NodePerturbation(), adam, None, "step")
    with pytest.raises(TypeError):
        BackpropModule(_mlp(), adam, None, "step")


def test_step_size_adapter_needs_a_rule_that_measures_a_prediction_error():
    with pytest.raises(ValueError, match="step_size_adapter=.* is invalid with rule=Backprop"):
        BackpropModule(_mlp(), step_size_adapter=DopamineStepSize)


def test_backprop_needs_a_trainable_parameter():
    model = _mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="Backprop: no trainable parameter"):
        Backprop().targets(model)
    with pytest.raises(ValueError, match=r"layers=\['head'\]"):
        Backprop(layers=["head"]).targets(_mlp())


class _Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(16, dtype=torch.float32))

    def forward(self, x):
        return x * self.gain


def test_backprop_trains_any_module_of_a_group(digits_batch, recwarn):
    x, y = digits_batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), _Scale(), nn.Tanh(), nn.Linear(16, 10))
    rule = CompositeRule([CompetitiveHebbian(layers=["1"]), Backprop(layers=["2", "4"])])
    assert [n for n, _ in rule.targets(model)] == ["1", "2", "4"]
    assert not [w for w in recwarn if "will not be updated" in str(w.message)]  # all owned
    rule.estimate(model, cross_entropy, x, y)
    rule.finish(torch.autograd.backward)
    assert model[2].gain.grad is not None and model[4].weight.grad is not None
