import math
import warnings

import pytest
import torch
from _helpers import trap_autograd
from torch import nn

from bioplausible_lightning import BioConvNet, BioMLP, NodePerturbation, WeightPerturbation
from bioplausible_lightning.losses import cross_entropy


def _autograd_grad(model, x, y):
    model.zero_grad()
    cross_entropy(model(x), y).mean().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    return grads


def _averaged_estimate(rule, model, x, y, repeats):
    model.zero_grad()
    for _ in range(repeats):
        out = rule.estimate(model, cross_entropy, x, y, grad_scale=1.0 / repeats)
        assert out.finite
    return torch.cat([p.grad.flatten() for p in model.parameters()])


MODELS = {
    "dale_mlp": lambda: BioMLP(hidden_sizes=(8,), seed=0),
    "torch_mlp": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)),
    "dale_conv": lambda: BioConvNet(input_shape=(1, 8, 8), channels=(2,), hidden_size=8, seed=0),
    "torch_conv": lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 10)
    ),
}


class _Residual(nn.Module):
    """A non-sequential model: the rules must find layers through hooks, not a fixed class."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(64, 8)
        self.branch = nn.Linear(8, 8)
        self.out = nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.inp(x.flatten(1)))
        return self.out(h + torch.relu(self.branch(h)))


MODELS["residual"] = _Residual


NODE_CASES = [(name, True) for name in MODELS] + [
    # perturbing all layers at once adds the other layers' noise to each layer's estimate:
    # unbiased, but it needs many more samples on the conv net (see the layerwise option)
    (name, False)
    for name in ("dale_mlp", "torch_mlp", "residual")
]


@pytest.mark.parametrize("name, layerwise", NODE_CASES)
def test_node_perturbation_points_along_true_gradient(name, layerwise, digits_batch):
    model = MODELS[name]()
    x, y = digits_batch
    rule = NodePerturbation(sigma=1e-3, num_directions=8, layerwise=layerwise)
    cos = torch.cosine_similarity(
        _averaged_estimate(rule, model, x, y, 100), _autograd_grad(model, x, y), 0
    )
    assert cos > 0.9


@pytest.mark.parametrize("name", ["dale_mlp", "torch_mlp", "dale_conv", "residual"])
@pytest.mark.parametrize(
    "structure, mode",
    [("lowrank", "additive"), ("dense", "additive"), ("lowrank", "multiplicative")],
)
def test_weight_perturbation_points_along_true_gradient(name, structure, mode, digits_batch):
    model = MODELS[name]()
    x, y = digits_batch
    rule = WeightPerturbation(sigma=1e-3, num_directions=64, structure=structure, mode=mode, rank=2)
    cos = torch.cosine_similarity(
        _averaged_estimate(rule, model, x, y, 100), _autograd_grad(model, x, y), 0
    )
    assert cos > 0.9


def test_forward_difference_estimator_is_also_aligned(digits_batch):
    model = MODELS["torch_mlp"]()
    x, y = digits_batch
    rule = NodePerturbation(sigma=1e-3, num_directions=8, estimator="forward")
    est = _averaged_estimate(rule, model, x, y, 60)
    assert torch.cosine_similarity(est, _autograd_grad(model, x, y), 0) > 0.9


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


def test_lowrank_perturbation_draws_few_random_numbers():
    """The point of the low-rank structure: O(m + n) random numbers per layer, not O(m n)."""
    rule = WeightPerturbation(num_directions=2, rank=1)
    layer = nn.Linear(300, 200)
    factors = rule._factors(layer, torch.Generator().manual_seed(0), layer.weight)
    drawn = sum(f.numel() for f in factors.values())
    assert drawn == 2 * (300 + 200 + 200)
    assert drawn < layer.weight.numel() / 40


def test_sigma_controls_perturbation_size(digits_batch):
    """A tiny sigma must give a near-exact directional derivative (finite differences converge)."""
    model = MODELS["torch_mlp"]().double()
    x, y = digits_batch[0].double(), digits_batch[1]
    rule = WeightPerturbation(sigma=1e-6, num_directions=1, structure="dense", seed=3)
    rule.estimate(model, cross_entropy, x, y)
    est = torch.cat([p.grad.flatten() for p in model.parameters()])
    true = _autograd_grad(model, x, y)
    # one direction z: est = (g·z) z, so est·g = (g·z)^2 >= 0 and est ∥ z
    assert (est @ true).item() >= 0
    assert math.isfinite(est.norm().item())


# -- stochastic and batch-coupled modules, odd layouts, layers that do not run -----------


def _masked_autograd_grad(model, x, y, mask_seed):
    torch.manual_seed(mask_seed)  # the dropout mask the rule's forward draws, too
    return _autograd_grad(model, x, y)


def _same_mask_estimate(rule, model, x, y, repeats, mask_seed):
    model.zero_grad()
    for _ in range(repeats):
        torch.manual_seed(mask_seed)
        assert rule.estimate(model, cross_entropy, x, y, grad_scale=1.0 / repeats).finite
    return torch.cat([p.grad.flatten() for p in model.parameters()])


# many directions per estimate, few estimates: the same samples at a fraction of the calls
FEW_CALL_RULES = [
    (NodePerturbation(sigma=1e-3, num_directions=64), 20),
    (WeightPerturbation(sigma=1e-3, num_directions=256, rank=2), 25),
]


@pytest.mark.parametrize("rule, repeats", FEW_CALL_RULES)
def test_dropout_replicas_share_one_mask_so_the_estimate_follows_the_gradient(
    rule, repeats, digits_batch
):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(8, 10))  # fmt: skip
    x, y = digits_batch
    # without the shared mask the cosine is about 0.05 (each replica, its own mask)
    est = _same_mask_estimate(rule, model, x, y, repeats, mask_seed=3)
    assert torch.cosine_similarity(est, _masked_autograd_grad(model, x, y, 3), 0) > 0.9


def test_alpha_dropout_in_train_mode_is_refused_with_the_module_name(digits_batch):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.AlphaDropout(0.2), nn.Linear(8, 10))
    with pytest.raises(ValueError, match=r"'2' \(AlphaDropout\).*eval mode"):
        NodePerturbation().estimate(model, cross_entropy, *digits_batch)


@pytest.mark.parametrize(
    "rule, repeats",  # pooled credit (node perturbation) is noisier: twice the samples
    [(NodePerturbation(sigma=1e-3, num_directions=64), 40),
     (WeightPerturbation(sigma=1e-3, num_directions=256, rank=2), 25)],
)  # fmt: skip
def test_batchnorm_normalises_each_replica_with_its_own_batch_statistics(
    rule, repeats, digits_batch
):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 10)
    )
    x, y = digits_batch
    before = model[1].weight  # the layer *before* BatchNorm: ~0.5 with pooled statistics
    model.zero_grad()
    cross_entropy(model(x), y).mean().backward()
    true = before.grad.flatten().clone()
    model.zero_grad()
    running = model[2].running_mean.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(repeats):
            assert rule.estimate(model, cross_entropy, x, y, grad_scale=1 / repeats).finite
    messages = " ".join(str(w.message) for w in caught)
    assert "belong to no perturbed layer" in messages  # BatchNorm's own affine parameters
    if isinstance(rule, NodePerturbation):  # per-example credit cannot see the coupling
        assert "summed loss change" in messages
    assert torch.cosine_similarity(before.grad.flatten(), true, 0) > 0.9
    # running statistics are updated once per estimate, with the batch's statistics
    assert model[2].num_batches_tracked.item() == repeats + 1
    assert not torch.equal(model[2].running_mean, running)


def test_weight_perturbation_trains_linear_bias_on_sequence_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 3, 4))
    x, y = torch.randn(16, 3, 5), torch.randint(0, 4, (16,))
    rule = WeightPerturbation(sigma=1e-3, num_directions=256, rank=2)
    est = _averaged_estimate(rule, model, x, y, 20)
    assert torch.cosine_similarity(est, _autograd_grad(model, x, y), 0) > 0.9


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
