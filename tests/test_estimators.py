"""Exact tests of the perturbation estimators (float64).

Each rule turns the loss change of every perturbation into a coefficient and adds
coefficient × direction into ``.grad``.  Here every coefficient is compared with the exact
directional derivative along the perturbation the forward pass applied
(``torch.func.jvp``), so scale, sign and bias of the estimate are all tested: a rule whose
coefficients were 1000× too large, of the wrong sign, paired with another direction or
offset by a constant fails (each such mutant of the rules was checked to fail here).
Models cover Dale's law (exp parametrisation, additive and multiplicative), plain and
foreign-parametrised layers, convolutions, a residual and a sequence model, and the replica
semantics of Dropout (one mask per example) and train-mode BatchNorm (each replica its own
statistics; node perturbation's pooled credit before it).  The tests use the public API:

* the estimate, and the estimate's *directions*: the rule's output is linear in its
  coefficients, so a loss function that returns designed per-replica losses (laid out as
  :meth:`~bioplausible_lightning.rules.PerturbationRule.replica_signs` says) making one
  coefficient 1 and the others 0 makes the rule write that direction's contribution;
* for node perturbation, the perturbation of each layer's output, read by a forward hook
  that runs before the rule's (it sees the clean output; the rule adds to it in place).

``test_estimate_of_a_linear_loss_is_unbiased`` checks the other half of "scale": that the
directions have identity second moment, so the expected estimate is the gradient.  Weight
perturbation's parts are also tested on their own and over every combination of its
settings (structure and rank × estimator × mode × noise, one process and seed-shared).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp
from torch.nn.utils import parametrize

from bioplausible_lightning import BioConvNet, BioMLP, NodePerturbation, WeightPerturbation, dale_
from bioplausible_lightning.losses import cross_entropy
from bioplausible_lightning.rules.base import ESTIMATORS
from bioplausible_lightning.rules.layers import is_exp_dale, weight_param
from bioplausible_lightning.rules.weight import Dense, LowRank

#: small enough that a finite difference equals the derivative to ~1e-9 (antithetic: error
#: O(σ²)) or ~1e-7 (forward: O(σ)) in float64; TOL is what the tests allow, relative to the
#: largest coefficient (measured errors are 10-100x below it)
SIGMA = {"antithetic": 1e-6, "forward": 1e-8}
TOL = {"antithetic": 2e-8, "forward": 3e-6}
GRAD_SCALE = 0.5  # not 1: the scale path is part of what is tested


class Cube(nn.Module):
    """A parametrisation that is not Dale's: ``W = θ³``, with its local chain rule."""

    def forward(self, theta: Tensor) -> Tensor:
        return theta**3

    def right_inverse(self, weight: Tensor) -> Tensor:
        return weight.sign() * weight.abs().pow(1 / 3)

    def weight_grad_to_original(self, original: Tensor, grad_weight: Tensor) -> Tensor:
        return grad_weight * 3 * original**2


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 6)
        self.branch = nn.Linear(6, 6)
        self.out = nn.Linear(6, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x.flatten(1)))
        return self.out(h + torch.tanh(self.branch(h)))


def _torch_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10))


def _cube_mlp() -> nn.Module:
    model = _torch_mlp()
    parametrize.register_parametrization(model[1], "weight", Cube())
    return model


