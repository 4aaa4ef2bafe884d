"""Krotov–Hopfield and SoftHebb presets: exact updates, the Lebesgue layer, label-free learning."""

from functools import partial

import pytest
import torch
from _helpers import quiet_trainer, trap_autograd
from test_hebbian import _hand_update
from torch import nn

from bioplausible_lightning import (
    CompetitiveHebbian,
    HebbianMLP,
    HebbianPerturbation,
    KrotovHopfield,
    LebesguePower,
    NodePerturbation,
    PerturbationModule,
    RectifiedPower,
    SoftHebb,
    SoftHebbConvNet,
    SoftWinnerTakeAll,
    Triangle,
    lebesgue_,
)
from bioplausible_lightning.data import load_digits_tensors
from bioplausible_lightning.losses import cross_entropy

ZEROS = torch.zeros(4, dtype=torch.long)


def _sum_loss(out, y):
    return out.flatten(1).sum(1)


def _step(rule, layer, x):
    rule.targets(layer, warn_unowned=False)
    for param in layer.parameters():
        param.grad = None
    rule.estimate(layer, _sum_loss, x, ZEROS[: x.shape[0]])
    optimizer = rule.own_optimizers(layer)[0]
    optimizer.factory(optimizer.params).step()


def test_lebesgue_power_is_the_p_inner_product_and_inverts():
    torch.manual_seed(0)
    layer = lebesgue_(nn.Linear(5, 3, bias=False).double(), p=3.0)
    theta = layer.parametrizations.weight.original
    x = torch.randn(2, 5, dtype=torch.float64)
    by_hand = torch.stack([
        torch.stack([sum(torch.sign(theta[i, j]) * theta[i, j].abs() ** 2 * x[b, j]
                         for j in range(5)) for i in range(3)]) for b in range(2)
    ])  # fmt: skip
    torch.testing.assert_close(layer(x), by_hand)
    param = LebesguePower(3.0)
    torch.testing.assert_close(param(param.right_inverse(theta)), theta)


def test_lebesgue_chain_rule_matches_autograd():
    theta = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    grad_w = torch.randn(4, 6, dtype=torch.float64)
    param = LebesguePower(3.5)
    (param(theta) * grad_w).sum().backward()  # the test may use autograd; the rules never do
    torch.testing.assert_close(param.weight_grad_to_original(theta.detach(), grad_w), theta.grad)


