import math

import pytest
import torch
from torch import nn

from bioplausible_lightning import BioConvNet, BioMLP, DaleConv2d, DaleLinear, KWinnersTakeAll


def test_dale_linear_signs_are_per_presynaptic_unit():
    layer = DaleLinear(50, 30, inhibitory_fraction=0.2, generator=torch.Generator().manual_seed(0))
    w = layer.weight
    assert int((layer.sign < 0).sum()) == 10
    # every column (presynaptic unit) has one sign, equal to that unit's sign
    assert torch.equal(torch.sign(w), layer.sign.expand_as(w))


def test_dale_conv_signs_are_per_input_channel():
    layer = DaleConv2d(8, 4, 3, inhibitory_fraction=0.25)
    w = layer.weight
    assert torch.equal(torch.sign(w), layer.sign.view(1, -1, 1, 1).expand_as(w))
    assert layer(torch.rand(2, 8, 6, 6)).shape == (2, 4, 6, 6)


def test_lognormal_initialisation_matches_configured_sigma():
    layer = DaleLinear(400, 300, inhibitory_fraction=0.0, init_mu=-3.0, init_sigma=0.7)
    log_w = layer.weight.abs().log()
    assert log_w.mean().item() == pytest.approx(-3.0, abs=0.02)
    assert log_w.std().item() == pytest.approx(0.7, abs=0.02)


def test_default_scale_keeps_first_layer_activity_of_order_one():
    layer = DaleLinear(256, 256)
    x = torch.relu(torch.randn(1000, 256))
    out = layer(x)
    assert 0.3 < out.std().item() < 3.0
    # detailed E/I balance: every unit's E and I weights sum to the same total
    assert layer.weight.sum(1).abs().max() < 1e-4 * layer.weight.abs().sum(1).min()


@pytest.mark.parametrize("seed", [0, 1])
def test_activity_neither_vanishes_nor_explodes_and_inputs_stay_distinct_at_depth(seed):
    model = BioMLP(input_shape=(1, 8, 8), hidden_sizes=[128] * 8, seed=seed)
    x = model.normalize(torch.rand(256, 1, 8, 8)).flatten(1)
    spreads = []
    for layer in model.layers:
        x = layer(x)
        if isinstance(layer, DaleLinear):
            spreads.append(x.std(0).mean().item())  # variation across inputs, per unit
    assert all(0.1 < s < 10 for s in spreads), spreads
    logits = x
    # different inputs still give different outputs (no collapse onto one vector)
    assert logits.std(0).mean() > 0.1 * logits.abs().mean()


def test_any_update_of_log_weight_keeps_dale_law():
    layer = DaleLinear(20, 10)
    signs = torch.sign(layer.weight).clone()
    with torch.no_grad():
        layer.log_weight.add_(torch.randn_like(layer.log_weight) * 5)
    assert torch.equal(torch.sign(layer.weight), signs)


def test_plain_parametrization_starts_identical_but_is_free():
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    exp = DaleLinear(6, 4, parametrization="exp", generator=gen())
    plain = DaleLinear(6, 4, parametrization="plain", generator=gen())
    assert torch.allclose(exp.weight, plain.weight)
    with torch.no_grad():
        plain.weight_raw.mul_(-1)
    assert torch.equal(torch.sign(plain.weight), -torch.sign(exp.weight))


def test_accumulate_weight_grad_applies_local_chain_rule():
    layer = DaleLinear(5, 3)
    g = torch.randn(3, 5)
    layer.accumulate_weight_grad(g)
    assert torch.allclose(layer.log_weight.grad, g * layer.weight)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"inhibitory_fraction": 1.0}, "inhibitory_fraction"),
        ({"inhibitory_fraction": -0.1}, "inhibitory_fraction"),
        ({"parametrization": "softplus"}, "parametrization"),
        ({"init_sigma": 0.0}, "init_sigma"),
    ],
)
def test_bad_layer_config_names_parameter_and_value(kwargs, name):
    with pytest.raises(ValueError, match=name) as err:
        DaleLinear(4, 4, **kwargs)
    assert repr(next(iter(kwargs.values()))) in str(err.value)


def test_wrong_input_shape_names_expected_and_received():
    model = BioMLP(input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\).*got \(2, 3, 5\)"):
        model(torch.rand(2, 3, 5))
    assert model(torch.rand(2, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"got \(2, 1, 8, 8\)"):
        DaleConv2d(3, 4)(torch.rand(2, 1, 8, 8))


def test_kwta_keeps_exactly_k_winners():
    kwta = KWinnersTakeAll(sparsity=0.75)
    x = torch.randn(5, 40).abs() + 0.1
    out = kwta(x)
    assert ((out > 0).sum(1) == math.ceil(0.25 * 40)).all()
    assert torch.equal(out[out > 0], x[out > 0])
    with pytest.raises(ValueError, match="sparsity=1.5"):
        KWinnersTakeAll(1.5)


def test_models_accept_unit_interval_images_and_use_dale_layers():
    mlp = BioMLP(hidden_sizes=(16, 16), sparsity=0.5)
    assert sum(isinstance(m, DaleLinear) for m in mlp.modules()) == 3
    conv = BioConvNet(input_shape=(3, 16, 16), channels=(4, 8), hidden_size=8)
    assert conv(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    plain = BioMLP(dale=False)
    assert not any(isinstance(m, DaleLinear) for m in plain.modules())
    assert any(isinstance(m, nn.Linear) for m in plain.modules())
    with pytest.raises(ValueError, match="hidden_sizes"):
        BioMLP(hidden_sizes=(0,))
