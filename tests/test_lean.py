"""``PerturbationModule(inplace_update=True)``: the update applied in place, no ``.grad``."""

import functools
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from _helpers import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from bioplausible_lightning import (
    BioMLP,
    CompetitiveHebbian,
    DigitsDataModule,
    HebbianPerturbation,
    NodePerturbation,
    PerturbationModule,
    WeightPerturbation,
)
from bioplausible_lightning.lean import InPlaceSGD, applied_in_place
from bioplausible_lightning.losses import cross_entropy
from bioplausible_lightning.rules.layers import redirected_updates

SGD = functools.partial(torch.optim.SGD, lr=0.05)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


RULES = {
    "wp_lowrank": (_mlp, lambda: WeightPerturbation(num_directions=3, rank=2, seed=1)),
    "wp_dense": (_mlp, lambda: WeightPerturbation(structure="dense", num_directions=2, seed=1)),
    "wp_dale_multiplicative": (lambda: BioMLP(hidden_sizes=(32,), seed=0),
                               lambda: WeightPerturbation(mode="multiplicative", seed=1)),
    "wp_dale_additive": (lambda: BioMLP(hidden_sizes=(32,), seed=0),
                         lambda: WeightPerturbation(num_directions=2, seed=1)),
    "np": (_mlp, lambda: NodePerturbation(num_directions=2, seed=1)),
    "np_dale": (lambda: BioMLP(hidden_sizes=(32,), seed=0),
                lambda: NodePerturbation(num_directions=2, seed=1)),
}  # fmt: skip


def _fit(case, inplace, tmp_path=None, max_steps=5, ckpt_path=None, callbacks=(),
         precision="64-true", **kwargs):  # fmt: skip
    # float64: a perturbation rule's loss differences amplify float32 rounding (σ = 1e-3),
    # so two roundings of the same update part visibly within a few float32 steps
    L.seed_everything(0)
    model, rule = RULES[case]
    module = PerturbationModule(model(), rule(), optimizer=SGD, inplace_update=inplace, **kwargs)
    trainer = quiet_trainer(tmp_path, max_steps=max_steps, limit_val_batches=0,
                            callbacks=list(callbacks), enable_checkpointing=bool(callbacks),
                            precision=precision)  # fmt: skip
    trainer.fit(module, DigitsDataModule(batch_size=64, seed=0), ckpt_path=ckpt_path)
    return module


def _params(module):
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


@pytest.mark.parametrize("case", list(RULES))
def test_in_place_update_equals_torch_sgd_on_the_usual_path(case):
    lean, usual = _fit(case, True), _fit(case, False)
    a, b = _params(lean), _params(usual)
    start = _params(PerturbationModule(RULES[case][0](), RULES[case][1]()))
    assert max(float((b[k] - start[k]).abs().max()) for k in b) > 1e-4  # it trained
    for k in a:  # the same update, up to the rounding of applying it unformed
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-12)
    assert lean.global_step == usual.global_step == 5
    assert all(p.grad is None for p in lean.model.parameters())


def test_node_perturbation_biases_and_unfactored_updates_are_bit_identical():
    # a formed update is applied exactly as torch.optim.SGD applies its .grad
    lean, usual = _fit("np_dale", True), _fit("np_dale", False)
    a, b = _params(lean), _params(usual)
    for k in a:
        if k.endswith("bias") or "original" in k:  # every layer of a Dale model is formed
            assert torch.equal(a[k], b[k]), k


def test_no_grad_buffer_is_allocated_during_a_lean_step(digits_batch):
    x, y = digits_batch
    for rule in (WeightPerturbation(seed=0), NodePerturbation(num_directions=2, seed=0)):
        model = _mlp()
        before = [p.clone() for p in model.parameters()]
        optimizer = SGD(model.parameters())
        with applied_in_place(optimizer, model):
            rule.estimate(model, cross_entropy, x, y)
        assert all(p.grad is None for p in model.parameters())
        assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_low_rank_updates_reach_the_weight_unformed(digits_batch):
    # the sink receives the low-rank factors, not a weight-sized matrix
    x, y = digits_batch
    model = _mlp()
    seen = []

    class Recording(InPlaceSGD):
        def add(self, param, grad):
            seen.append(("add", tuple(grad.shape)))
            super().add(param, grad)

        def add_outer(self, param, u, v):
            seen.append(("outer", tuple(u.shape), tuple(v.shape)))
            super().add_outer(param, u, v)

    with redirected_updates(Recording(SGD(model.parameters()))):
        WeightPerturbation(num_directions=2, seed=0).estimate(model, cross_entropy, x, y)
    assert ("outer", (32, 2), (64, 2)) in seen and ("outer", (10, 2), (32, 2)) in seen
    assert {s[1] for s in seen if s[0] == "add"} == {(32,), (10,)}  # only the biases formed