def test_krotov_hopfield_update_acts_on_the_synapses_as_computed_by_hand():
    torch.manual_seed(3)
    layer = lebesgue_(nn.Linear(4, 6, bias=False).double(), p=3.0)
    theta = layer.parametrizations.weight.original
    x = torch.rand(4, 4, dtype=torch.float64)
    rule = KrotovHopfield(lr=0.02, k=3, anti_hebbian=0.4, lr_decay_steps=10)
    rule._steps = 4  # the rate has decayed linearly to 0.6 of its start
    before = theta.detach().clone()
    u_rows = layer(x).detach()  # ⟨θ, x⟩_p, what the units compete on
    as_dot_product = _hand_update(before, x, 0.02, 1.0, torch.zeros(6), similarity="dot",
                                  competition="rank", k=3, anti_hebbian=0.4, normalize="max",
                                  decay=0.6)  # fmt: skip
    expected_lebesgue = _krotov_by_hand(before, x, u_rows, k=3, delta=0.4, lr=0.02 * 0.6)
    _step(rule, layer, x)
    torch.testing.assert_close(theta.detach() - before, expected_lebesgue, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(as_dot_product, expected_lebesgue)  # p = 3 is not p = 2


def _krotov_by_hand(theta, x, u, k, delta, lr):
    """Krotov & Hopfield: ``ds_i = mean_b g_bi x_b − (mean_b g_bi u_bi) θ_i`` with
    ``g = 1`` for each example's strongest unit and ``−Δ`` for its k-th; ``lr · ds / max|ds|``."""
    units, rows = theta.shape[0], x.shape[0]
    ds = torch.zeros_like(theta)
    for i in range(units):
        gu = 0.0
        for b in range(rows):
            order = sorted(range(units), key=lambda j: -float(u[b, j]))
            g = 1.0 if i == order[0] else -delta if i == order[k - 1] else 0.0
            ds[i] += g * x[b] / rows
            gu += g * float(u[b, i]) / rows
        ds[i] -= gu * theta[i]
    return lr * ds / ds.abs().max()


def test_softhebb_update_equals_hand_computation():
    torch.manual_seed(4)
    layer = nn.Linear(3, 4, bias=False).double()
    with torch.no_grad():
        layer.weight.abs_().mul_(3)  # far from the unit sphere: the adaptive rate matters
    x = torch.rand(4, 3, dtype=torch.float64)
    for anti in (0.0, 1.0):
        rule = SoftHebb(lr=0.1, temperature=0.5, anti_hebbian=anti)
        before = layer.weight.detach().clone()
        expected = _hand_update(before, x, 0.1, 0.5, torch.zeros(4), similarity="dot",
                                anti_hebbian=anti, adaptive=True)  # fmt: skip
        _step(rule, layer, x)
        torch.testing.assert_close(layer.weight.detach() - before, expected,
                                   rtol=1e-10, atol=1e-12)  # fmt: skip


def test_max_normalised_step_with_per_unit_rates_equals_hand_computation():
    # SoftHebb's conv update: Δw = y(x − u w) summed over rows, divided by its largest
    # entry, then scaled per unit by sqrt(|‖w_i‖ − 1|) and the rate
    torch.manual_seed(6)
    layer = nn.Linear(3, 4, bias=False).double()
    with torch.no_grad():
        layer.weight.mul_(torch.tensor([[0.2], [1.0], [2.5], [4.0]], dtype=torch.float64))
        layer.weight[1] /= layer.weight[1].norm()  # on the unit sphere: converged
    x = torch.rand(5, 3, dtype=torch.float64)
    w = layer.weight.detach().clone()
    u = x @ w.T
    y = torch.softmax(u / 0.5, dim=1)
    delta = (y.T @ x) / 5 - (y * u).mean(0)[:, None] * w
    step = delta / delta.abs().max()
    expected = 0.3 * (w.norm(dim=1) - 1).abs().clamp_min(1e-10).sqrt()[:, None] * step
    rule = CompetitiveHebbian(lr=0.3, temperature=0.5, homeostasis=0.0, similarity="dot",
                              normalize="max", adaptive_rate=True)  # fmt: skip
    _step(rule, layer, x)
    torch.testing.assert_close(layer.weight.detach() - w, expected, rtol=1e-10, atol=1e-12)
    assert expected[1].abs().max() < 1e-3 * expected.abs().max()  # a converged unit waits


def test_hard_competition_with_dot_similarity_equals_hand_computation():
    torch.manual_seed(5)
    layer = nn.Linear(3, 5, bias=False).double()
    x = torch.rand(4, 3, dtype=torch.float64)
    rule = CompetitiveHebbian(lr=0.2, competition="hard", k=2, homeostasis=0.0, similarity="dot")
    before = layer.weight.detach().clone()
    expected = _hand_update(before, x, 0.2, 1.0, torch.zeros(5), similarity="dot",
                            competition="hard", k=2)  # fmt: skip
    _step(rule, layer, x)
    torch.testing.assert_close(layer.weight.detach() - before, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"competition": "rank", "k": 1}, "k=1"),
        ({"similarity": "euclid"}, "similarity='euclid'"),
        ({"anti_hebbian": 1.5}, "anti_hebbian=1.5"),
        ({"competition": "hard", "anti_hebbian": 0.2}, "anti_hebbian=0.2"),
        ({"normalize": "l2"}, "normalize='l2'"),
        ({"lr_decay_steps": 0}, "lr_decay_steps=0"),
    ],
)
def test_bad_new_settings_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompetitiveHebbian(**kwargs)


def test_bad_model_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="p=1.5"):
        LebesguePower(1.5)
    with pytest.raises(ValueError, match="init='uniform'"):
        HebbianMLP(init="uniform")
    with pytest.raises(ValueError, match="power=0"):
        RectifiedPower(0)
    with pytest.raises(ValueError, match="total_activity=0"):
        SoftWinnerTakeAll(total_activity=0)
    with pytest.raises(ValueError, match="one entry per block"):
        SoftHebbConvNet(channels=(4, 8), kernel_sizes=(3,), triangle_powers=(1.0,))
    with pytest.raises(ValueError, match="already has a weight parametrisation"):
        lebesgue_(lebesgue_(nn.Linear(2, 2)))


