import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from bioplausible_lightning import (
    BioConvNet,
    BioMLP,
    DaleConv2d,
    DaleExp,
    DaleLinear,
    KWinnersTakeAll,
    dale_,
)
from bioplausible_lightning.rules.layers import accumulate_weight_grad, weight_param


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sign_of(layer: nn.Module) -> torch.Tensor:
    return layer.parametrizations.weight[0].sign


def test_dale_linear_signs_are_per_presynaptic_unit_and_the_layer_stays_plain():
    layer = dale_(nn.Linear(50, 30), inhibitory_fraction=0.2, generator=gen())
    assert isinstance(layer, nn.Linear) and isinstance(layer.parametrizations.weight[0], DaleExp)
    w = layer.weight
    assert int((sign_of(layer) < 0).sum()) == 10
    # every column (presynaptic unit) has one sign, equal to that unit's sign
    assert torch.equal(torch.sign(w), sign_of(layer).expand_as(w))
    assert torch.equal(layer.bias, torch.zeros(30))  # balanced start: no common-mode offset
    assert weight_param(layer) is layer.parametrizations.weight.original
    assert torch.equal(weight_param(layer).exp(), w.abs())


def test_dale_conv_signs_are_per_input_channel():
    layer = dale_(nn.Conv2d(8, 4, 3, padding=1), inhibitory_fraction=0.25)
    w = layer.weight
    assert torch.equal(torch.sign(w), sign_of(layer).view(1, -1, 1, 1).expand_as(w))
    assert int((sign_of(layer) < 0).sum()) == 2
    assert layer(torch.rand(2, 8, 6, 6)).shape == (2, 4, 6, 6)


def test_lognormal_initialisation_matches_configured_sigma():
    layer = dale_(nn.Linear(400, 300), inhibitory_fraction=0.0, init_mu=-3.0, init_sigma=0.7)
    log_w = layer.weight.abs().log()
    assert log_w.mean().item() == pytest.approx(-3.0, abs=0.02)
    assert log_w.std().item() == pytest.approx(0.7, abs=0.02)


def test_default_scale_keeps_first_layer_activity_of_order_one():
    layer = dale_(nn.Linear(256, 256))
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
        if isinstance(layer, nn.Linear):
            spreads.append(x.std(0).mean().item())  # variation across inputs, per unit
    assert len(spreads) == 9
    assert all(0.1 < s < 10 for s in spreads), spreads
    logits = x
    # different inputs still give different outputs (no collapse onto one vector)
    assert logits.std(0).mean() > 0.1 * logits.abs().mean()


def test_any_update_of_the_original_keeps_dale_law():
    layer = dale_(nn.Linear(20, 10))
    signs = torch.sign(layer.weight).clone()
    with torch.no_grad():
        theta = layer.parametrizations.weight.original
        theta.add_(torch.randn_like(theta) * 5)
    assert torch.equal(torch.sign(layer.weight), signs)


def test_plain_parametrization_starts_identical_but_is_free():
    exp = dale_(nn.Linear(6, 4), parametrization="exp", generator=gen(3))
    plain = dale_(nn.Linear(6, 4), parametrization="plain", generator=gen(3))
    assert not parametrize.is_parametrized(plain)
    assert isinstance(plain.weight, nn.Parameter)
    assert torch.equal(exp.weight, plain.weight)
    with torch.no_grad():
        plain.weight.mul_(-1)
    assert torch.equal(torch.sign(plain.weight), -torch.sign(exp.weight))


def test_chain_rule_method_is_the_exact_vector_jacobian_product():
    layer = dale_(nn.Conv2d(3, 4, 3).double())
    theta = layer.parametrizations.weight.original
    g = torch.randn_like(theta)
    _, vjp = torch.func.vjp(layer.parametrizations.weight[0], theta.detach())
    (expected,) = vjp(g)
    assert torch.allclose(layer.parametrizations.weight[0].weight_grad_to_original(theta, g),
                          expected, rtol=1e-12, atol=0)  # fmt: skip
    accumulate_weight_grad(layer, g)
    assert torch.allclose(theta.grad, g * layer.weight, rtol=1e-12, atol=0)


class _Square(nn.Module):
    def forward(self, w):
        return w * w.abs()

    def weight_grad_to_original(self, original, grad_weight):
        return grad_weight * 2 * original.abs()


def test_stacked_parametrisations_chain_their_local_rules_exactly():
    layer = dale_(nn.Linear(4, 3).double(), generator=gen())
    parametrize.register_parametrization(layer, "weight", _Square())  # on top of DaleExp
    theta = weight_param(layer)
    g = torch.randn(3, 4, dtype=torch.float64)
    (layer.weight * g).sum().backward()  # autograd: the exact vector-Jacobian product
    expected, theta.grad = theta.grad.clone(), None
    accumulate_weight_grad(layer, g)
    torch.testing.assert_close(theta.grad, expected, rtol=1e-12, atol=0)


def test_assigning_a_weight_goes_through_right_inverse():
    layer = dale_(nn.Linear(5, 3).double(), generator=gen())
    target = layer.weight.detach() * 2
    layer.weight = target
    assert torch.allclose(layer.weight, target, rtol=1e-12)
    assert torch.allclose(layer.parametrizations.weight.original, target.abs().log())
    with pytest.raises(ValueError, match="opposite sign of their presynaptic unit"):
        layer.weight = -target