MODELS = {
    "dale_mlp": lambda: BioMLP(hidden_sizes=(6,), seed=0),
    "dale_conv": lambda: BioConvNet(input_shape=(1, 8, 8), channels=(2,), hidden_size=6, seed=0),
    "torch_mlp": _torch_mlp,
    "torch_conv": lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(),
                                        nn.Linear(128, 10)),  # fmt: skip
    # padded as the layer pads (reflect), not with zeros: the update must see the same patches
    "reflect_conv": lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),
                                          nn.Tanh(), nn.Flatten(), nn.Linear(128, 10)),  # fmt: skip
    "residual": _Residual,
    # nn.Linear on (B, 8, 8): features last, a sequence of 8 per example
    "sequence": lambda: nn.Sequential(nn.Flatten(1, 2), nn.Linear(8, 5), nn.Tanh(),
                                      nn.Flatten(), nn.Linear(40, 10)),  # fmt: skip
    "cube_mlp": _cube_mlp,  # a foreign parametrisation with weight_grad_to_original
    # the replicas of an example share one dropout mask: the one a plain forward draws
    "dropout": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Dropout(0.5),
                                     nn.Linear(6, 10)),  # fmt: skip
    # each replica is normalised with its own batch statistics: a plain forward's
    "batchnorm": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.BatchNorm1d(6),
                                       nn.Tanh(), nn.Linear(6, 10)),  # fmt: skip
}
#: node perturbation credits layers before a train-mode BatchNorm with the batch's summed
#: loss change (the examples are coupled), the others per example
POOLED = {"batchnorm": {"1"}}
MASK_SEED = 3  # the global RNG state every forward (the rule's and the references') starts at


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().double()


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run many tiny float64 ops, which one thread does fastest; on a loaded
    2-core machine a second OpenMP thread makes each of them ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def batch(digits_batch):
    x, y = digits_batch
    return x[:5].double(), y[:5]


# -- helpers ---------------------------------------------------------------------------------


def _flat_grad(model: nn.Module) -> Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in model.parameters()])  # fmt: skip