def test_activations_by_hand():
    x = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.5, 2.0]])
    torch.testing.assert_close(
        RectifiedPower(2.0)(x), torch.tensor([[1 / 9, 0, 1], [1 / 16, 1 / 16, 1]])
    )
    mean = x.mean(1, keepdim=True)
    torch.testing.assert_close(Triangle()(x), torch.relu(x - mean))
    soft = SoftWinnerTakeAll(0.0, 0.5, total_activity=1.0)(x)
    torch.testing.assert_close(soft, torch.softmax(x / 0.5, 1))


def _ridge_accuracy(train_f, train_y, test_f, test_y):
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    a = torch.cat([(train_f - mu) / sd, torch.ones(len(train_f), 1)], 1)
    b = torch.cat([(test_f - mu) / sd, torch.ones(len(test_f), 1)], 1)
    w = torch.linalg.solve(
        a.T @ a + 1.0 * torch.eye(a.shape[1]), a.T @ nn.functional.one_hot(train_y).float()
    )
    return ((b @ w).argmax(1) == test_y).float().mean().item()


@pytest.mark.parametrize("preset", ["krotov", "softhebb"])
def test_each_preset_learns_features_that_beat_raw_pixels_label_free(preset, monkeypatch):
    images, labels = load_digits_tensors()
    x, y = images.flatten(1), labels
    torch.manual_seed(0)
    perm = torch.randperm(len(x))
    train, test = perm[:1200], perm[1200:]
    if preset == "krotov":
        model = HebbianMLP((1, 8, 8), hidden_sizes=[400], lebesgue_p=3.0, init="normal",
                           activation=RectifiedPower(3.0), seed=0)  # fmt: skip
        rule = KrotovHopfield(lr=0.5, k=5, lr_decay_steps=30 * 12, layers=["layers.0"])
    else:
        model = HebbianMLP(
            (1, 8, 8),
            hidden_sizes=[400],
            init="positive",
            activation=SoftWinnerTakeAll(0.0, 0.2, total_activity=1.0),
            seed=0,
        )
        rule = SoftHebb(lr=0.3, temperature=1 / 12, layers=["layers.0"])
    rule.targets(model, warn_unowned=False)
    optimizer = (lambda o: o.factory(o.params))(rule.own_optimizers(model)[0])
    generator = torch.Generator().manual_seed(0)
    trap_autograd(monkeypatch)
    for _ in range(30):
        order = train[torch.randperm(len(train), generator=generator)]
        for i in range(0, len(order), 100):
            optimizer.zero_grad(set_to_none=True)
            rule.estimate(model, _sum_loss, x[order[i : i + 100]], y[order[i : i + 100]])
            optimizer.step()
    with torch.no_grad():
        features = model.layers[:-1](x)
    learned = _ridge_accuracy(features[train], y[train], features[test], y[test])
    pixels = _ridge_accuracy(x[train], y[train], x[test], y[test])
    assert learned > pixels + 0.01, (learned, pixels)


def test_softhebb_conv_preset_trains_end_to_end_without_autograd(monkeypatch):
    torch.manual_seed(0)
    images = torch.rand(16, 3, 16, 16)
    labels = torch.randint(0, 10, (16,))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=8)
    model = SoftHebbConvNet((3, 16, 16), channels=(4, 8, 16), seed=0)
    rule = HebbianPerturbation(
        SoftHebb(anti_hebbian=1.0, temperature=1.0, layer_steps=2),
        NodePerturbation(num_directions=2, seed=0),
        readout_start=6,
    )
    module = PerturbationModule(model, rule=rule)
    readout_before = model.head[-1].weight.detach().clone()
    before = [
        layer.weight.detach().clone() for layer in model.features if isinstance(layer, nn.Conv2d)
    ]
    trap_autograd(monkeypatch)
    quiet_trainer(max_epochs=4).fit(module, data)
    after = [layer.weight.detach() for layer in model.features if isinstance(layer, nn.Conv2d)]
    assert all(not torch.equal(a, b) for a, b in zip(after, before))  # greedy: each layer learned
    assert torch.isfinite(torch.cat([a.flatten() for a in after])).all()
    assert not torch.equal(model.head[-1].weight, readout_before)  # learned after the stage


