import warnings

import pytest
import torch
from _helpers import trap_autograd
from torch import nn
from torch.nn.utils import parametrize

from bioplausible_lightning import BioMLP, NodePerturbation, WeightPerturbation
from bioplausible_lightning.losses import cross_entropy
from bioplausible_lightning.rules.layers import weight_param

# The exactness of every estimate (coefficients, scale, directions) is tested in float64
# against torch.func.jvp in test_estimators.py; these tests cover the rules' contracts.
MODELS = {
    "dale_mlp": lambda: BioMLP(hidden_sizes=(8,), seed=0),
    "torch_mlp": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)),
}


@pytest.mark.parametrize(
    "rule", [NodePerturbation(num_directions=2), WeightPerturbation(structure="dense")]
)
def test_rules_never_call_backward(rule, digits_batch, monkeypatch):
    trap_autograd(monkeypatch)
    model = BioMLP(hidden_sizes=(16,), seed=0)
    rule.estimate(model, cross_entropy, *digits_batch)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("rule_cls", [NodePerturbation, WeightPerturbation])
def test_estimate_leaves_weights_bit_identical(rule_cls, digits_batch):
    model = BioMLP(hidden_sizes=(16,), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rule_cls().estimate(model, cross_entropy, *digits_batch)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("rule_cls", [NodePerturbation, WeightPerturbation])
def test_same_seed_same_estimate_and_state_roundtrip(rule_cls, digits_batch):
    def grads_after(rule):
        model = BioMLP(hidden_sizes=(16,), seed=0)
        rule.estimate(model, cross_entropy, *digits_batch)
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    a, b = rule_cls(seed=1), rule_cls(seed=1)
    assert torch.equal(grads_after(a), grads_after(b))
    state = a.state_dict()
    expected = grads_after(a)
    restored = rule_cls(seed=999)
    restored.load_state_dict(state)
    assert torch.equal(grads_after(restored), expected)
    assert not torch.equal(grads_after(rule_cls(seed=2)), grads_after(rule_cls(seed=1)))


@pytest.mark.parametrize("rule_cls", [NodePerturbation, WeightPerturbation])
def test_non_finite_loss_writes_no_gradient(rule_cls, digits_batch):
    model = BioMLP(hidden_sizes=(16,), seed=0)
    x, y = digits_batch
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    out = rule_cls().estimate(model, cross_entropy, x, y)
    assert not out.finite
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "rule_cls, model_factory",
    [(NodePerturbation, MODELS["dale_mlp"]), (WeightPerturbation, MODELS["dale_mlp"]),
     (WeightPerturbation, MODELS["torch_mlp"])],
)  # fmt: skip
def test_grad_accumulates_like_backward(rule_cls, model_factory, digits_batch):
    model = model_factory()
    rule_cls(seed=0).estimate(model, cross_entropy, *digits_batch)
    first = [p.grad.clone() for p in model.parameters()]
    rule_cls(seed=0).estimate(model, cross_entropy, *digits_batch)  # same perturbations again
    for p, g in zip(model.parameters(), first):
        assert torch.allclose(p.grad, 2 * g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "factory, name",
    [
        (lambda: NodePerturbation(sigma=0), "sigma"),
        (lambda: NodePerturbation(sigma=-1.0), "sigma"),
        (lambda: NodePerturbation(num_directions=0), "num_directions"),
        (lambda: NodePerturbation(estimator="central"), "estimator"),
        (lambda: WeightPerturbation(structure="sparse"), "structure"),
        (lambda: WeightPerturbation(mode="exp"), "mode"),
        (lambda: WeightPerturbation(rank=0), "rank"),
        (lambda: WeightPerturbation(noise="uniform"), "noise"),
    ],
)
def test_bad_rule_config_names_parameter(factory, name):
    with pytest.raises(ValueError, match=rf"{name}=.*(allowed|must)"):
        factory()


def test_model_without_trainable_parameters_is_rejected(digits_batch):
    model = BioMLP(hidden_sizes=(8,))
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        NodePerturbation().estimate(model, cross_entropy, *digits_batch)


def test_model_without_supported_layers_is_rejected(digits_batch):
    model = nn.Sequential(nn.Flatten(), nn.Bilinear(64, 64, 10))
    with pytest.raises(ValueError, match="no trainable layer to perturb.*Linear"):
        WeightPerturbation().targets(model)


def test_layer_selection_trains_only_matching_layers(digits_batch):
    model = BioMLP(hidden_sizes=(8,), seed=0)
    rule = NodePerturbation(layers=["layers.2"])
    with pytest.warns(UserWarning, match="will not be updated"):
        rule.estimate(model, cross_entropy, *digits_batch)
    assert model.layers[0].parametrizations.weight.original.grad is None
    assert model.layers[2].parametrizations.weight.original.grad is not None


class _Doubled(nn.Module):
    """A parametrisation that is not ours and offers no chain rule."""

    def forward(self, theta):
        return 2 * theta


