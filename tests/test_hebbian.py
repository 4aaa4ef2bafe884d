"""CompetitiveHebbian and HebbianPerturbation: exact updates, homeostasis, emergence, wiring."""

import functools
import math
import warnings

import lightning as L
import pytest
import torch
from _helpers import quiet_trainer, trap_autograd
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bioplausible_lightning import (
    BioConvNet,
    BioMLP,
    CompetitiveHebbian,
    CompositeRule,
    DigitsDataModule,
    HebbianPerturbation,
    NodePerturbation,
    PerturbationModule,
    SoftWinnerTakeAll,
    WeightPerturbation,
)
from bioplausible_lightning.data import load_digits_tensors
from bioplausible_lightning.losses import cross_entropy
from bioplausible_lightning.metrics import positive_mass_fraction
from bioplausible_lightning.rules.hebbian import layer_inputs_as_rows, layer_outputs_as_rows


def _hand_update(w, x, lr, temperature, threshold, *, similarity="cosine", competition="soft",
                 k=1, anti_hebbian=0.0, normalize="unit", adaptive=False, decay=1.0):
    """Δw of the docstring's equations, written out with loops (float64)."""
    units, n = w.shape
    rows = x.shape[0]
    hebb = torch.zeros_like(w)
    yu = [0.0] * units
    for b in range(rows):
        u = [sum(w[i, j] * x[b, j] for j in range(n)) for i in range(units)]
        if similarity == "cosine":
            xnorm = math.sqrt(sum(float(v) ** 2 for v in x[b]))
            c = [float(u[i] / (w[i].norm() * xnorm)) - float(threshold[i]) for i in range(units)]
        else:
            c = [float(u[i]) - float(threshold[i]) for i in range(units)]
        order = sorted(range(units), key=lambda i: -c[i])
        if competition == "soft":
            e = [math.exp(ci / temperature) for ci in c]
            y = [ei / sum(e) for ei in e]
            if anti_hebbian:
                y = [yi if i == order[0] else -anti_hebbian * yi for i, yi in enumerate(y)]
        elif competition == "hard":
            y = [1.0 if i in order[:k] else 0.0 for i in range(units)]
        else:  # rank: the strongest Hebbian, the k-th anti-Hebbian
            y = [1.0 if i == order[0] else -anti_hebbian if i == order[k - 1] else 0.0
                 for i in range(units)]  # fmt: skip
        for i in range(units):
            yu[i] += y[i] * float(u[i]) / rows
            for j in range(n):
                hebb[i, j] += y[i] * x[b, j] / rows
    if normalize == "max":  # Krotov–Hopfield: raw decay, the step divided by its largest entry
        delta = torch.stack([hebb[i] - yu[i] * w[i] for i in range(units)])
        return lr * decay * delta / delta.abs().max()
    yu = [max(v, 0.0) for v in yu]  # the decay is floored at zero
    delta = torch.stack([hebb[i] - yu[i] * w[i] for i in range(units)])
    rates = []
    for i in range(units):
        rate = lr * (math.sqrt(abs(float(w[i].norm()) - 1)) if adaptive else 1.0)
        rates.append(rate / max(1.0, 2 * rate * abs(yu[i])))
    return decay * torch.tensor(rates, dtype=w.dtype)[:, None] * delta  # SGD(lr)'s change


def test_hebbian_update_equals_hand_computation_on_a_tiny_layer():
    torch.manual_seed(1)
    layer = nn.Linear(3, 2, bias=False).double()
    x = torch.rand(4, 3, dtype=torch.float64)
    rule = CompetitiveHebbian(lr=0.5, temperature=0.2, homeostasis=0.0)
    rule.targets(layer, warn_unowned=False)
    expected = _hand_update(layer.weight.detach().clone(), x, 0.5, 0.2, torch.zeros(2))
    before = layer.weight.detach().clone()
    rule.estimate(layer, lambda logits, y: logits.sum(1), x, torch.zeros(4, dtype=torch.long))
    optimizer = rule.own_optimizers(layer)[0]
    optimizer.factory(optimizer.params).step()
    torch.testing.assert_close(layer.weight.detach() - before, expected, rtol=1e-10, atol=1e-12)