def test_readout_waits_for_the_label_free_stage():
    model = HebbianMLP((1, 8, 8), hidden_sizes=[16], seed=0)
    rule = HebbianPerturbation(
        SoftHebb(), NodePerturbation(num_directions=2, seed=0), readout_start=3
    )
    readout = model.layers[-1]
    x, y = torch.rand(4, 64), torch.zeros(4, dtype=torch.long)
    for step in range(4):
        readout.weight.grad = None
        rule.estimate(model, cross_entropy, x, y)
        assert (readout.weight.grad is not None) == (step >= 3)
    with pytest.raises(ValueError, match="readout_start=-1"):
        HebbianPerturbation(readout_start=-1)


def test_every_peer_learner_config_parses_and_builds_its_model():
    from bioplausible_lightning.data import MNISTDataModule
    from bioplausible_lightning.evaluation.learners import PEER_LEARNERS, LearnerRun

    for dataset, learners in PEER_LEARNERS.items():
        for learner in learners:
            run = LearnerRun(learner)
            assert run.label_free_hidden(), (dataset, learner.name)
            rule = run.cfg.model.init_args.rule.init_args
            assert rule.readout_start > 0, learner.name  # a label-free stage first
    data = MNISTDataModule(data_dir="unused", download=False)
    krotov = LearnerRun(PEER_LEARNERS["mnist"][0]).model(data, seed=0)
    assert isinstance(krotov.layers[0].parametrizations.weight[0], LebesguePower)


def _two_layers() -> nn.Sequential:
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(5, 4, bias=False), nn.ReLU(),
                         nn.Linear(4, 3, bias=False)).double()  # fmt: skip


@pytest.mark.parametrize("normalize", ["unit", "max"])
def test_per_layer_rates_and_temperatures_are_each_layers_own_rule(normalize):
    """``lr=[a, b], temperature=[s, t]`` moves each layer exactly as a rule with that
    layer's rate and temperature alone would (float64)."""
    x = torch.rand(6, 5, dtype=torch.float64)
    settings = dict(anti_hebbian=1.0, normalize=normalize)
    model = _two_layers()
    before = [p.detach().clone() for p in model.parameters()]
    _step(SoftHebb(lr=[0.3, 0.05], temperature=[0.5, 2.0], **settings), model, x)
    for index, (lr, temperature) in enumerate([(0.3, 0.5), (0.05, 2.0)]):
        alone = _two_layers()
        _step(SoftHebb(lr=lr, temperature=temperature, layers=[str(2 * index)], **settings),
              alone, x)  # fmt: skip
        layer = alone[2 * index].weight.detach()
        torch.testing.assert_close(model[2 * index].weight.detach(), layer, rtol=0, atol=1e-14)
        assert not torch.equal(layer, before[index])


def test_per_layer_settings_are_refused_when_they_do_not_fit():
    with pytest.raises(ValueError, match=r"lr\[1\]=-0.1"):
        SoftHebb(lr=[0.1, -0.1])
    with pytest.raises(ValueError, match=r"temperature=\[\]"):
        SoftHebb(temperature=[])
    rule = SoftHebb(lr=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"lr=\[0.1, 0.2, 0.3\] is invalid for the 2 trained"):
        rule.targets(_two_layers(), warn_unowned=False)


def test_softhebb_conv_net_wide_start_and_padding():
    model = SoftHebbConvNet((3, 16, 16), channels=(4, 8, 16), init="wide", seed=0)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    norms = torch.cat([c.weight.flatten(1).norm(dim=1) for c in convs])
    assert 20 < norms.mean() < 30  # SoftHebb's start: far outside the unit sphere
    assert all(c.padding_mode == "reflect" for c in convs)
    with pytest.raises(ValueError, match="padding_mode='mirror'"):
        SoftHebbConvNet(padding_mode="mirror")


