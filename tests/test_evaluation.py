"""Robustness, few-shot, depth, representations and the one-command report."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from bioplausible_lightning.data import DigitsDataModule
from bioplausible_lightning.evaluation import (
    AttackConfig,
    EpisodeSampler,
    PreloadedDataModule,
    RobustnessCallback,
    adversarial_examples,
    class_selectivity,
    episodic_few_shot,
    evaluate_robustness,
    from_scratch_few_shot,
    mean_ci,
    nearest_neighbour_accuracy,
    nearest_prototype_accuracy,
    representation_report,
    robust_accuracy,
)
from bioplausible_lightning.evaluation._common import collect
from bioplausible_lightning.nn import BioMLP

ROOT = Path(__file__).resolve().parents[1]
FAST = AttackConfig(pgd_steps=5, square_queries=40)
ALL = ("fgsm", "pgd", "square", "transfer")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule(seed=0)
    dm.setup()
    x, y = dm.train_set.dataset.tensors
    idx = torch.as_tensor(dm.train_set.indices)
    return x[idx], y[idx], *dm.test_set.tensors


def _train_linear(x, y, seed=0, steps=200):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def linear(digits):
    return _train_linear(*digits[:2])


class Constant(nn.Module):
    """Ignores its input entirely."""

    def __init__(self, with_parameter: bool = True) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.arange(10.0)) if with_parameter else None

    def forward(self, x):
        logits = self.bias if self.bias is not None else torch.arange(10.0)
        return logits.expand(x.shape[0], 10)


# -- robustness ----------------------------------------------------------------------------
def test_every_attack_returns_accuracies_in_unit_interval(digits, linear):
    xt, yt = digits[2][:120], digits[3][:120]
    source = _train_linear(*digits[:2], seed=1, steps=50)
    res = evaluate_robustness(linear, (xt, yt), [0.0, 0.1, 0.3], ALL, FAST, source)
    assert set(res.accuracy) == set(ALL) and res.n_samples == 120
    for attack, accs in res.accuracy.items():
        assert len(accs) == 3
        assert all(0.0 <= a <= 1.0 for a in accs), attack
        assert all(a <= res.clean_accuracy + 1e-9 for a in accs)  # robust ⊆ clean-correct
        assert accs[0] == pytest.approx(res.clean_accuracy)  # ε = 0 changes nothing
        assert res.protocol[attack]


@pytest.mark.parametrize("with_parameter", [True, False])
def test_input_ignoring_model_scores_the_same_under_every_attack(digits, linear, with_parameter):
    xt, yt = digits[2][:100], digits[3][:100]
    model = Constant(with_parameter)
    res = evaluate_robustness(model, (xt, yt), [0.1, 0.5], ALL, FAST, source_model=linear)
    assert res.clean_accuracy == pytest.approx(float((yt == 9).float().mean()))
    for attack in ALL:
        assert res.accuracy[attack] == pytest.approx([res.clean_accuracy] * 2), attack


def test_linear_classifier_fgsm_accuracy_falls_with_eps(digits, linear):
    eps = [0.0, 0.05, 0.1, 0.2, 0.4]
    data = (digits[2], digits[3])
    # each ε attacked on its own: the fall comes from the attack, not from bookkeeping
    accs = evaluate_robustness(linear, data, eps, ["fgsm"], FAST, cumulative=False).accuracy
    accs = accs["fgsm"]
    assert all(b <= a + 1e-9 for a, b in zip(accs, accs[1:], strict=False))
    assert accs[-1] < 0.5 * accs[0]


def test_cumulative_sweep_is_monotone(digits, linear):
    data, eps = (digits[2][:150], digits[3][:150]), [0.3, 0.05, 0.15]
    each = evaluate_robustness(linear, data, eps, ["pgd", "square"], FAST, cumulative=False)
    cum = evaluate_robustness(linear, data, eps, ["pgd", "square"], FAST)
    for attack in ("pgd", "square"):
        a = cum.accuracy[attack]
        assert a[1] >= a[2] >= a[0]  # sorted by ε: 0.05, 0.15, 0.3
        assert a[1] == each.accuracy[attack][1]  # the smallest ε starts from the same examples


def test_attacks_leave_model_and_global_rng_untouched(digits):
    model = BioMLP((1, 8, 8), 10, (32,), sparsity=0.5, seed=0)
    model.train()
    model.layers[1].eval()  # mixed modes must come back as they were
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    x = adversarial_examples(model, digits[2][:20], digits[3][:20], "pgd", 0.1, FAST)
    evaluate_robustness(model, (digits[2][:20], digits[3][:20]), [0.1], ["square"], FAST)
    assert torch.equal(torch.rand(3), expected_next)
    assert model.training and not model.layers[1].training and model.layers[0].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert x.shape == (20, 1, 8, 8) and 0 <= x.min() and x.max() <= 1
    assert (x - digits[2][:20]).abs().max() <= 0.1 + 1e-6


def test_pgd_restarts_are_worst_case(digits, linear):
    data = (digits[2][:150], digits[3][:150])
    one = robust_accuracy(linear, data, "pgd", 0.08, AttackConfig(pgd_steps=3, pgd_restarts=1))
    three = robust_accuracy(linear, data, "pgd", 0.08, AttackConfig(pgd_steps=3, pgd_restarts=3))
    assert three <= one


def test_transfer_without_source_is_skipped_and_said(digits, linear):
    res = evaluate_robustness(linear, (digits[2][:20], digits[3][:20]), [0.1], ["transfer"], FAST)
    assert "transfer" not in res.accuracy and "skipped" in res.protocol["transfer"]


def test_autoattack_is_at_least_as_strong_as_fgsm_and_pgd(digits, linear):
    data = (digits[2][:24], digits[3][:24])
    config = AttackConfig(pgd_steps=5, autoattack_samples=12)
    res = evaluate_robustness(linear, data, [0.1], ["fgsm", "pgd", "autoattack"], config)
    assert (
        res.n_attacked == {"autoattack": 12} and "first 12 examples" in res.protocol["autoattack"]
    )
    same = evaluate_robustness(linear, (data[0][:12], data[1][:12]), [0.1], ["fgsm", "pgd"],
                               config)  # fmt: skip
    auto = res.accuracy["autoattack"][0]
    assert auto <= min(same.accuracy["fgsm"][0], same.accuracy["pgd"][0]) + 1e-9
    assert same.accuracy["pgd"][0] > 0  # the bar is not trivially zero: AutoAttack did the work
    with pytest.raises(ValueError, match="autoattack_samples=0"):
        AttackConfig(autoattack_samples=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": [1.5]}, "eps=1.5"),
        ({"eps": []}, "eps"),
        ({"attacks": ["cw"]}, "attack='cw'"),
    ],
)
def test_robustness_rejects_bad_input(digits, linear, kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate_robustness(linear, (digits[2][:10], digits[3][:10]), **kwargs)


def test_attack_config_rejects_bad_values():
    with pytest.raises(ValueError, match="pgd_steps=0"):
        AttackConfig(pgd_steps=0)
    with pytest.raises(ValueError, match="transfer_attack='square'"):
        AttackConfig(transfer_attack="square")


class _Tiny(L.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)

    def test_step(self, batch, batch_idx):
        return None


def test_robustness_callback_runs_inside_the_test_loop(tmp_path, digits, linear):
    dm = DigitsDataModule(seed=0)
    out = tmp_path / "rob.json"
    cb = RobustnessCallback(eps=[0.1], attacks=["fgsm", "pgd"], max_samples=50,
                            pgd_steps=3, output=str(out))  # fmt: skip
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[cb], accelerator="cpu")  # fmt: skip
    metrics = trainer.test(_Tiny(linear), datamodule=dm, verbose=False)[0]
    assert 0 <= metrics["robust/fgsm@0.1"] <= metrics["robust/clean"] <= 1
    assert json.loads(out.read_text())["accuracy"]["pgd"][0] == cb.result.accuracy["pgd"][0]


# -- few-shot ------------------------------------------------------------------------------
def test_protocol_a_draws_exactly_k_per_class_disjoint_from_val_and_test():
    data = PreloadedDataModule.from_datamodule(DigitsDataModule(seed=0))
    for k, seed in ((1, 0), (5, 3)):
        split = data.resplit(samples_per_class=k, seed=seed)
        split.setup()
        labels = data._labels[split.train_indices]
        assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), k))
        assert set(split.train_indices.tolist()).isdisjoint(split.val_indices.tolist())
        assert split.test_set is data._test  # the pool never contains test images


def test_episode_sampler_draws_exactly_k_and_q_per_class_disjoint():
    labels = torch.arange(8).repeat_interleave(12)
    sampler = EpisodeSampler(labels, n_way=4, k_shot=3, n_query=5, episodes=20,
                             classes=[2, 3, 5, 7], seed=1)  # fmt: skip
    episodes = list(sampler)
    assert len(episodes) == 20
    for ep in episodes:
        assert set(ep.classes.tolist()) == {2, 3, 5, 7}
        assert set(ep.support.tolist()).isdisjoint(ep.query.tolist())
        for local, cls in enumerate(ep.classes.tolist()):
            assert (labels[ep.support[ep.support_labels == local]] == cls).sum() == 3
            assert (labels[ep.query[ep.query_labels == local]] == cls).sum() == 5
    again = list(EpisodeSampler(labels, 4, 3, 5, 20, [2, 3, 5, 7], seed=1))
    assert all(torch.equal(a.support, b.support) for a, b in zip(episodes, again, strict=True))


def test_episode_sampler_rejects_impossible_requests():
    labels = torch.tensor([0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="class 0 has only 2"):
        EpisodeSampler(labels, n_way=2, k_shot=1, n_query=2)
    with pytest.raises(ValueError, match="n_way=3"):
        EpisodeSampler(labels, n_way=3, k_shot=1, n_query=1)


def test_nearest_prototype_on_separable_features():
    support = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    query = torch.tensor([[1.0, 0.5], [9.0, -1.0], [0.2, 0.0]])
    acc = nearest_prototype_accuracy(support, torch.tensor([0, 1]), query, torch.tensor([0, 1, 0]))
    assert acc == 1.0


def test_nearest_neighbour_labels_each_query_like_its_most_similar_example():
    train = (torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([3, 7, 5]))
    # cosine, not distance: [5, 0.2] is far from [1, 0] but points the same way
    test = (torch.tensor([[5.0, 0.2], [0.1, 2.0], [2.0, 2.1], [0.0, 3.0]]),
            torch.tensor([3, 7, 5, 3]))  # fmt: skip
    assert nearest_neighbour_accuracy(train, test) == pytest.approx(0.75)
    assert nearest_neighbour_accuracy(train, test, batch_size=1) == pytest.approx(0.75)


def test_episodic_few_shot_on_held_out_classes(digits, linear):
    xt, yt = digits[2], digits[3]
    held = yt >= 5
    est = episodic_few_shot(linear, (xt[held], yt[held]), classes=[5, 6, 7, 8, 9], k_shot=1,
                            n_query=5, episodes=100, layer="0")  # fmt: skip
    assert est.n == 100 and 0 <= est.mean <= 1 and est.ci > 0
    assert est.mean > 0.3  # raw pixels already beat chance (0.2)


def test_from_scratch_protocol_runs_every_k_and_seed():
    calls = []
    out = from_scratch_few_shot(lambda k, s: calls.append((k, s)) or 0.1 * k, [1, 5], [0, 1, 2])
    assert calls == [(1, 0), (1, 1), (1, 2), (5, 0), (5, 1), (5, 2)]
    assert out[5].mean == pytest.approx(0.5) and out[5].ci == pytest.approx(0.0)


def test_linear_probe_draws_k_per_class_and_ignores_feature_scale():
    from bioplausible_lightning.evaluation import linear_probe_few_shot

    centers = torch.eye(3) * 5
    labels = torch.arange(3).repeat(20)
    feats = centers[labels] + 0.1 * torch.randn(60, 3, generator=torch.Generator().manual_seed(0))
    train, test = (feats[:30], labels[:30]), (feats[30:], labels[30:])
    res = linear_probe_few_shot(train, test, shots=[1, 2], seeds=[0, 1, 2])
    assert res[1].mean == 1.0 and res[2].n == 3 and res[2].std == 0.0
    scaled = linear_probe_few_shot((1000 * train[0], train[1]), test, shots=[1], seeds=[0, 1, 2])
    assert scaled[1].values == res[1].values  # unit-norm features: one recipe for any scale
    with pytest.raises(ValueError, match="class 0 has only"):
        linear_probe_few_shot((feats[:3], labels[:3]), test, shots=[2], seeds=[0])


def test_linear_probe_on_raw_pixels_beats_chance(digits):
    from bioplausible_lightning.evaluation import linear_probe_few_shot

    res = linear_probe_few_shot(digits[:2], digits[2:], shots=[5], seeds=[0, 1])
    assert res[5].mean > 0.6 and len(res[5].values) == 2


def test_preloaded_data_module_keeps_the_declared_input_statistics():
    from bioplausible_lightning.data import PreloadedDataModule as FromData

    class Shifted(DigitsDataModule):
        input_mean, input_std = 0.3, 0.2

    assert FromData is PreloadedDataModule
    data = FromData.from_datamodule(Shifted(seed=0))
    assert (data.input_mean, data.input_std) == (0.3, 0.2)
    assert data.resplit(seed=4).input_mean == 0.3
    assert DigitsDataModule.input_mean == 0.5  # the declared default


def test_mean_ci():
    est = mean_ci([0.5, 0.6, 0.7])
    assert est.mean == pytest.approx(0.6) and est.n == 3
    assert est.ci == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-4)
    assert math.isnan(mean_ci([0.3]).ci)
    with pytest.raises(ValueError, match="values"):
        mean_ci([])


def test_class_subset_relabels_and_filters():
    data = PreloadedDataModule.from_datamodule(DigitsDataModule(seed=0))
    sub = data.resplit(classes=[7, 2])
    sub.setup()
    ys = torch.stack([sub.test_set[i][1] for i in range(len(sub.test_set))])
    assert sub.num_classes == 2 and set(ys.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="classes"):
        data.resplit(classes=[1, 1])


# -- representations -----------------------------------------------------------------------
def test_class_selectivity_extremes():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    responses = torch.stack(
        [torch.tensor([1.0, 1, 0, 0, 0, 0]), torch.ones(6), torch.zeros(6)], dim=1
    )
    sel = class_selectivity(responses, labels, 3)
    assert sel[0] == pytest.approx(1.0) and sel[1] == pytest.approx(0.0) and torch.isnan(sel[2])


def test_representation_report_per_hidden_layer(digits):
    model = BioMLP((1, 8, 8), 10, (32, 16), sparsity=0.75, seed=0)
    rep = representation_report(model, (digits[2], digits[3]))
    assert list(rep) == ["layers.1", "layers.3"]
    layer = rep["layers.1"]
    assert layer["units"] == 32 and sum(layer["units_per_class"]) <= 32
    for key in ("silent_fraction", "population_sparseness", "lifetime_sparseness",
                "task_specific_fraction", "allocation_entropy"):  # fmt: skip
        assert 0 <= layer[key] <= 1, key
    assert layer["population_sparseness"] > 0.5  # k-WTA silences 75% of units per sample


# -- the one command ---------------------------------------------------------------------
def _load_example(name: str):
    """An example script as a module; examples/ is on sys.path while it loads, as when it
    runs as a script (some import their siblings, e.g. ``cifar10_on_off``)."""
    examples = str(ROOT / "examples")
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, examples)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(examples)
    return module


def _load_compare():
    return _load_example("compare")


def test_depth_codes_reads_every_hidden_layer_of_a_trained_stack():
    depth_codes = _load_example("depth_codes")
    codes = torch.zeros(4, 8)
    codes[:, 0] = 1.0
    assert depth_codes.effective_units(codes) == pytest.approx(1 / 8)  # one unit does it all
    assert depth_codes.effective_units(torch.ones(4, 8)) == pytest.approx(1.0)
    rows = depth_codes.main(["--dataset", "digits", "--config", "examples/digits_hebbian.yaml",
                             "--depth", "2", "--width", "16", "--epochs", "1"])  # fmt: skip
    assert len(rows) == 2  # one row per hidden layer
    for row in rows:
        assert 0.2 < row["probe"] <= 1.0  # a trained layer's code beats chance (0.1)
        assert 1 <= row["winner_sets"] <= 450  # at most one set per test image (450)
        assert 0 < row["units_in_use"] <= 1


def test_readout_probe_compares_the_readout_with_an_exact_probe_of_its_input(tmp_path):
    readout_probe = _load_example("readout_probe")
    args = ["--dataset", "digits", "--config", "examples/digits.yaml", "--epochs", "3"]
    result = readout_probe.main(args)
    assert 0.3 < result["readout"] <= 1.0  # a trained learner beats chance (0.1)
    assert 0.3 < result["probe"] <= 1.0
    with pytest.raises(ValueError, match="checkpoint=.*no such file"):
        readout_probe.main([*args, "--checkpoint", str(tmp_path / "missing.ckpt")])


def test_readout_probe_in_protocol_a_trains_one_run_per_draw_and_probes_its_few_images():
    readout_probe = _load_example("readout_probe")
    args = ["--dataset", "digits", "--config", "examples/digits.yaml", "--shots", "1",
            "--draws", "0,1", "--steps", "20"]  # fmt: skip
    result = readout_probe.main(args)
    assert len(result["readouts"]) == len(result["probes"]) == 2  # one run per draw
    assert result["probe"] == pytest.approx(sum(result["probes"]) / 2)
    assert result["readouts"][0] != result["readouts"][1]  # each draw is its own run
    # a probe of 10 labelled images (one per class) beats chance (0.1) on 450 test images
    assert all(0.2 < p <= 1.0 for p in result["probes"])
    with pytest.raises(SystemExit):  # a few-shot run trains from scratch: no checkpoint
        readout_probe.main([*args, "--checkpoint", "x.ckpt"])
    with pytest.raises(SystemExit):
        readout_probe.main([*args, "--fewshot-shift", "-1"])
    shifted = readout_probe.main([*args[:-4], "--draws", "0", "--steps", "20",
                                  "--fewshot-shift", "1"])  # fmt: skip
    assert shifted["readouts"][0] != result["readouts"][0]  # the same draw, other views


def test_quick_report_writes_every_file_with_one_column_per_learner(tmp_path):
    out = tmp_path / "quick"
    # the structure of the report is what is tested: smaller budgets than --quick's own
    budgets = ["--epochs", "1", "--base-epochs", "1", "--attack-samples", "50",
               "--pgd-steps", "2", "--square-queries", "20", "--shots", "1",
               "--fewshot-steps", "20", "--fewshot-seeds", "0", "--probe-seeds", "0",
               "--episodic-shots", "1", "--episodic-metric", "cosine", "--fewshot-shift", "1",
               "--depth-width", "16", "--representation-samples", "200"]  # fmt: skip
    report = _load_compare().main(["--quick", "--out", str(out), "--threads", "1", *budgets])
    for name in ("report.json", "summary.md", "robustness.png", "fewshot.png", "depth.png",
                 "weights.png", "sparsity.png"):  # fmt: skip
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert sorted(report["files"].values()) == sorted(p.name for p in out.iterdir())
    saved = json.loads((out / "report.json").read_text())
    learners = ["node-dale", "backprop-dale", "backprop", "hebbian"]
    assert list(saved["learners"]) == learners
    for key in ("clean", "robustness", "fewshot", "fewshot_label_free", "depth",
                "representations", "weights"):  # fmt: skip
        assert key in saved, key
    for learner in learners:
        assert 0 <= saved["clean"]["accuracy"][learner] <= 1
        assert set(saved["robustness"][learner]["accuracy"]) == {"fgsm", "pgd", "square",
                                                                 "transfer"}  # fmt: skip
        assert len(saved["depth"]["accuracy"][learner]) == 2
        assert set(saved["fewshot"]["from_scratch"]["results"][learner]) == {"1"}
    # transfer: crafted on the Dale backprop model, except for that model itself
    assert {saved["robustness"][n]["source"] for n in learners if n != "backprop-dale"} == {
        "backprop-dale"
    }
    assert saved["robustness"]["backprop-dale"]["source"] == "backprop"
    # the Dale backprop learner really is a backprop module on the Dale model
    assert saved["weights"]["backprop-dale"].keys() == saved["weights"]["node-dale"].keys()
    # protocol (c): only the label-free learner, beside its two baselines
    assert set(saved["fewshot_label_free"]["results"]) == {"pixels", "hebbian",
                                                           "random (hebbian)"}  # fmt: skip
    assert saved["fewshot_label_free"]["learners"] == ["hebbian"]
    assert "goals" not in saved  # digits: issue 7's goals are MNIST goals
    summary = (out / "summary.md").read_text()
    assert "| Metric | Protocol | node-dale | backprop-dale | backprop | hebbian |" in summary
    assert "(a) from scratch" in summary and "(b) episodic" in summary and "square" in summary
    # protocol (b)'s metric reaches every learner and the raw-pixel reference alike
    episodic = saved["fewshot"]["episodic"]
    assert episodic["metric"] == "cosine" and "cosine similarity" in episodic["protocol"]
    assert "| 5-way 1-shot (b), cosine |" in summary
    data = PreloadedDataModule.from_datamodule(DigitsDataModule(seed=0))
    data.setup()
    x, y = collect(data.test_set)
    held = (x[y >= 5], y[y >= 5])
    pixels = {m: episodic_few_shot(nn.Flatten(), held, [5, 6, 7, 8, 9], 5, 1, 5, 100, "",
                                   metric=m).mean for m in ("cosine", "euclidean")}  # fmt: skip
    assert pixels["cosine"] != pixels["euclidean"]
    assert episodic["results"]["pixels"]["1"]["mean"] == pytest.approx(pixels["cosine"])
    # protocol (a) with shifted images: recorded, and the pixel look-up searches every shift
    scratch = saved["fewshot"]["from_scratch"]
    assert scratch["shift"] == 1 and "shifted at random by up to 1 pixels" in scratch["protocol"]
    assert "nearest labelled example or any shift of one in pixel space" in summary
    assert "## Few-shot protocol (c)" in summary and "| K per class | pixels |" in summary


def test_comparison_config_rejects_bad_values():
    from bioplausible_lightning.evaluation import ComparisonConfig, Learner

    with pytest.raises(ValueError, match="dataset='svhn'"):
        ComparisonConfig(dataset="svhn")
    with pytest.raises(ValueError, match="episodes=10"):
        ComparisonConfig(episodes=10)
    with pytest.raises(ValueError, match="episodic_metric='manhattan'.*cosine"):
        ComparisonConfig(episodic_metric="manhattan")
    with pytest.raises(ValueError, match="sections"):
        ComparisonConfig(sections=["robustness", "vibes"])
    twice = [Learner("a", "examples/digits.yaml"), Learner("a", "examples/digits.yaml")]
    with pytest.raises(ValueError, match="unique names"):
        ComparisonConfig(learners=twice)
    with pytest.raises(ValueError, match="reference='backprop-dale'"):
        ComparisonConfig(learners=[Learner("a", "x.yaml"), Learner("b", "y.yaml")])


@pytest.fixture(scope="module")
def digits_data():
    data = PreloadedDataModule.from_datamodule(DigitsDataModule(seed=0))
    data.setup()
    return data


@pytest.fixture(scope="module")
def default_runs():
    """Every data set's default learners, parsed once (a parse is 0.1-0.4 s; runs build fresh
    models and modules and are never changed by the tests)."""
    from bioplausible_lightning.evaluation.learners import DEFAULT_LEARNERS, LearnerRun

    return {dataset: [LearnerRun(lr) for lr in DEFAULT_LEARNERS[dataset]]
            for dataset in ("digits", "mnist", "cifar10")}  # fmt: skip


def test_learners_are_built_from_the_cli_configs(digits_data, default_runs):
    from bioplausible_lightning import (
        BackpropModule,
        DaleExp,
        HebbianPerturbation,
        PerturbationModule,
    )

    node, bp_dale, bp, hebbian, _ = default_runs["mnist"]
    five = digits_data.resplit(classes=[0, 1, 2, 3, 4])
    model = bp_dale.model(five, seed=3, hidden_sizes=[16, 16])  # the data's shape and classes
    assert model.input_shape == (1, 8, 8) and model.layers[-1].out_features == 5
    assert [m.out_features for m in model.layers if hasattr(m, "out_features")] == [16, 16, 5]
    assert isinstance(model.layers[0].parametrizations.weight[0], DaleExp)  # Dale's law
    assert type(bp.model(five, 0).layers[0]) is nn.Linear  # standard baseline: plain layers
    assert torch.equal(bp.model(five, 3).layers[0].weight, bp.model(five, 3).layers[0].weight)
    assert isinstance(bp_dale.module(model, epochs=7), BackpropModule)
    module = node.module(node.model(five, 0), epochs=7)
    assert isinstance(module, PerturbationModule) and module.rule.sigma == 0.05  # mnist.yaml
    assert module.lr_scheduler_factory.keywords["T_max"] == 7  # cosine spans the run's budget
    by_steps = node.module(node.model(five, 0), steps=40)
    assert by_steps.lr_scheduler_interval == "step"
    assert by_steps.lr_scheduler_factory.keywords["T_max"] == 40
    assert isinstance(hebbian.module(hebbian.model(five, 0), epochs=1).rule, HebbianPerturbation)
    assert hebbian.batch_size == 32 and hebbian.max_epochs == 20 and hebbian.width() == 2000
    assert [r.label_free_hidden() for r in (node, bp_dale, bp, hebbian)] == [False] * 3 + [True]


def test_every_default_learner_config_parses(default_runs):
    assert set(default_runs) == {"digits", "mnist", "cifar10"}  # imagefolder: the cifar10 files
    for dataset, runs in default_runs.items():
        expected = {"mnist": [True, True],  # both configurations of the rule
                    "cifar10": [True, False],  # and backprop on the conv presets' network
                    "digits": [True]}[dataset]  # fmt: skip
        assert [r.label_free_hidden() for r in runs] == [False] * 3 + expected, dataset
        assert all(r.max_epochs for r in runs), dataset
        assert all(r.width() for r in runs if r.name != "backprop-cnn"), dataset


def test_a_label_free_stage_keeps_its_share_of_any_budget(digits_data):
    from bioplausible_lightning.evaluation import Learner
    from bioplausible_lightning.evaluation.learners import LearnerRun

    run = LearnerRun(Learner("dot", "examples/mnist_hebbian_dot.yaml"))  # 2100 of 25 epochs
    model = run.model(digits_data, 0)
    assert run.module(model, epochs=25).rule.readout_start == 2100
    assert run.module(model, epochs=2).rule.readout_start == 168
    assert run.module(model, steps=100, epoch_steps=141).rule.readout_start == 60
    with pytest.raises(ValueError, match="epoch_steps"):
        run.module(model, steps=100)
    conv = LearnerRun(Learner("conv", "examples/cifar10_softhebb.yaml"))  # nested settings
    module = conv.module(conv.model(digits_data, 0), epochs=10)  # half of its 20 epochs
    assert (module.rule.readout_start, module.rule.hebbian.layer_steps) == (423, 141)
    node = LearnerRun(Learner("np", "examples/mnist.yaml"))  # nothing counted in steps
    assert node.module(node.model(digits_data, 0), steps=10).rule.sigma == 0.05


def test_learner_overrides_are_typed_and_used(digits_data):
    """``--trainer.max_epochs`` and ``--data.batch_size`` overrides reach the comparison as
    numbers (a string max_epochs crashed the budget scaling; a batch size under
    ``--data.init_args`` was filed under the wrong key and silently ignored)."""
    from bioplausible_lightning.evaluation import Learner
    from bioplausible_lightning.evaluation.learners import LearnerRun

    dot = "examples/mnist_hebbian_dot.yaml"  # 25 epochs, batch 32, 2100 label-free steps
    run = LearnerRun(Learner("dot", dot, ("--trainer.max_epochs", "10", "--data.batch_size=16")))
    assert (run.max_epochs, run.batch_size) == (10, 16)
    assert run.module(run.model(digits_data, 0), epochs=5).rule.readout_start == 1050
    nested = LearnerRun(Learner("dot", dot, ("--data.init_args.batch_size", "8")))
    assert (nested.max_epochs, nested.batch_size) == (25, 8)
    with pytest.raises(ValueError, match=r"trainer.max_epochs=0 is invalid.*>= 1"):
        LearnerRun(Learner("dot", dot, ("--trainer.max_epochs", "0")))


@pytest.mark.parametrize(
    ("args", "setting"),
    [(("--trainer.gradient_clip_val", "0.5"), "trainer.gradient_clip_val=0.5"),
     (("--trainer.accumulate_grad_batches=4",), "trainer.accumulate_grad_batches=4"),
     (("--data.init_args.max_shift", "2"), "data.max_shift=2"),
     (("--data.samples_per_class", "5"), "data.samples_per_class=5")],
)  # fmt: skip
def test_a_learner_override_the_comparison_would_ignore_is_an_error(args, setting):
    from bioplausible_lightning.evaluation import Learner
    from bioplausible_lightning.evaluation.learners import LearnerRun

    with pytest.raises(ValueError, match=rf"learner 'np': the override\(s\) {setting} are "
                                          "invalid in a comparison"):  # fmt: skip
        LearnerRun(Learner("np", "examples/digits.yaml", args))


def test_a_config_setting_the_comparison_ignores_is_announced(tmp_path):
    import yaml

    from bioplausible_lightning.evaluation import Learner
    from bioplausible_lightning.evaluation.learners import LearnerRun

    cfg = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    cfg["trainer"]["gradient_clip_val"] = 0.5
    path = tmp_path / "clipped.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.warns(UserWarning, match=r"ignores trainer.gradient_clip_val=0.5 from"):
        LearnerRun(Learner("np", str(path)))
    with warnings.catch_warnings():  # settings that do not change learning: no warning
        warnings.simplefilter("error", UserWarning)
        LearnerRun(Learner("np", "examples/digits.yaml", ("--trainer.log_every_n_steps", "5")))


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_every_example_config_builds_its_module(config, digits_data):
    """Each shipped config parses against the current API and builds its LightningModule
    (on the digits' shapes: the configs' own data folders are not needed)."""
    from bioplausible_lightning.evaluation import Learner
    from bioplausible_lightning.evaluation.learners import LearnerRun

    assert len(list((ROOT / "examples").glob("*.yaml"))) >= 10  # the glob found the configs
    with warnings.catch_warnings():  # and the comparison uses every setting it has
        warnings.simplefilter("error", UserWarning)
        run = LearnerRun(Learner("x", f"examples/{config}"))
    module = run.module(run.model(digits_data, 0), epochs=2)
    assert isinstance(module, L.LightningModule)


def test_a_learner_checkpoint_is_evaluated_instead_of_trained(tmp_path, digits_data):
    import dataclasses

    from bioplausible_lightning.evaluation import Learner
    from bioplausible_lightning.evaluation.learners import LearnerRun

    learner = Learner("np", "examples/digits.yaml")
    run = LearnerRun(learner)
    module = run.module(run.model(digits_data, 0), epochs=1)
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="np")  # as the CLI
    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                        logger=False, callbacks=[saver], enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(module, digits_data.resplit(batch_size=64))
    saved = LearnerRun(dataclasses.replace(learner, checkpoint=str(tmp_path / "np.ckpt")))
    fresh = saved.module(saved.model(digits_data, 0), epochs=1)
    assert saved.load_checkpoint(fresh) == 2  # epochs trained
    for (name, a), b in zip(module.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(fresh.rule.state_dict()["generator_state"],
                       module.rule.state_dict()["generator_state"])
    assert "np.ckpt" in saved.describe()
    missing = LearnerRun(dataclasses.replace(learner, checkpoint=str(tmp_path / "no.ckpt")))
    with pytest.raises(ValueError, match="no such file"):
        missing.load_checkpoint(fresh)


def test_learner_config_errors_name_the_file():
    from bioplausible_lightning.evaluation import Learner
    from bioplausible_lightning.evaluation.learners import LearnerRun

    with pytest.raises(ValueError, match="config='examples/nope.yaml'"):
        LearnerRun(Learner("x", "examples/nope.yaml"))


def test_transfer_sources():
    from bioplausible_lightning.evaluation.report import transfer_source

    names = ["node-dale", "backprop-dale", "backprop", "hebbian"]
    assert transfer_source(names, "backprop-dale", "backprop", "hebbian") == "backprop-dale"
    assert transfer_source(names, "backprop-dale", "backprop", "backprop-dale") == "backprop"
    assert transfer_source(names, "backprop-dale", "absent", "backprop-dale") == "node-dale"


def test_check_goals_reports_met_and_missed_for_the_goal_learner():
    from bioplausible_lightning.evaluation.report import check_goals, summary_markdown

    def rob(accs):
        return {"eps": [0.1], "n_samples": 10, "protocol": {}, "source": None,
                "accuracy": {a: [v] for a, v in accs.items()}}  # fmt: skip

    report = {
        "config": {"goal_learner": "hebbian", "reference": "backprop-dale", "dataset": "mnist",
                   "seed": 0, "reference_source": "backprop", "attacks": [],
                   "learners": [{"name": "hebbian"}, {"name": "backprop-dale"}]},
        "learners": {"hebbian": "h", "backprop-dale": "b"},
        "clean": {"accuracy": {"hebbian": 0.926, "backprop-dale": 0.929}, "protocol": "p"},
        "robustness": {"hebbian": rob({"fgsm": 0.5, "pgd": 0.2, "square": 0.31,
                                       "transfer": 0.4}), "backprop-dale": rob({})},
        "fewshot": {"from_scratch": {"protocol": "a", "results": {"hebbian": {"1": {"mean": 0.6},
                                                                            "5": {"mean": 0.69}}}}},
        "depth": {"depths": [1, 8], "accuracy": {"hebbian": [0.90, 0.84]}, "protocol": "d"},
    }  # fmt: skip
    # protocol (b): "above raw-pixel prototypes" is strict; a tie is missed
    report["fewshot"]["episodic"] = {
        "protocol": "b", "n_way": 5, "metric": "cosine",
        "results": {"hebbian": {"1": {"mean": 0.55}, "5": {"mean": 0.72}},
                    "pixels": {"1": {"mean": 0.51}, "5": {"mean": 0.72}}}}  # fmt: skip
    goals = {g["key"]: g for g in check_goals(report)}
    assert goals["clean_gap"]["value"] == pytest.approx(-0.003) and goals["clean_gap"]["met"]
    assert goals["episodic1_gap"]["value"] == pytest.approx(0.04)
    met = {k: g["met"] for k, g in goals.items()}
    assert met == {"clean_gap": True, "fgsm@0.1": True, "pgd@0.1": False, "square@0.1": True,
                   "transfer@0.1": True, "shot1": True, "shot5": False,
                   "depth_gap": False, "episodic1_gap": True, "episodic5_gap": False}  # fmt: skip
    report["goals"] = list(goals.values())
    summary = summary_markdown(report)
    assert "## Issue 7's goals (MNIST) for hebbian" in summary
    assert "| depth 8 ≥ depth 1 − 5 pts | -6.0 points, **missed** |" in summary
    assert "| 5-way 1-shot (b), cosine | b (raw-pixel prototypes, same episodes: 51.0%) | " \
        "55.0% | – |" in summary
    assert "| 1-shot above raw-pixel prototypes (protocol b, same metric) | +4.0 points, met |" \
        in summary
    del report["fewshot"]["episodic"]["metric"]  # reports made before the option: Euclidean
    assert "| 5-way 1-shot (b) | b (raw-pixel" in summary_markdown(report)
    report["config"]["goal_learner"] = "hebbian,absent,backprop-dale"  # one column each
    both = check_goals(report)
    assert {g["learner"] for g in both} == {"hebbian", "backprop-dale"}
    report["goals"] = both
    summary = summary_markdown(report)
    assert "| Goal | hebbian | backprop-dale |" in summary
    assert "| clean ≥ Dale backprop − 0.5 pt | -0.3 points, met | +0.0 points, met |" in summary


def test_peer_activations_count_as_hidden_layers():
    from bioplausible_lightning import HebbianMLP, RectifiedPower, SoftHebbConvNet
    from bioplausible_lightning.evaluation.representations import default_activation_layers

    assert default_activation_layers(SoftHebbConvNet()) == [
        "features.2", "features.6", "features.10"]  # the three triangle activations
    mlp = HebbianMLP((1, 8, 8), 10, [16], activation=RectifiedPower(2.0))
    assert default_activation_layers(mlp) == ["layers.1"]


def test_the_smoothed_copy_softens_only_the_code_and_the_front_end_is_contrast_only():
    from bioplausible_lightning import HebbianMLP, SoftWinnerTakeAll

    smoothed = _load_example("smoothed_transfer").smoothed
    model = HebbianMLP((1, 8, 8), 10, [32], seed=0,
                       activation=SoftWinnerTakeAll(0.0, 0.2, total_activity=1.0))  # fmt: skip
    soft = smoothed(model, 5.0)
    (act,) = [m for m in soft.modules() if isinstance(m, SoftWinnerTakeAll)]
    assert act.temperature == pytest.approx(1.0)  # 5 x 0.2, the original untouched:
    assert [m.temperature for m in model.modules() if isinstance(m, SoftWinnerTakeAll)] == [0.2]
    assert all(torch.equal(a, b) for a, b in zip(soft.parameters(), model.parameters()))
    x = torch.rand(4, 1, 8, 8)
    assert not torch.allclose(soft(x), model(x))
    with pytest.raises(ValueError, match="SoftWinnerTakeAll"):
        smoothed(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), 5.0)
    front = _load_example("cifar10_on_off").ContrastOnOff(gain=0.16)
    images = torch.rand(3, 3, 32, 32) * 0.5
    out = front(images)
    assert out.shape == (3, 6, 32, 32) and bool((out >= 0).all())
    # contrast, not brightness: a brighter copy gives the same channels; twice the contrast
    # gives the same pattern, divisively normalised (less than twice the response); ON and
    # OFF never both fire on one pixel
    assert torch.allclose(front(images + 0.3), out, atol=1e-5)
    high = front(0.25 + 2 * (images - 0.25))
    assert torch.equal(high > 0, out > 0) and 1 < float(high.sum() / out.sum()) < 2
    assert not bool(((out[:, :3] > 0) & (out[:, 3:] > 0)).any())


def test_the_on_off_script_gives_the_rule_a_local_layer_and_refuses_a_kernel_too_large():
    from bioplausible_lightning import SoftWinnerTakeAll

    script = _load_example("cifar10_on_off")
    module = script.build(0.16, 10, 1, kernel=16, stride=4, units=8)
    net = module.model
    hebbian, readout = module.rule.parts(net)
    # the rule learns the 16 x 16 receptive fields; the perturbation readout sees all 5 x 5
    # positions' codes
    ((_, conv),) = hebbian.targets(net)
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (16, 16) and conv.stride == (4, 4)
    ((_, head),) = readout.targets(net)
    assert isinstance(head, nn.Linear) and head.in_features == 8 * 5 * 5
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    relu = script.build(0.16, 10, 1, backprop="relu", kernel=16, stride=4, units=8)
    assert any(isinstance(m, nn.ReLU) for m in relu.model.modules())
    # --temperature sets the code's softmax, for the rule and the backprop baseline alike;
    # the rule's competition keeps its own temperature
    for backprop in (None, "same"):
        soft = script.build(0.16, 10, 1, backprop, kernel=16, units=8, temperature=0.5)
        (code,) = [m for m in soft.model.modules() if isinstance(m, SoftWinnerTakeAll)]
        assert code.temperature == 0.5
    assert script.build(0.16, 10, 1, temperature=0.5).rule.hebbian.temperature == 1 / 12
    with pytest.raises(ValueError, match="kernel=40 is invalid"):
        script.build(0.16, 10, 1, kernel=40)