def test_conv_update_is_the_linear_update_over_patches():
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 2, bias=False).double()
    x = torch.rand(2, 2, 3, 3, dtype=torch.float64)
    patches = [x[b, :, i : i + 2, j : j + 2].reshape(-1) for b in range(2) for i in range(2)
               for j in range(2)]  # fmt: skip
    rule = CompetitiveHebbian(lr=0.3, temperature=0.5, homeostasis=0.0)
    rule.targets(conv, warn_unowned=False)
    w = conv.weight.detach().reshape(3, -1).clone()
    expected = _hand_update(w, torch.stack(patches), 0.3, 0.5, torch.zeros(3))
    rule.estimate(conv, lambda out, y: out.flatten(1).sum(1), x, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(-conv.weight.grad.reshape(3, -1) * 0.3, expected,
                               rtol=1e-10, atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("padding", [dict(padding=1, padding_mode="reflect"),
                                     dict(padding="same"), dict(padding=2, stride=2)])  # fmt: skip
def test_conv_rows_are_the_patches_the_layer_saw(padding):
    """Every padding the layer uses (reflect, "same", strided) reaches the update's patches:
    each row's response to the weights is the layer's own output at that position."""
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 3, bias=False, **padding).double()
    x = torch.rand(2, 2, 5, 5, dtype=torch.float64)
    rows = layer_inputs_as_rows(conv, x)
    torch.testing.assert_close(rows @ conv.weight.reshape(3, -1).T,
                               layer_outputs_as_rows(conv, conv(x)))  # fmt: skip


def test_grad_scale_and_accumulation_scale_the_update_linearly():
    torch.manual_seed(0)
    layer = nn.Linear(5, 4, bias=False).double()
    x = torch.rand(8, 5, dtype=torch.float64)
    rule = CompetitiveHebbian(homeostasis=0.0)
    rule.targets(layer, warn_unowned=False)
    loss = lambda out, y: out.sum(1)  # noqa: E731
    rule.estimate(layer, loss, x, torch.zeros(8, dtype=torch.long), grad_scale=1.0)
    full = layer.weight.grad.clone()
    layer.weight.grad = None
    rule.estimate(layer, loss, x, torch.zeros(8, dtype=torch.long), grad_scale=0.25)
    torch.testing.assert_close(layer.weight.grad, 0.25 * full)


def _train_layer(rule, layer, images, epochs=3, batch=32):
    rule.targets(layer, warn_unowned=False)
    own = rule.own_optimizers(layer)[0]
    optimizer = own.factory(own.params)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(images.shape[0], generator=gen).split(batch):
            rule.estimate(layer, lambda out, y: out.sum(1), images[idx],
                          torch.zeros(len(idx), dtype=torch.long))  # fmt: skip
            optimizer.step()
            optimizer.zero_grad()


def test_homeostasis_holds_every_units_win_rate_near_its_fair_share():
    images, _ = load_digits_tensors()
    images = images.flatten(1)
    shares = {}
    for strength in (0.0, 1e-2):
        torch.manual_seed(0)
        layer = nn.Linear(64, 32, bias=False)
        rule = CompetitiveHebbian(lr=2.0, competition="hard", k=2, homeostasis=strength)
        _train_layer(rule, layer, images, epochs=4)
        u = images @ layer.weight.detach().T
        cos = u / layer.weight.detach().norm(dim=1) / images.norm(dim=1, keepdim=True)
        wins = rule.competition_weights(cos - rule.state_dict()["thresholds"][""])
        shares[strength] = wins.mean(0) / (2 / 32)  # 1.0 = fair share
    assert (shares[0.0] == 0).sum() >= 4  # without homeostasis units never win: dead
    held = shares[1e-2]
    assert (held > 0).all()  # with it every unit wins, none is dead
    assert held.max() < 3.0  # and no unit takes over
    assert ((held > 0.5) & (held < 2.0)).float().mean() >= 0.8  # most sit near their share


def test_positive_weights_emerge_from_a_mixed_sign_start_on_the_digits():
    images, _ = load_digits_tensors()
    images = images.flatten(1)  # non-negative pixels
    torch.manual_seed(0)
    layer = nn.Linear(64, 32, bias=False)  # default torch init: half the weights negative
    start = positive_mass_fraction(layer.weight.detach())
    _train_layer(CompetitiveHebbian(lr=2.0, homeostasis=1e-2), layer, images, epochs=8, batch=64)
    end = positive_mass_fraction(layer.weight.detach())
    assert 0.4 < start < 0.6
    assert end > 0.97  # no clamp, no sign constraint: the rule alone made |w| mass positive
    norms = layer.weight.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=0.1)  # bounded without clipping