def _split(model: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    out, start = {}, 0
    for name, p in model.named_parameters():
        out[name] = flat[start : start + p.numel()].view_as(p)
        start += p.numel()
    return out


def _state(rule) -> dict:
    """The rule's generator state now, to replay the same perturbations."""
    rule.generator(torch.device("cpu"))
    return rule.state_dict()


def _estimate(rule, model, x, y, state, loss_fn=cross_entropy) -> Tensor:
    """The estimate the rule writes into ``.grad`` from the rule state ``state``."""
    rule.load_state_dict(copy.deepcopy(state))
    model.zero_grad(set_to_none=True)
    torch.manual_seed(MASK_SEED)
    assert rule.estimate(model, loss_fn, x, y, grad_scale=GRAD_SCALE).finite
    return _flat_grad(model)


def _unit_coefficient_loss(rule, batch: int, block: int, k: int, example: int | None = None):
    """A loss function that makes the coefficient of direction ``k`` (of ``example``, or the
    batch mean) in replica block ``block`` exactly 1 and every other coefficient 0."""
    direction, sign = rule.replica_signs(torch.device("cpu"), torch.float64)
    n = rule.replicas_per_block

    def loss(logits: Tensor, targets: Tensor) -> Tensor:
        losses = torch.zeros(logits.shape[0] // batch, batch, dtype=torch.float64)
        values = rule.sigma * sign * (direction == k)  # (L+ − L−)/2σ = 1, (L_k − L_0)/σ = 1
        columns = slice(None) if example is None else slice(example, example + 1)
        losses[block * n : (block + 1) * n, columns] = values[:, None]
        return losses.flatten()

    return loss


def _jacobian_diagonal(module: nn.Module) -> Tensor:
    """dW/dθ of an elementwise weight parametrisation, by jvp along ones."""

    def weight_of(theta: Tensor) -> Tensor:
        for p in module.parametrizations.weight:
            theta = p(theta)
        return theta

    theta = weight_param(module).detach()
    return jvp(weight_of, (theta,), (torch.ones_like(theta),))[1]


def _reference(model: nn.Module) -> nn.Module:
    """A copy to differentiate with torch.func: BatchNorm uses batch statistics without
    updating running ones (an in-place update is not allowed inside a transform).
    Parametrisations stay: ``remove_parametrizations`` on a deep copy would also remove the
    original's (the copies share the injected class)."""
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None
    return reference


def _mean_loss_jvp(reference: nn.Module, x: Tensor, y: Tensor, tangent: dict[str, Tensor]):
    """Exact derivative of the batch-mean loss along ``tangent`` (trainable-tensor space)."""
    params = {n: p.detach() for n, p in reference.named_parameters()}
    buffers = dict(reference.named_buffers())

    def mean_loss(p: dict[str, Tensor]) -> Tensor:
        torch.manual_seed(MASK_SEED)
        return cross_entropy(functional_call(reference, (p, buffers), (x,)), y).mean()

    return jvp(mean_loss, (params,), (tangent,))[1]


def _perturbation_tangent(model: nn.Module, grad: Tensor, multiplicative: bool):
    """The perturbation of the trainable tensors behind one direction's contribution ``grad``.

    For a parametrised weight ``W(θ)`` (elementwise, ``J = dW/dθ``) the rule perturbs ``W``
    by ``P`` — to first order ``θ`` by ``P / J`` — and writes ``c · J P`` through the chain
    rule, so the tangent of ``θ`` is ``grad / J²``; in multiplicative mode it perturbs and
    writes ``θ`` itself, so the tangent is ``grad``.
    """
    tangent = _split(model, grad)
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight") and not (
            multiplicative and is_exp_dale(module)
        ):
            key = (f"{name}." if name else "") + "parametrizations.weight.original"
            tangent[key] = tangent[key] / _jacobian_diagonal(module) ** 2
    return tangent


def _assert_coefficients_exact(directions: Tensor, estimate: Tensor, exact: Tensor, tol: float):
    """The estimate is Σ_j c_j · directions[:, j]; every c_j must equal exact[j]."""
    coeff = torch.linalg.lstsq(directions, estimate[:, None]).solution.squeeze(1)
    residual = (directions @ coeff - estimate).norm() / estimate.norm()
    assert residual < tol, f"the estimate is not a combination of its directions ({residual})"
    scale = exact.abs().max()
    assert exact.abs().min() > 1e-6 * scale  # non-degenerate directions
    error = (coeff - exact).abs().max() / scale
    assert error < tol, f"coefficients {coeff.tolist()} vs exact {exact.tolist()}"


# -- weight perturbation -----------------------------------------------------------------------

WEIGHT_CASES = [
    (name, estimator, structure, mode, noise)
    for name in ("dale_mlp", "dale_conv")
    for estimator in ("antithetic", "forward")
    for structure in ("lowrank", "dense")
    for mode in ("additive", "multiplicative")
    for noise in ("gaussian", "rademacher")
] + [
    (name, estimator, structure, "additive", noise)
    for name in ("torch_mlp", "torch_conv", "residual", "sequence", "cube_mlp", "dropout",
                 "batchnorm")
    for estimator, structure, noise in [("antithetic", "lowrank", "gaussian"),
                                        ("forward", "dense", "rademacher")]
]  # fmt: skip


def _assert_weight_coefficients_exact(rule, model, x, y, k, mode, estimator):
    """Each of the rule's ``k`` per-direction coefficients equals the exact directional
    derivative (``torch.func.jvp``) along the direction it drew."""
    state = _state(rule)
    estimate = _estimate(rule, model, x, y, state)
    directions = torch.stack(
        [_estimate(rule, model, x, y, state, _unit_coefficient_loss(rule, len(x), 0, j))
         for j in range(k)], dim=1,
    )  # fmt: skip
    reference = _reference(model)
    exact = torch.stack([
        _mean_loss_jvp(reference, x, y, _perturbation_tangent(
            model, directions[:, j] * k / GRAD_SCALE, mode == "multiplicative"))
        for j in range(k)
    ])  # fmt: skip
    _assert_coefficients_exact(directions, estimate, exact, TOL[estimator])


@pytest.mark.parametrize("name, estimator, structure, mode, noise", WEIGHT_CASES)
def test_weight_perturbation_coefficients_are_exact_directional_derivatives(
    name, estimator, structure, mode, noise, batch
):
    x, y = batch
    model = _model(name)
    k = 3
    rule = WeightPerturbation(sigma=SIGMA[estimator], num_directions=k, estimator=estimator,
                              structure=structure, rank=2, mode=mode, noise=noise,
                              seed=1)  # fmt: skip
    _assert_weight_coefficients_exact(rule, model, x, y, k, mode, estimator)


@pytest.mark.parametrize("rule_cls", [NodePerturbation, WeightPerturbation])
def test_replicating_at_the_first_target_keeps_the_estimate(rule_cls, batch):
    x, y = batch
    grads = []
    for replicate_at in ("input", "first_target"):
        model = _model("dale_mlp")
        rule = rule_cls(sigma=1e-5, num_directions=2, seed=1, replicate_at=replicate_at)
        grads.append(_estimate(rule, model, x, y, _state(rule)))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


# -- node perturbation -------------------------------------------------------------------------


def _output_perturbations(layers):
    """Forward hooks that record each layer's output before and after the rule perturbs it."""
    records: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def hook(module, args, output):
        records[module] = (output.clone(), output)  # the rule adds to ``output`` in place

    return records, [m.register_forward_hook(hook) for _, m in layers]


def _clean_inputs(model, layers, x) -> dict[nn.Module, Tensor]:
    inputs: dict[nn.Module, Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0].detach()))
               for _, m in layers]  # fmt: skip
    with torch.no_grad():
        torch.manual_seed(MASK_SEED)
        model(x)
    for h in handles:
        h.remove()
    return inputs