@pytest.mark.parametrize("rule_cls", [NodePerturbation, WeightPerturbation])
def test_a_parametrisation_without_a_chain_rule_is_refused_not_trained_wrongly(
    rule_cls, digits_batch
):
    model = MODELS["torch_mlp"]()
    parametrize.register_parametrization(model[1], "weight", _Doubled())
    assert weight_param(model[1]) is model[1].parametrizations.weight.original  # any one
    with pytest.raises(TypeError, match=r"layer '1'.*weight_grad_to_original.*_Doubled"):
        rule_cls().estimate(model, cross_entropy, *digits_batch)
    assert all(p.grad is None for p in model.parameters())
    # leaving the layer out trains the rest
    with pytest.warns(UserWarning, match="will not be updated"):
        assert rule_cls(layers=["3"]).estimate(model, cross_entropy, *digits_batch).finite


def test_lowrank_perturbation_draws_few_random_numbers():
    """The point of the low-rank structure: O(m + n) random numbers per layer, not O(m n)."""
    rule = WeightPerturbation(num_directions=2, rank=1)
    layer = nn.Linear(300, 200)
    factors = rule._factors(layer, torch.Generator().manual_seed(0), layer.weight)
    drawn = sum(f.numel() for f in factors.values())
    assert drawn == 2 * (300 + 200 + 200)
    assert drawn < layer.weight.numel() / 40


# -- stochastic and batch-coupled modules, odd layouts, layers that do not run -----------


def test_alpha_dropout_in_train_mode_is_refused_with_the_module_name(digits_batch):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.AlphaDropout(0.2), nn.Linear(8, 10))
    with pytest.raises(ValueError, match=r"'2' \(AlphaDropout\).*eval mode"):
        NodePerturbation().estimate(model, cross_entropy, *digits_batch)


@pytest.mark.parametrize("rule", [NodePerturbation(num_directions=2), WeightPerturbation()])
def test_batchnorm_updates_running_statistics_once_per_estimate_and_warns(rule, digits_batch):
    """(That each replica is normalised with its own batch statistics, so the estimate is
    that of the model as it is, is tested exactly in test_estimators.py.)"""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 10)
    )
    running = model[2].running_mean.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert rule.estimate(model, cross_entropy, *digits_batch).finite
    messages = " ".join(str(w.message) for w in caught)
    assert "belong to no perturbed layer" in messages  # BatchNorm's own affine parameters
    if isinstance(rule, NodePerturbation):  # per-example credit cannot see the coupling
        assert "summed loss change" in messages
    # running statistics are updated once per estimate, with the batch's statistics
    assert model[2].num_batches_tracked.item() == 3
    assert not torch.equal(model[2].running_mean, running)


class _FunctionalHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(64, 10)
        self.aux = nn.Linear(64, 10)  # never called: its weight is used through F.linear

    def forward(self, x):
        return self.body(x.flatten(1)) + nn.functional.linear(x.flatten(1), self.aux.weight)


@pytest.mark.parametrize("rule_cls", [NodePerturbation, WeightPerturbation])
def test_target_layer_that_never_runs_is_named_in_the_error(rule_cls, digits_batch):
    model = _FunctionalHead()
    with pytest.raises(RuntimeError, match=r"\['aux'\] did not run.*layers="):
        rule_cls().estimate(model, cross_entropy, *digits_batch)
    assert model.body.weight.grad is None  # nothing was written
    # leaving it out works
    assert rule_cls(layers=["body"]).estimate(model, cross_entropy, *digits_batch).finite


def test_wrongly_shaped_input_error_reports_the_users_batch_shape():
    x, y = torch.rand(8, 3, 5), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"got \(8, 3, 5\)"):
        NodePerturbation().estimate(BioMLP(), cross_entropy, x, y)


@pytest.mark.parametrize(
    "factory, name",
    [
        (lambda: NodePerturbation(sigma=True), "sigma"),
        (lambda: NodePerturbation(sigma=float("inf")), "sigma"),
        (lambda: NodePerturbation(sigma=float("nan")), "sigma"),
        (lambda: NodePerturbation(layerwise="no"), "layerwise"),
        (lambda: NodePerturbation(seed="abc"), "seed"),
        (lambda: NodePerturbation(seed=0.5), "seed"),
        (lambda: NodePerturbation(seed=True), "seed"),
        (lambda: NodePerturbation(layers="fc"), "layers"),
        (lambda: WeightPerturbation(layers=[1]), "layers"),
        (lambda: WeightPerturbation(num_directions=2.0), "num_directions"),
        (lambda: WeightPerturbation(estimator=True), "estimator"),
    ],
)
def test_rule_arguments_are_type_checked_at_construction(factory, name):
    with pytest.raises(ValueError, match=rf"{name}=.* is invalid: .*(allowed|must)"):
        factory()


@pytest.mark.parametrize("rule_cls", [NodePerturbation, WeightPerturbation])
def test_empty_batch_gives_no_estimate_and_writes_no_gradient(rule_cls):
    model = MODELS["torch_mlp"]()
    x, y = torch.rand(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)
    assert not rule_cls(num_directions=2).estimate(model, cross_entropy, x, y).finite
    assert all(p.grad is None for p in model.parameters())