def test_greedy_training_trains_one_layer_at_a_time():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    rule = CompetitiveHebbian(layer_steps=2, layers=["0", "2"])
    x, y = torch.rand(8, 6), torch.zeros(8, dtype=torch.long)
    active = []
    for _ in range(5):
        active.append([name for name, _ in rule.active_layers(model)])
        rule.estimate(model, cross_entropy, x, y)
    assert active == [["0"], ["0"], ["2"], ["2"], []]


def test_hebbian_perturbation_assigns_hidden_layers_and_the_readout():
    model = BioMLP(hidden_sizes=(16, 8), dale=False, seed=0)
    rule = HebbianPerturbation()
    names = [name for name, _ in rule.targets(model)]
    assert rule.hebbian.layers == ["layers.0", "layers.2"]
    assert rule.readout.layers == ["layers.4"]
    assert sorted(names) == ["layers.0", "layers.2", "layers.4"]


def test_hebbian_perturbation_fit_learns_the_digits_without_backward(monkeypatch):
    trap_autograd(monkeypatch)
    L.seed_everything(0)
    model = BioMLP(hidden_sizes=(64,), dale=False, input_mean=0.0, input_std=1.0, seed=0,
                   activation=SoftWinnerTakeAll(0.5, 0.2))  # fmt: skip
    rule = HebbianPerturbation(CompetitiveHebbian(lr=8.0, homeostasis=1e-2, layer_steps=100),
                               NodePerturbation(replicate_at="first_target"))  # fmt: skip
    module = PerturbationModule(model, rule=rule)
    trainer = quiet_trainer(max_epochs=10)
    data = DigitsDataModule(seed=0)
    trainer.fit(module, data)
    acc = trainer.test(module, data, verbose=False)[0]["test/acc"]
    assert acc > 0.8  # chance is 0.10; label-free hidden layer + perturbation readout
    assert positive_mass_fraction(model.layers[0].weight.detach()) > 0.9


def test_resume_with_hebbian_perturbation_is_bit_identical(tmp_path):
    def fit(max_epochs, ckpt_path=None, callbacks=None):
        L.seed_everything(0)
        model = BioMLP(hidden_sizes=(32,), dale=False, input_mean=0.0, input_std=1.0, seed=0,
                       activation=SoftWinnerTakeAll(0.5, 0.2))  # fmt: skip
        module = PerturbationModule(
            model, rule=HebbianPerturbation(CompetitiveHebbian(lr=1.0, layer_steps=30),
                                            NodePerturbation(num_directions=2, seed=3)),
            optimizer=functools.partial(torch.optim.Adam, lr=0.01),
        )  # fmt: skip
        trainer = quiet_trainer(tmp_path, max_epochs=max_epochs, callbacks=callbacks or [],
                           enable_checkpointing=bool(callbacks))  # fmt: skip
        trainer.fit(module, DigitsDataModule(batch_size=128, seed=0), ckpt_path=ckpt_path)
        return module

    straight = fit(4)
    fit(2, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)])
    resumed = fit(4, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert len(ckpt["rule_optimizers"]) == 1  # the Hebbian SGD travels with the checkpoint
    sa, sb = straight.rule.state_dict()["parts"], resumed.rule.state_dict()["parts"]
    assert sa[0]["steps"] == sb[0]["steps"] > 0
    assert all(torch.equal(sa[0]["thresholds"][k], sb[0]["thresholds"][k])
               for k in sa[0]["thresholds"])  # fmt: skip


@pytest.mark.parametrize("kwargs, name", [
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=True), "temperature"),
    (dict(lr=0.0), "lr"),
    (dict(lr=float("inf")), "lr"),
    (dict(k=0), "k"),
    (dict(competition="max"), "competition"),
    (dict(homeostasis=-1.0), "homeostasis"),
    (dict(layer_steps=0), "layer_steps"),
    (dict(layers="fc"), "layers"),
    (dict(adaptive_rate="yes"), "adaptive_rate"),
])  # fmt: skip
def test_bad_hebbian_settings_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CompetitiveHebbian(**kwargs)