def _per_sample_loss_jvp(reference, x, y, tangents: dict[str, Tensor]) -> Tensor:
    """Exact derivative of every example's loss when each named layer's output moves along
    its tangent ``(B, *out)`` (all at once: the total first-order change)."""
    model = reference
    modules = [reference.get_submodule(name) for name in tangents]

    def losses(*offsets: Tensor) -> Tensor:
        handles = [m.register_forward_hook(lambda mod, a, out, e=e: out + e)
                   for m, e in zip(modules, offsets)]  # fmt: skip
        try:
            torch.manual_seed(MASK_SEED)
            return cross_entropy(model(x), y)
        finally:
            for h in handles:
                h.remove()

    return jvp(losses, tuple(map(torch.zeros_like, tangents.values())), tuple(tangents.values()))[1]


def _layer_vjp(model: nn.Module, module: nn.Module, x: Tensor, cotangent: Tensor) -> Tensor:
    """Exact ``d<cotangent, module(x)>/dθ`` for every parameter of the model (flat), i.e. the
    layer-local product of an output credit with the layer's input, through any
    parametrisation."""
    params = {n: p.detach() for n, p in module.named_parameters()}
    _, pullback = vjp(lambda p: functional_call(module, p, (x,)), params)
    (grads,) = pullback(cotangent)
    by_id = {id(p): grads[n] for n, p in module.named_parameters()}
    return torch.cat([by_id.get(id(p), torch.zeros_like(p)).flatten() for p in model.parameters()])


NODE_CASES = [
    (name, estimator, noise, layerwise)
    for name in MODELS
    for estimator in ("antithetic", "forward")
    for noise in ("gaussian", "rademacher")
    for layerwise in (True, False)
    if name in ("dale_mlp", "dale_conv") or noise == "gaussian"
]