def test_a_rule_writing_grad_itself_is_caught():
    model = _mlp()

    with pytest.raises(RuntimeError, match=r"inplace_update=True: the rule wrote \.grad"):
        with applied_in_place(SGD(model.parameters()), model):
            model[1].weight.grad = torch.zeros_like(model[1].weight)


@pytest.mark.parametrize("inplace", [True, False])
def test_resume_from_a_checkpoint_is_bit_identical_in_place(tmp_path, inplace):
    precision = "32-true"  # as the module tests resume
    straight = _fit("wp_lowrank", inplace, tmp_path, max_steps=8, precision=precision)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_train_steps=3)
    _fit("wp_lowrank", inplace, tmp_path, max_steps=3, callbacks=[ckpt], precision=precision)
    (path,) = (tmp_path / "ck").glob("*step=3*.ckpt")
    resumed = _fit(
        "wp_lowrank", inplace, tmp_path, max_steps=8, ckpt_path=str(path), precision=precision
    )
    a, b = _params(straight), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.hparams["inplace_update"] is inplace


def test_lr_schedules_act_on_the_in_place_update():
    gamma = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    kwargs = dict(lr_scheduler=gamma, lr_scheduler_interval="step")
    lean, usual = _fit("np", True, **kwargs), _fit("np", False, **kwargs)
    for k, v in _params(lean).items():
        torch.testing.assert_close(v, _params(usual)[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({}, r"optimizer=default_optimizer \(Adam\) is invalid with inplace_update=True"),
    ({"optimizer": SGD, "gradient_clip_val": 1.0},
     r"gradient_clip_val=1.0 is invalid with inplace_update=True.*Allowed: None"),
    ({"optimizer": SGD, "accumulate_grad_batches": 2},
     r"accumulate_grad_batches=2 is invalid with inplace_update=True.*Allowed: 1"),
    ({"optimizer": SGD, "rule": CompetitiveHebbian(layers=["1"])},
     r"rule=CompetitiveHebbian is invalid with inplace_update=True"),
    ({"optimizer": SGD, "rule": HebbianPerturbation()},
     r"rule=HebbianPerturbation is invalid with inplace_update=True"),
    ({"optimizer": SGD, "inplace_update": 1}, r"inplace_update=1 is invalid"),
])  # fmt: skip
def test_unsupported_combinations_are_refused_at_construction(kwargs, match):
    kwargs = {"inplace_update": True, **kwargs}
    with pytest.raises(ValueError, match=match):
        PerturbationModule(_mlp(), **kwargs)


@pytest.mark.parametrize(("optimizer", "match"), [
    (functools.partial(torch.optim.Adam, lr=0.01), r"optimizer=Adam is invalid.*torch\.optim\.SGD"),
    (functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9),
     r"momentum=0.9 \(torch.optim.SGD, parameter group 0\) is invalid.*momentum=0"),
    (functools.partial(torch.optim.SGD, lr=0.01, weight_decay=1e-4), r"weight_decay=0.0001"),
])  # fmt: skip
def test_an_optimizer_other_than_plain_sgd_is_refused_when_built(optimizer, match):
    module = PerturbationModule(_mlp(), optimizer=optimizer, inplace_update=True)
    with pytest.raises(ValueError, match=match):
        module.configure_optimizers()


def _attach(module, world_size=2):
    module._trainer = SimpleNamespace(world_size=world_size, global_rank=0,
                                      strategy=DDPStrategy())  # fmt: skip


@pytest.mark.parametrize("rule", [
    NodePerturbation(num_directions=2), WeightPerturbation(distributed="all_reduce"),
])  # fmt: skip
def test_under_ddp_only_seed_shared_weight_perturbation_is_allowed(rule):
    module = PerturbationModule(_mlp(), rule, optimizer=SGD, inplace_update=True)
    _attach(module)
    with pytest.raises(ValueError, match=(
        rf"inplace_update=True is invalid with rule={type(rule).__name__} under "
        r"strategy=DDPStrategy with world_size=2.*distributed='shared_seed'")):  # fmt: skip
        module.setup("fit")
    shared = PerturbationModule(_mlp(), WeightPerturbation(), optimizer=SGD, inplace_update=True)
    _attach(shared)
    shared.setup("fit")  # every process rebuilds the same update: allowed
    shared.teardown("fit")