def test_model_without_hidden_layer_is_refused():
    with pytest.raises(ValueError, match="no hidden layer"):
        PerturbationModule(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
                           rule=HebbianPerturbation())  # fmt: skip


def test_layer_type_the_rule_cannot_train_is_refused():
    with pytest.raises(ValueError, match=r"'0' \(Bilinear\); allowed are Linear, Conv2d"):
        CompetitiveHebbian().targets(nn.Sequential(nn.Bilinear(3, 3, 2)))
    with pytest.raises(ValueError, match="no trainable layer"):  # chosen layers: none fits
        CompetitiveHebbian(layers=["0"]).targets(nn.Sequential(nn.Bilinear(3, 3, 2)))
    with pytest.raises(ValueError, match="k=4 is invalid"):
        CompetitiveHebbian(competition="hard", k=4).targets(nn.Linear(3, 4))


def test_hidden_biases_the_rule_never_learns_are_named_at_construction():
    def model(bias):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16, bias=bias), nn.ReLU(),
                             nn.Linear(16, 10))  # fmt: skip

    with pytest.warns(UserWarning, match=r"stay at their initial values: \['1\.bias'\]"):
        module = PerturbationModule(model(True), rule=HebbianPerturbation())
    before = module.model[1].bias.detach().clone()
    images, labels = load_digits_tensors()
    loader = DataLoader(TensorDataset(images[:64], labels[:64]), batch_size=16)
    quiet_trainer(max_epochs=1, limit_val_batches=0).fit(module, loader)
    assert torch.equal(module.model[1].bias, before)  # what the warning says
    frozen_bias = model(True)
    frozen_bias[1].bias.requires_grad_(False)
    for quiet in (model(False), frozen_bias):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*initial values")
            PerturbationModule(quiet, rule=HebbianPerturbation())


@pytest.mark.parametrize("layer", [nn.Conv1d(1, 4, 3), nn.ConvTranspose1d(1, 4, 3)])
def test_a_weight_layer_of_an_untrainable_type_is_refused_not_left_at_init(layer):
    model = nn.Sequential(nn.Unflatten(1, (1, 64)), layer, nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(32), nn.ReLU(), nn.Linear(32, 10))  # fmt: skip
    model(torch.zeros(1, 64))  # materialise the lazy layer
    kind = type(layer).__name__
    with pytest.raises(ValueError, match=rf"'1' \({kind}\); allowed are Linear, Conv2d"):
        PerturbationModule(model, rule=HebbianPerturbation())
    with pytest.raises(ValueError, match=kind):
        CompetitiveHebbian().targets(model)
    layer.requires_grad_(False)  # frozen on purpose: nothing is left untrained
    rule = HebbianPerturbation()
    assert rule.parts(model)[0].layers == ["4"] and rule.parts(model)[1].layers == ["6"]


def test_readout_layers_that_match_nothing_are_named_in_the_error():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"readout_layers=\['head'\]"):
        HebbianPerturbation(readout_layers=["head"]).parts(model)
    assert HebbianPerturbation(readout_layers=["2"]).parts(model)[0].layers == ["0"]


def test_grouped_conv_is_refused_with_the_value_and_what_is_allowed():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ValueError, match="groups=2, which is unsupported: allowed is groups=1"):
        CompetitiveHebbian().targets(model)


