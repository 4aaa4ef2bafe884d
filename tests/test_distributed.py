"""Multi-process training: 2 CPU processes (gloo) under Lightning's ``ddp``, plus pickling.

The 2-process fits run once, in one job (``tests/_ddp_cases.py``, re-launched by Lightning for
rank 1), so that process start-up is paid once; each test then checks one property of it.
"""

import copy
import pickle
from types import SimpleNamespace

import pytest
import torch
from _ddp_cases import CASES, DDP_JOB, DDPJob, ddp_job_folder, job_results, run_case
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch import nn
from torch.nn.utils import parametrize

from bioplausible_lightning import (
    BackpropModule,
    BioMLP,
    CompetitiveHebbian,
    CompositeRule,
    DigitsDataModule,
    HebbianPerturbation,
    LebesguePower,
    NodePerturbation,
    PerturbationModule,
    WeightPerturbation,
    lebesgue_,
)
from bioplausible_lightning.data import DistributedEpochSeededSampler, EpochSeededSampler
from bioplausible_lightning.distributed import Reducer, all_reduce_mean_
from bioplausible_lightning.losses import cross_entropy

# pytest-xdist: one worker runs them all (the one-process fits they share are computed once)
pytestmark = pytest.mark.xdist_group("ddp")


@pytest.fixture(scope="module")
def ddp(request, tmp_path_factory):
    """What the job of ``_ddp_cases.py`` saved: every case fitted on 2 processes under
    ``ddp``, and one ``ddp_spawn`` fit."""
    folder = ddp_job_folder(request.config)  # started by pytest-xdist's controller
    if folder is not None:
        return job_results(folder)
    job = request.config.stash.get(DDP_JOB, None)  # started by conftest.py at collection
    return (job or DDPJob(tmp_path_factory.mktemp("ddp"))).results()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same cases in one process, with the same global batch (computed when asked)."""
    root, cache = tmp_path_factory.mktemp("one"), {}

    def get(case):
        if case not in cache:
            cache[case] = run_case(case, 1, root)
        return cache[case]

    return get


# -- 2 processes under ddp -------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_every_process_holds_bit_identical_parameters_and_state_after_fit(ddp, case):
    # parameters, learning rates, the rule's state (generator, Hebbian thresholds), the
    # step-size adapter and the skip counters, gathered from both ranks
    assert ddp[case]["world_size"] == 2
    assert ddp[case]["identical"], f"{case}: the processes' models differ after fit"


@pytest.mark.parametrize("case", ["np", "bp"])
def test_two_processes_learn_the_digits_like_one_with_the_same_global_batch(
    ddp, one_process, case
):
    two, one = ddp[case]["accuracy"], one_process(case)["accuracy"]
    assert ddp[case]["global_step"] == one_process(case)["global_step"]
    assert two > 0.6, f"{case}: 2 processes reached only {two:.3f}"
    assert abs(two - one) < 0.06, f"{case}: 2 processes {two:.3f} vs 1 process {one:.3f}"


@pytest.mark.parametrize(
    "case", ["wp_shared_multiplicative", "wp_shared_dense", "wp_shared_inplace"]
)
def test_seed_shared_weight_perturbation_equals_one_process_with_the_global_batch(
    ddp, one_process, case
):
    # same directions on every rank, averaged loss differences: the global batch's estimate
    # (up to float rounding of the two half-batch means)
    two, one = ddp[case]["params"], one_process(case)["params"]
    changed = max(float((one[k] - _initial_params(case)[k]).abs().max()) for k in one)
    assert changed > 1e-3  # it trained
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-4, rtol=0)


def test_all_reduce_weight_perturbation_draws_its_own_directions_on_every_process(
    ddp, one_process
):
    two, one = ddp["wp_allreduce_additive"]["params"], one_process("wp_allreduce_additive")
    assert max(float((two[k] - one["params"][k]).abs().max()) for k in two) > 1e-2


@pytest.mark.parametrize("case", ["skip_with_adapter", "bp_skip"])
def test_a_step_non_finite_on_one_process_only_is_skipped_on_every_process(ddp, case):
    result = ddp[case]
    assert result["skipped_steps"] == 1 and result["identical"]
    assert result["global_step"] == 4  # 9 batches, one skipped, 2 per step


def test_resuming_mid_epoch_under_ddp_is_bit_identical(ddp):
    assert ddp["resume"]["bit_identical"]


def _initial_params(case):
    from _ddp_cases import build, parameters

    torch.manual_seed(0)
    return parameters(build(case)[0])


# -- strategies -----------------------------------------------------------------------


def _attach(module, strategy, world_size=2, global_rank=1):
    module._trainer = SimpleNamespace(world_size=world_size, global_rank=global_rank,
                                      strategy=strategy)  # fmt: skip


def test_sharding_strategies_are_refused_with_the_strategy_named():
    module = PerturbationModule(BioMLP(hidden_sizes=(16,), seed=0))
    _attach(module, FSDPStrategy())
    with pytest.raises(RuntimeError, match=r"strategy=FSDPStrategy with world_size=2.*'ddp'"):
        module.setup("fit")


def test_ddp_setup_tells_the_rule_its_rank_and_teardown_resets_it():
    rule = HebbianPerturbation(readout=NodePerturbation(num_directions=2))
    module = PerturbationModule(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), rule)
    _attach(module, DDPStrategy())
    module.setup("fit")
    assert (rule._rank, rule._world_size) == (1, 2)
    assert (rule.readout._rank, rule.hebbian._world_size) == (1, 2)
    module.teardown("fit")
    assert (rule._rank, rule._world_size, rule.readout._world_size) == (0, 1, 1)
    with pytest.raises(ValueError, match=r"rank=2, world_size=2 is invalid"):
        rule.set_distributed(2, 2)


# -- the rules' distributed paths, in one process ---------------------------------------


def _grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_node_perturbation_noise_is_independent_across_ranks_its_generator_is_shared(
    digits_batch,
):
    x, y = digits_batch
    grads, states = [], []
    for rank in (0, 1):
        model = BioMLP(hidden_sizes=(16,), seed=0)
        rule = NodePerturbation(num_directions=2, seed=5)
        rule.set_distributed(rank, 2)
        rule.estimate(model, cross_entropy, x, y)
        grads.append(_grads(model))
        states.append(rule.state_dict()["generator_state"])
    assert not torch.equal(grads[0][0], grads[1][0])
    assert torch.equal(states[0], states[1])  # rank 0's checkpoint resumes every rank


def test_seed_shared_weight_perturbation_writes_its_update_from_the_averaged_scalars(
    digits_batch,
):
    x, y = digits_batch
    model_one, model_ddp = BioMLP(hidden_sizes=(16,), seed=0), BioMLP(hidden_sizes=(16,), seed=0)
    WeightPerturbation(num_directions=3, seed=2).estimate(model_one, cross_entropy, x, y)
    rule = WeightPerturbation(num_directions=3, seed=2)
    rule.set_distributed(1, 2)
    out = rule.estimate(model_ddp, cross_entropy, x, y)
    assert out.finite and all(p.grad is None for p in model_ddp.parameters())  # deferred
    sent = []

    def two_identical_ranks(t, group=None):  # what all_reduce(SUM) gives with 2 equal ranks
        sent.append(t.numel() * t.element_size())
        t.mul_(2)

    reducer = Reducer(2, all_reduce=two_identical_ranks)
    rule.synchronize(reducer)
    reducer.run()
    assert sent == [3 * 8]  # 3 coefficients in float64: independent of the model's size
    assert all(torch.equal(a, b) for a, b in zip(_grads(model_ddp), _grads(model_one)))
    assert {id(p) for p in rule.synchronized_parameters(model_ddp)} == {
        id(p) for p in model_ddp.parameters() if p.requires_grad}  # fmt: skip


def test_hebbian_thresholds_are_averaged_over_processes(digits_batch):
    x, y = digits_batch
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))
    rule = CompetitiveHebbian(layers=["1"])
    rule.estimate(model, cross_entropy, x, y)
    before = rule.state_dict()["thresholds"]["1"]

    def other_rank_has_zeros(t, group=None):  # SUM with a rank whose thresholds are 0
        pass

    reducer = Reducer(2, all_reduce=other_rank_has_zeros)
    rule.synchronize(reducer)
    reducer.run()
    torch.testing.assert_close(rule.state_dict()["thresholds"]["1"], before / 2)


def test_bucketed_all_reduce_averages_in_place_in_few_large_messages():
    tensors = [torch.full((n,), float(n)) for n in (3, 5, 7, 100)]
    calls = []

    def fake(flat, group=None):
        calls.append(flat.numel())
        flat.mul_(4)  # 4 identical processes

    sent = all_reduce_mean_(tensors, 4, bucket_bytes=4 * 16, all_reduce=fake)
    assert calls == [15, 100]  # the small ones share a bucket, the large one has its own
    assert sent == 115 * 4
    assert all(torch.equal(t, torch.full_like(t, float(t.numel()))) for t in tensors)
    assert all_reduce_mean_(tensors, 1, all_reduce=fake) == 0 and len(calls) == 2


# -- the data modules under DDP -------------------------------------------------------


def test_distributed_sampler_shards_the_one_process_order_into_the_global_batches():
    full = EpochSeededSampler(11, seed=3)
    shards = [DistributedEpochSeededSampler(11, 2, rank, seed=3) for rank in (0, 1)]
    for s in [full, *shards]:
        s.set_epoch(2)
    order, parts = list(full), [list(s) for s in shards]
    assert [len(p) for p in parts] == [6, 6] and len(shards[0]) == 6
    assert set(parts[0]) | set(parts[1]) == set(range(11))
    # step i of 2 processes x batch 2 = batch i of one process x batch 4
    for i in range(2):
        assert sorted(parts[0][2 * i : 2 * i + 2] + parts[1][2 * i : 2 * i + 2]) == sorted(
            order[4 * i : 4 * i + 4])  # fmt: skip
    shards[1].resume_at(2, 4)
    assert list(shards[1]) == parts[1][4:]
    with pytest.raises(ValueError, match="rank=2 is invalid"):
        DistributedEpochSeededSampler(11, 2, 2)


def test_the_training_loader_shards_itself_under_a_multi_process_trainer():
    dm = DigitsDataModule(batch_size=16, seed=0)
    dm.setup()
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, DistributedEpochSeededSampler)  # Lightning keeps it
    assert (loader.sampler.rank, loader.sampler.num_replicas) == (1, 2)
    assert len(loader.sampler) == (len(dm.train_set) + 1) // 2


# -- pickling (ddp_spawn, torch.save) ----------------------------------------------------


RULES = {
    "node": lambda: NodePerturbation(num_directions=2, seed=1),
    "weight": lambda: WeightPerturbation(num_directions=2, seed=1),
    "weight_dense": lambda: WeightPerturbation(structure="dense", seed=1),
    "hebbian": lambda: CompetitiveHebbian(layers=["1", "3"]),
    "hebbian_perturbation": lambda: HebbianPerturbation(readout=NodePerturbation(seed=1)),
    "composite": lambda: CompositeRule([CompetitiveHebbian(layers=["1"]),
                                        WeightPerturbation(layers=["3"], seed=1)]),  # fmt: skip
}


@pytest.mark.parametrize("name", list(RULES))
def test_module_with_every_rule_survives_pickle_and_torch_save(name, digits_batch, tmp_path):
    x, y = digits_batch
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))
    module = PerturbationModule(model, RULES[name]())
    module.compute_gradients(x, y, 1.0)  # caches and generator in use
    torch.save(module, tmp_path / "module.pt")
    copies = [pickle.loads(pickle.dumps(module)), copy.deepcopy(module),
              torch.load(tmp_path / "module.pt", weights_only=False)]  # fmt: skip
    module.model.zero_grad()
    module.compute_gradients(x, y, 1.0)
    expected = _grads(module.model)
    for clone in copies:
        clone.model.zero_grad()
        clone.compute_gradients(x, y, 1.0)  # the copy trains its own model, not the original
        assert all(torch.equal(a, b) for a, b in zip(_grads(clone.model), expected))
        assert clone.rule.targets(clone.model)[0][1] is not module.rule.targets(module.model)[0][1]


def test_backprop_module_and_data_module_pickle():
    dm = DigitsDataModule(batch_size=8, seed=0)
    dm.setup()
    clone = pickle.loads(pickle.dumps(dm))
    first = next(iter(clone.train_dataloader()))[0]
    assert torch.equal(first, next(iter(dm.train_dataloader()))[0])
    module = pickle.loads(pickle.dumps(BackpropModule(nn.Sequential(nn.Linear(64, 10)))))
    assert isinstance(module, BackpropModule)


def _digits_output_and_state(module):
    dm = DigitsDataModule(seed=0)
    dm.setup()
    with torch.no_grad():
        return module.eval()(dm.test_set.tensors[0][:64]), module.state_dict()


@pytest.mark.parametrize("model", ["bio_mlp", "lebesgue"])
def test_module_with_a_parametrised_model_survives_pickle_and_torch_save(model, tmp_path):
    # torch refuses to pickle a module under torch.nn.utils.parametrize; the package's
    # parametrisations (Dale, Lebesgue) and the modules pickle theirs
    net = (BioMLP(seed=0) if model == "bio_mlp"
           else lebesgue_(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), p=3.0))  # fmt: skip
    module = PerturbationModule(net, WeightPerturbation(seed=1))
    torch.save(module, tmp_path / "module.pt")
    expected_out, expected_state = _digits_output_and_state(module)
    for clone in (pickle.loads(pickle.dumps(module)),
                  torch.load(tmp_path / "module.pt", weights_only=False)):  # fmt: skip
        out, state = _digits_output_and_state(clone)
        assert torch.equal(out, expected_out)
        assert state.keys() == expected_state.keys()
        assert all(torch.equal(state[k], expected_state[k]) for k in state)
        layer = next(m for m in clone.model.modules() if parametrize.is_parametrized(m))
        assert isinstance(layer, nn.Linear)
        assert parametrize.type_before_parametrizations(layer) is nn.Linear
        # still trainable by the rules, and picklable again
        assert clone.rule.targets(clone.model)
        assert torch.equal(pickle.loads(pickle.dumps(clone)).eval()(
            torch.zeros(1, 64)), clone(torch.zeros(1, 64)))  # fmt: skip


def test_a_parametrisation_registered_with_torchs_own_function_pickles_with_the_module():
    model = nn.Sequential(nn.Linear(4, 3))
    parametrize.register_parametrization(model[0], "weight", LebesguePower(3.0))
    clone = pickle.loads(pickle.dumps(PerturbationModule(model)))
    torch.testing.assert_close(clone.model[0].weight, model[0].weight, rtol=0, atol=0)


def test_ddp_spawn_trains_a_dale_model_to_bit_identical_parameters(ddp):
    # ddp_spawn pickles the module (a Dale BioMLP), the rule and the data module into 2
    # fresh processes (gloo); every rank ends with the same parameters, and the caller's
    # module holds rank 0's
    spawn = ddp["spawn"]
    processes, after, before = spawn["processes"], spawn["after"], spawn["before"]
    assert processes["world_size"] == 2 and processes["identical"]
    assert all(torch.equal(after[k], processes["params"][k]) for k in after)  # rank 0's
    assert any(not torch.equal(after[k], before[k]) for k in after)  # it trained