@pytest.mark.parametrize("name, estimator, noise, layerwise", NODE_CASES)
def test_node_perturbation_coefficients_are_exact_directional_derivatives(
    name, estimator, noise, layerwise, batch
):
    x, y = batch
    b = len(x)
    model = _model(name)
    k = 2
    rule = NodePerturbation(sigma=SIGMA[estimator], num_directions=k, estimator=estimator,
                            noise=noise, layerwise=layerwise, seed=1)  # fmt: skip
    layers = rule.targets(model)
    records, handles = _output_perturbations(layers)
    try:
        estimate = _estimate(rule, model, x, y, _state(rule))
    finally:
        for h in handles:
            h.remove()
    # each layer's perturbation ξ_k (B, *out), from the first (+) replica of direction k
    direction, sign = rule.replica_signs(torch.device("cpu"), torch.float64)
    n = rule.replicas_per_block
    blocks = [[i] for i in range(len(layers))] if layerwise else [list(range(len(layers)))]
    inputs = _clean_inputs(model, layers, x)
    reference = _reference(model)
    pooled = POOLED.get(name, set())
    columns, exact = [], []

    def direction_of(xi: dict[str, Tensor], examples: range) -> Tensor:
        """The exact update for a unit coefficient of ``examples`` (layer-local vjps)."""
        m = dict(layers)
        return sum(_layer_vjp(model, m[n], inputs[m[n]][e : e + 1], t[e : e + 1])
                   for n, t in xi.items() for e in examples) * GRAD_SCALE / (k * b)  # fmt: skip

    for block, members in enumerate(blocks):
        for j in range(k):
            r = block * n + int(torch.nonzero((direction == j) & (sign > 0))[0])
            xi = {}
            for i in members:
                clean, perturbed = records[layers[i][1]]
                xi[layers[i][0]] = (perturbed - clean).view(-1, b, *clean.shape[1:])[r] / rule.sigma
            per_example = _per_sample_loss_jvp(reference, x, y, xi)  # (B,), all of block's ξ
            local = {n_: t for n_, t in xi.items() if n_ not in pooled}
            for e in range(b if local else 0):  # example e's credit: its own loss change
                columns.append(direction_of(local, range(e, e + 1)))
                exact.append(per_example[e])
            shared = {n_: t for n_, t in xi.items() if n_ in pooled}
            if shared:  # before BatchNorm: the whole batch's loss change, every example
                columns.append(direction_of(shared, range(b)))
                exact.append(per_example.sum())
    directions = torch.stack(columns, dim=1)
    _assert_coefficients_exact(directions, estimate, torch.stack(exact), TOL[estimator])


# -- unbiasedness: the directions' second moment is the identity --------------------------------


def _linear_problem(dale: bool):
    torch.manual_seed(0)
    layer = nn.Linear(4, 3).double()
    if dale:
        dale_(layer, 0.5, generator=torch.Generator().manual_seed(0))
    x, a = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)

    def loss(logits: Tensor, targets: Tensor) -> Tensor:  # linear in the (effective) weight
        return logits @ a

    params = {n: p.detach() for n, p in layer.named_parameters()}
    grads = torch.func.grad(lambda p: loss(functional_call(layer, p, (x,)), None).mean())(params)
    exact = torch.cat([grads[n].flatten() for n, _ in layer.named_parameters()])
    return layer, x, torch.zeros(3, dtype=torch.long), loss, exact


UNBIASED_RULES = {
    f"weight-{structure}-{noise}-{mode}": lambda s=structure, n=noise, m=mode: WeightPerturbation(
        sigma=0.1, num_directions=1024, structure=s, rank=3, mode=m, noise=n, seed=2)
    for structure in ("lowrank", "dense")
    for noise in ("gaussian", "rademacher")
    for mode in ("additive", "multiplicative")
} | {
    f"node-{noise}-{estimator}": lambda n=noise, e=estimator: NodePerturbation(
        sigma=0.1, num_directions=1024, noise=n, estimator=e, seed=2)
    for noise in ("gaussian", "rademacher")
    for estimator in ("antithetic", "forward")
}  # fmt: skip