def test_a_skipped_step_leaves_the_hebbian_thresholds_and_step_count_as_they_were():
    class NanAtCall:  # the readout's loss is NaN once: the whole step is skipped
        def __init__(self, at_call):
            self.at_call, self.calls = at_call, 0

        def __call__(self, logits, targets):
            self.calls += 1
            losses = cross_entropy(logits, targets)
            return losses * math.nan if self.calls == self.at_call else losses

    def fit(loss, skip_batch=None):
        L.seed_everything(0)
        model = BioMLP(hidden_sizes=(16,), dale=False, input_mean=0.0, input_std=1.0, seed=0)
        rule = HebbianPerturbation(CompetitiveHebbian(homeostasis=0.05),
                                   NodePerturbation(num_directions=2, seed=0))  # fmt: skip
        module = PerturbationModule(model, rule=rule, loss=loss)
        x, y = load_digits_tensors()
        keep = [i for i in range(160) if skip_batch is None or i // 32 != skip_batch]
        batches = DataLoader(TensorDataset(x[keep], y[keep]), batch_size=32)
        quiet_trainer(max_epochs=1, limit_val_batches=0).fit(module, batches)
        return module

    calls_per_step = 2  # the Hebbian pass and the readout's perturbed pass
    skipped = fit(NanAtCall(at_call=2 * calls_per_step), skip_batch=None)
    assert skipped.trainer.global_step == 4 == skipped.rule.hebbian.steps
    without = fit(cross_entropy, skip_batch=1)  # the same run without that batch
    a, b = skipped.rule.hebbian.state_dict(), without.rule.hebbian.state_dict()
    assert a["thresholds"].keys() == b["thresholds"].keys()
    assert all(torch.equal(a["thresholds"][k], b["thresholds"][k]) for k in a["thresholds"])


def test_composite_rule_refuses_a_layer_claimed_twice():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    rule = CompositeRule([CompetitiveHebbian(layers=["0"]),
                          WeightPerturbation(layers=["0", "2"])])  # fmt: skip
    with pytest.raises(ValueError, match="claimed by both"):
        rule.targets(model)


def test_the_rules_own_optimizer_does_not_double_global_step():
    L.seed_everything(0)
    model = BioMLP(hidden_sizes=(16,), dale=False, input_mean=0.0, input_std=1.0, seed=0)
    module = PerturbationModule(model, rule=HebbianPerturbation(
        readout=NodePerturbation(num_directions=2, replicate_at="first_target")))  # fmt: skip
    trainer = quiet_trainer(max_steps=7, limit_val_batches=0)
    before = model.layers[0].weight.detach().clone()
    trainer.fit(module, DigitsDataModule(batch_size=32, seed=0))
    assert trainer.global_step == 7
    assert module.rule.hebbian.steps == 7  # one Hebbian update per optimizer step
    assert not torch.equal(model.layers[0].weight.detach(), before)  # its own SGD stepped it


def test_a_rule_retargets_a_new_model_and_never_trains_a_freed_one():
    from bioplausible_lightning.rules.rule import PerModel

    rule = CompetitiveHebbian()
    first = nn.Sequential(nn.Linear(4, 3))
    assert rule.targets(first, warn_unowned=False)[0][1] is first[0]
    second = nn.Sequential(nn.Linear(4, 3))
    assert rule.targets(second, warn_unowned=False)[0][1] is second[0]
    cache: PerModel[int] = PerModel()
    cache.set(first, 1)
    assert cache.get(first) == 1 and cache.get(second) is None
    del first  # its weak reference dies with it: a new object can never match it
    assert cache.get(nn.Sequential()) is None


@pytest.mark.parametrize("cls, shape", [(BioMLP, (1, 8, 8)), (BioConvNet, (1, 8, 8))])
def test_the_packaged_models_drop_the_hidden_biases_a_hebbian_rule_never_learns(cls, shape):
    extra = {"channels": [4], "hidden_size": 8} if cls is BioConvNet else {"hidden_sizes": [16]}
    with pytest.warns(UserWarning, match=r"stay at their initial values.*hidden_bias=False"):
        PerturbationModule(cls(shape, dale=False, seed=0, **extra), rule=HebbianPerturbation())
    model = cls(shape, dale=False, seed=0, hidden_bias=False, **extra)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert [m.bias is None for m in layers] == [True] * (len(layers) - 1) + [False]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*initial values")
        PerturbationModule(model, rule=HebbianPerturbation())
    images, labels = load_digits_tensors()
    loader = DataLoader(TensorDataset(images[:64], labels[:64]), batch_size=16)
    before = layers[0].weight.detach().clone()
    quiet_trainer(max_epochs=1, limit_val_batches=0).fit(
        PerturbationModule(model, rule=HebbianPerturbation()), loader
    )
    assert not torch.equal(layers[0].weight, before)  # the layer learns without a bias
    dale = cls(shape, dale=True, seed=0, hidden_bias=False, **extra)
    assert sum(m.bias is None for m in dale.modules() if hasattr(m, "bias")) == len(layers) - 1
    with pytest.raises(ValueError, match="hidden_bias"):
        cls(shape, hidden_bias="no", **extra)