def test_dale_applies_to_the_chosen_layers_of_any_model_and_returns_it():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 16),
                          nn.ReLU(), nn.Linear(16, 10))  # fmt: skip
    assert dale_(model, 0.25, layers=["3", "5"], generator=gen()) is model
    assert [parametrize.is_parametrized(model[i]) for i in (0, 3, 5)] == [False, True, True]
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    copied = copy.deepcopy(model)  # parametrised modules deep-copy (not pickle): as trainers do
    assert torch.equal(copied[3].weight, model[3].weight)
    with pytest.raises(ValueError, match=r"layers=\['head'\] is invalid: it matches no"):
        dale_(model, layers=["head"])
    with pytest.raises(ValueError, match="'3' already has a parametrised weight"):
        dale_(model)
    with pytest.raises(ValueError, match="groups=2"):
        dale_(nn.Conv2d(4, 4, 3, groups=2))


def test_same_generator_same_draws_as_the_0_1_0_classes():
    """``DaleLinear`` / ``DaleConv2d`` survive as deprecated factories drawing the same numbers."""
    with pytest.warns(DeprecationWarning, match=r"DaleLinear is deprecated.*dale_"):
        old = DaleLinear(12, 7, generator=gen(4))
    new = dale_(nn.Linear(12, 7), generator=gen(4))
    assert type(old).__mro__[1] is nn.Linear
    for a, b in zip(old.state_dict().values(), new.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.warns(DeprecationWarning, match="DaleConv2d is deprecated"):
        conv = DaleConv2d(3, 4, 3, parametrization="plain")
    assert isinstance(conv, nn.Conv2d) and conv.padding == (1, 1)


def _as_0_1_0(state: dict, parametrization: str) -> dict:
    """The state-dict layout of 0.1.0's DaleLinear / DaleConv2d classes."""
    old = {}
    for key, value in state.items():
        if parametrization == "exp":
            key = key.replace("parametrizations.weight.original", "log_weight")
            key = key.replace("parametrizations.weight.0.sign", "sign")
        elif key.endswith("weight"):
            key = key[: -len("weight")] + "weight_raw"
        old[key] = value
    return old


@pytest.mark.parametrize("parametrization", ["exp", "plain"])
def test_a_0_1_0_state_dict_loads_into_the_parametrised_model(parametrization):
    saved = BioMLP(hidden_sizes=(8,), seed=1, parametrization=parametrization)
    old = _as_0_1_0(saved.state_dict(), parametrization)
    if parametrization == "plain":
        old.update({f"layers.{i}.sign": torch.ones(n) for i, n in ((0, 64), (2, 8))})
    assert any("log_weight" in k or "weight_raw" in k for k in old)
    model = BioMLP(hidden_sizes=(8,), seed=2, parametrization=parametrization)
    with pytest.warns(UserWarning, match="0.1.0.*optimizer"):
        assert not model.load_state_dict(old).missing_keys
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(model(x), saved(x))


def test_a_0_1_0_state_dict_of_the_other_parametrisation_says_how_to_load_it():
    old = _as_0_1_0(BioMLP(hidden_sizes=(8,), seed=1).state_dict(), "exp")
    with pytest.raises(RuntimeError, match="build the model with parametrization='exp'"):
        BioMLP(hidden_sizes=(8,), parametrization="plain").load_state_dict(old)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"inhibitory_fraction": 1.0}, "inhibitory_fraction"),
        ({"inhibitory_fraction": -0.1}, "inhibitory_fraction"),
        ({"parametrization": "softplus"}, "parametrization"),
        ({"init_sigma": 0.0}, "init_sigma"),
        ({"init_mu": float("nan")}, "init_mu"),
        ({"balanced": 1}, "balanced"),
        ({"layers": "0"}, "layers"),
    ],
)
def test_bad_dale_config_names_parameter_and_value(kwargs, name):
    layer = nn.Linear(4, 4)
    before = layer.weight.detach().clone()
    with pytest.raises(ValueError, match=name) as err:
        dale_(layer, **kwargs)
    assert repr(next(iter(kwargs.values()))) in str(err.value)
    assert torch.equal(layer.weight, before) and not parametrize.is_parametrized(layer)


def test_wrong_input_shape_names_expected_and_received():
    model = BioMLP(input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\).*got \(2, 3, 5\)"):
        model(torch.rand(2, 3, 5))
    assert model(torch.rand(2, 64)).shape == (2, 10)


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
    assert sum(parametrize.is_parametrized(m, "weight") for m in mlp.modules()) == 3
    conv = BioConvNet(input_shape=(3, 16, 16), channels=(4, 8), hidden_size=8)
    assert sum(parametrize.is_parametrized(m, "weight") for m in conv.modules()) == 4
    assert conv(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    plain = BioMLP(dale=False)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert sum(type(m) is nn.Linear for m in plain.modules()) == 2
    with pytest.raises(ValueError, match="hidden_sizes"):
        BioMLP(hidden_sizes=(0,))