@pytest.mark.parametrize(
    "rule_name, dale",
    [(name, dale) for name in sorted(UNBIASED_RULES) for dale in (False, True)
     if dale or "multiplicative" not in name],  # multiplicative = additive on plain layers
)  # fmt: skip
def test_estimate_of_a_linear_loss_is_unbiased(rule_name, dale):
    """A linear loss makes every coefficient exact, so the estimate is (1/K) Σ z zᵀ g: its
    deviation from g is sampling noise (~ sqrt(params / K) ≈ 0.12 here), not a bias; a
    direction scaled by 1.5 in both the forward and the update (which the exact coefficient
    tests cannot see) would be off by 125 %."""
    layer, x, y, loss, exact = _linear_problem(dale)
    rule = UNBIASED_RULES[rule_name]()
    assert rule.estimate(layer, loss, x, y).finite
    estimate = _flat_grad(layer)
    assert (estimate - exact).norm() < 0.35 * exact.norm()


# -- weight perturbation's parts, over every combination of its settings --------------------


def _mixed() -> nn.Module:
    """A plain conv with bias, an exp-Dale linear layer with bias, a plain bias-free readout:
    additive, multiplicative and in-place updates meet in one model."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(128, 6), nn.Tanh(), nn.Linear(6, 10, bias=False))  # fmt: skip
    dale_(model, 0.5, layers=["3"], generator=torch.Generator().manual_seed(0))
    return model


MODELS["mixed"] = _mixed

ALL_WEIGHT_SETTINGS = [
    (estimator, structure, rank, mode, noise)
    for estimator in ("antithetic", "forward")
    for structure, rank in (("lowrank", 1), ("lowrank", 3), ("dense", 1))
    for mode in ("additive", "multiplicative")
    for noise in ("gaussian", "rademacher")
]


@pytest.mark.parametrize("estimator, structure, rank, mode, noise", ALL_WEIGHT_SETTINGS)
def test_every_weight_perturbation_setting_is_exact_on_a_mixed_model(
    estimator, structure, rank, mode, noise, batch
):
    x, y = batch
    model = _model("mixed")
    assert is_exp_dale(model[3]) and not is_exp_dale(model[0])
    k = 2
    rule = WeightPerturbation(sigma=SIGMA[estimator], num_directions=k, estimator=estimator,
                              structure=structure, rank=rank, mode=mode, noise=noise,
                              seed=4)  # fmt: skip
    _assert_weight_coefficients_exact(rule, model, x, y, k, mode, estimator)


@pytest.mark.parametrize("estimator, structure, rank, mode, noise", ALL_WEIGHT_SETTINGS)
def test_seed_shared_processes_write_what_one_process_writes(
    estimator, structure, rank, mode, noise, batch
):
    """``distributed="shared_seed"``: each process draws one process's directions and writes
    the update once the coefficients are averaged (here: over one process's worth)."""
    from bioplausible_lightning.distributed import Reducer

    x, y = batch
    grads = []
    for rank_id, world in ((0, 1), (1, 2)):
        model = _model("mixed")
        rule = WeightPerturbation(sigma=1e-3, num_directions=2, estimator=estimator,
                                  structure=structure, rank=rank, mode=mode, noise=noise,
                                  seed=4)  # fmt: skip
        rule.set_distributed(rank_id, world)
        assert rule.estimate(model, cross_entropy, x, y, grad_scale=GRAD_SCALE).finite
        if world > 1:
            assert all(p.grad is None for p in model.parameters())  # waits for the average
            reducer = Reducer(1)
            rule.synchronize(reducer)
            reducer.run()
        grads.append(_flat_grad(model))
    assert torch.equal(grads[0], grads[1])


STRUCTURES = {"lowrank-1": lambda: LowRank(1), "lowrank-3": lambda: LowRank(3), "dense": Dense}
LAYERS = {
    "linear": lambda: nn.Linear(5, 4),
    "sequence": lambda: nn.Linear(5, 4),  # features last, a sequence of 3 per example
    "conv": lambda: nn.Conv2d(2, 3, 3, padding=1, stride=2),
    "conv_circular": lambda: nn.Conv2d(2, 3, 3, padding=1, stride=2, padding_mode="circular"),
    "conv_same": lambda: nn.Conv2d(2, 3, 4, padding="same"),
}
INPUTS = {"linear": (4, 5), "sequence": (4, 3, 5), "conv": (4, 2, 6, 6),
          "conv_circular": (4, 2, 6, 6), "conv_same": (4, 2, 6, 6)}  # fmt: skip


@pytest.mark.parametrize("structure_name", sorted(STRUCTURES))
@pytest.mark.parametrize("layer_name", sorted(LAYERS))
@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_a_structures_output_change_and_update_are_its_directions(
    structure_name, layer_name, noise
):
    """The batched output change is the layer's exact derivative along each replica's
    ``±P`` (jvp), and the update is ``Σ_k c_k P_k``, with ``P_k`` what :meth:`direction`
    draws (a dense structure's again from a replayed generator)."""
    torch.manual_seed(0)
    structure, module = STRUCTURES[structure_name](), LAYERS[layer_name]().double()
    weight, k = module.weight, 3
    direction = torch.tensor([0, 0, 1, 1, 2, 2])
    sign = torch.tensor([1.0, -1.0] * 3, dtype=torch.float64)
    xs = torch.randn(len(direction), *INPUTS[layer_name], dtype=torch.float64)

    def draws() -> tuple[dict[str, Tensor], list[Tensor]]:
        gen = torch.Generator().manual_seed(7)
        factors = structure.draw(weight.shape, k, noise, gen, weight)
        return factors, [structure.direction(factors, j, weight, noise, gen) for j in range(k)]

    factors, ps = draws()
    assert all(p.shape == weight.shape for p in ps)
    delta = structure.output_delta(module, xs, factors, direction, sign)
    if structure.regenerates:  # no batched form: the rule applies each drawn direction
        assert delta is None
    else:
        for r in range(len(direction)):
            tangent = sign[r] * ps[int(direction[r])]

            def layer(w: Tensor, x: Tensor = xs[r]) -> Tensor:
                return functional_call(module, {"weight": w, "bias": module.bias}, (x,))

            exact = jvp(layer, (weight.detach(),), (tangent,))[1]
            torch.testing.assert_close(delta[r], exact, rtol=1e-12, atol=1e-12)
    coeff = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(7)
    replayed = structure.draw(weight.shape, k, noise, gen, weight)  # the generator's order
    update = structure.update(replayed if structure.regenerates else factors, coeff, weight,
                              noise, gen)  # fmt: skip
    expected = sum(c * p for c, p in zip(coeff, ps))
    torch.testing.assert_close(update, expected, rtol=1e-12, atol=1e-12)
    if structure.accumulates_in_place:
        into = torch.ones_like(weight)
        assert structure.update(factors, coeff, weight, noise, None, into=into) is into
        torch.testing.assert_close(into, 1 + expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_an_estimators_coefficients_are_exact_for_a_linear_loss(name):
    """Replica ``r`` carries ``sign_r · z_{direction_r}``; a loss linear in it, ``L0 + σ s z·g``,
    gives every direction's exact derivative ``z_k·g``, whatever the layout."""
    estimator, k, sigma = ESTIMATORS[name], 3, 0.25
    direction, sign = estimator.replica_signs(k, torch.device("cpu"), torch.float64)
    assert len(direction) == len(sign) == estimator.replicas(k)
    assert sorted(set(direction[sign != 0].tolist())) == list(range(k))
    slopes = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64)  # z_k·g
    losses = 1.0 + sigma * sign * slopes[direction]  # (R,)
    torch.testing.assert_close(estimator.coefficients(losses, sigma), slopes)
    torch.testing.assert_close(estimator.reward_prediction_error(losses), sigma * slopes)
    loss, _ = estimator.summarize(losses[:, None], torch.zeros(len(losses), 1, 2))
    torch.testing.assert_close(loss, torch.tensor(1.0, dtype=torch.float64))  # the clean loss
    assert estimator.direction_inputs(torch.zeros(len(losses), 2)).shape == (k, 2)