def test_softhebb_conv_net_few_shot_readout_options():
    model = SoftHebbConvNet((1, 12, 12), channels=(4, 8, 6), readout_norm=True,
                            readout_init="zeros", seed=0)  # fmt: skip
    norm, readout = model.head[1], model.head[-1]
    assert isinstance(norm, nn.BatchNorm1d) and not norm.affine
    assert norm.num_features == readout.in_features == 6 * 1 * 1
    assert not readout.weight.any() and not readout.bias.any()
    plain = SoftHebbConvNet((1, 12, 12), channels=(4, 8, 6), seed=0)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())
    assert plain.head[-1].weight.any()
    with pytest.raises(ValueError, match="readout_init='ones'"):
        SoftHebbConvNet(readout_init="ones")
    with pytest.raises(ValueError, match="readout_norm=1"):
        SoftHebbConvNet(readout_norm=1)


@pytest.mark.parametrize("readout_init", ["zeros", "torch"])
def test_silent_readout_learns_in_the_span_of_its_inputs(readout_init):
    """From ``readout_init="zeros"``, node perturbation with plain SGD keeps the readout's
    weights in the span of the features it was shown (what makes it prototype-like from a
    few images); from the default init they keep the random start outside that span."""
    torch.manual_seed(0)
    images, labels = torch.rand(10, 1, 12, 12), torch.arange(10)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels),
                                       batch_size=10)  # fmt: skip
    model = SoftHebbConvNet((1, 12, 12), channels=(4, 8, 64), dropout=0.0, readout_norm=True,
                            readout_init=readout_init, seed=0)  # fmt: skip
    rule = HebbianPerturbation(SoftHebb(layer_steps=1), NodePerturbation(num_directions=4, seed=0),
                               readout_start=3, freeze_normalization=True)  # fmt: skip
    module = PerturbationModule(model, rule=rule, optimizer=partial(torch.optim.SGD, lr=0.05))
    quiet_trainer(max_epochs=3).fit(module, data)  # the label-free stage: 3 steps
    start = model.head[-1].weight.detach().clone()
    seen = []
    model.head[-1].register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    quiet_trainer(max_epochs=10).fit(module, data)  # 7 readout steps on 10 feature vectors
    weight = model.head[-1].weight.detach()
    _, values, vh = torch.linalg.svd(torch.cat(seen), full_matrices=False)
    basis = vh[values > 1e-5 * values[0]]  # rows: an orthonormal basis of the inputs' span
    assert basis.shape[0] <= 10 < weight.shape[1]  # ten images: a proper subspace
    outside = (weight - weight @ basis.T @ basis).norm() / weight.norm()
    assert not torch.equal(weight, start)
    if readout_init == "zeros":
        assert not start.any() and outside < 1e-4
    else:
        assert outside > 0.5


def test_frozen_normalization_after_the_greedy_stage(monkeypatch):
    """With ``freeze_normalization`` the BatchNorm statistics learn during the label-free
    stage and stay fixed while the readout learns; the finished Hebbian rule stops running."""
    torch.manual_seed(0)
    images, labels = torch.rand(16, 3, 16, 16), torch.randint(0, 10, (16,))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=8)
    model = SoftHebbConvNet((3, 16, 16), channels=(4, 8, 16), init="wide", readout_norm=True,
                            seed=0)  # fmt: skip
    hebbian = SoftHebb(lr=[0.08, 0.03, 0.06], temperature=[1.0, 1.5, 4.0], anti_hebbian=1.0,
                       normalize="max", layer_steps=2)  # fmt: skip
    rule = HebbianPerturbation(hebbian, NodePerturbation(num_directions=2, seed=0),
                               readout_start=6, freeze_normalization=True)  # fmt: skip
    module = PerturbationModule(model, rule=rule)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 4  # the three blocks' and the readout's
    trap_autograd(monkeypatch)
    quiet_trainer(max_epochs=3).fit(module, data)  # 6 steps: the label-free stage
    assert hebbian.steps == 6
    stats = [m.running_mean.clone() for m in norms]
    readout = model.head[-1].weight.detach().clone()
    quiet_trainer(max_epochs=6).fit(module, data)  # 6 more: the readout alone
    assert hebbian.steps == 6 and not torch.equal(model.head[-1].weight, readout)
    assert all(torch.equal(m.running_mean, s) for m, s in zip(norms, stats))
    with pytest.raises(ValueError, match="freeze_normalization=True is invalid"):
        HebbianPerturbation(SoftHebb(), freeze_normalization=True)
