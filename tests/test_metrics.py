"""The pure statistics, on inputs whose answer is known by hand or by scipy."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

from bioplausible_lightning.metrics import (
    activity_matrix,
    activity_sparsity,
    count_sign_flips,
    dale_statistics,
    dead_fraction,
    ei_ratio,
    fraction_near_zero,
    fraction_positive,
    hoyer_sparseness,
    lifetime_sparseness,
    log_magnitude_moments,
    lognormal_fit,
    population_sparseness,
    presynaptic_matrix,
    sample_values,
    sign_consistency,
    sign_pattern,
    standardized_moments,
    weight_distribution,
    weight_sparsity,
)
from bioplausible_lightning.nn import BioConvNet, BioMLP, dale_

# -- activity sparseness ----------------------------------------------------------------------


def k_hot(n: int, k: int, samples: int = 3) -> torch.Tensor:
    x = torch.zeros(samples, n)
    x[:, :k] = 2.5
    return x


@pytest.mark.parametrize("n,k", [(10, 1), (10, 3), (16, 4), (7, 7)])
def test_population_measures_of_k_hot_patterns_follow_the_formulas(n: int, k: int) -> None:
    x = k_hot(n, k)
    # Hoyer: |x|_1 / |x|_2 = sqrt(k); Treves-Rolls: a = k / n
    assert hoyer_sparseness(x) == pytest.approx((math.sqrt(n) - math.sqrt(k)) / (math.sqrt(n) - 1))
    assert population_sparseness(x) == pytest.approx((1 - k / n) / (1 - 1 / n), abs=1e-6)
    assert fraction_near_zero(x) == pytest.approx(1 - k / n)


def test_one_hot_is_maximally_sparse_and_uniform_is_not() -> None:
    one_hot = torch.eye(8)
    assert hoyer_sparseness(one_hot) == pytest.approx(1.0)
    assert population_sparseness(one_hot) == pytest.approx(1.0)
    assert lifetime_sparseness(one_hot) == pytest.approx(1.0)  # each unit answers one sample
    uniform = torch.full((5, 8), 0.3)
    assert hoyer_sparseness(uniform) == pytest.approx(0.0, abs=1e-6)
    assert population_sparseness(uniform) == pytest.approx(0.0, abs=1e-6)
    assert lifetime_sparseness(uniform) == pytest.approx(0.0, abs=1e-6)


def test_lifetime_sparseness_is_computed_per_unit_across_samples() -> None:
    # unit 0 fires on 1 of 4 samples (S = 1), unit 1 on all four equally (S = 0)
    x = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert lifetime_sparseness(x) == pytest.approx(0.5)
    stats_ = activity_sparsity(x, unit_dim=1)
    assert stats_["dead_fraction"] == 0.0
    assert activity_sparsity(torch.zeros(4, 3), unit_dim=1)["dead_fraction"] == 1.0


def test_signed_activity_uses_magnitudes_and_silence_counts_as_sparse() -> None:
    assert hoyer_sparseness(torch.tensor([[0.0, -3.0, 0.0, 0.0]])) == pytest.approx(1.0)
    assert population_sparseness(torch.zeros(2, 5)) == 1.0
    assert math.isnan(hoyer_sparseness(torch.ones(4, 1)))  # undefined for a single unit


def test_feature_maps_put_channels_last() -> None:
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    m = activity_matrix(x, unit_dim=1)
    assert m.shape == (8, 3)
    assert torch.equal(m[0], x[0, :, 0, 0])
    assert activity_matrix(torch.ones(2, 5, 7), unit_dim=-1).shape == (10, 7)


def test_nonfinite_activity_rows_are_dropped_and_counted() -> None:
    x = torch.eye(4)
    x[1, 2] = float("nan")
    x[3, 0] = float("inf")
    out = activity_sparsity(x, unit_dim=1)
    assert out["nonfinite"] == 2
    assert out["hoyer"] == pytest.approx(1.0)  # the two finite rows are one-hot
    assert all(math.isfinite(v) for v in out.values())
    assert math.isnan(hoyer_sparseness(torch.full((2, 3), float("nan"))))


def test_one_pass_summary_equals_the_single_measures_on_both_reduction_paths() -> None:
    from bioplausible_lightning.metrics.activity import _reduce

    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(40, 30, generator=g))
    x[:, 5] = 0.0  # a dead unit
    x[3, 2] = float("nan")
    summary = activity_sparsity(x, unit_dim=1)
    assert summary["hoyer"] == pytest.approx(hoyer_sparseness(x))
    assert summary["population_sparseness"] == pytest.approx(population_sparseness(x))
    assert summary["lifetime_sparseness"] == pytest.approx(lifetime_sparseness(x))
    assert summary["dead_fraction"] == pytest.approx(1 / 30) == dead_fraction(x)
    assert summary["nonfinite"] == 1
    # numpy (CPU) and torch (other devices) reductions agree
    host, device = _reduce(x, 1e-6, host=True), _reduce(x, 1e-6, host=False)
    for a, b in zip(host, device, strict=True):
        assert a == pytest.approx(b, rel=1e-5)


def test_weight_sparsity_is_relative_to_the_largest_weight() -> None:
    w = torch.tensor([[10.0, -0.05, 0.5], [0.0, -2.0, 0.09]])
    assert weight_sparsity(w, rel_threshold=0.01) == pytest.approx(3 / 6)
    assert weight_sparsity(w * 1e-3, rel_threshold=0.01) == pytest.approx(3 / 6)
    assert weight_sparsity(torch.zeros(3, 3)) == 1.0
    w[0, 0] = float("nan")
    assert weight_sparsity(w, rel_threshold=0.1) == pytest.approx(3 / 5)  # max is now 2
    with pytest.raises(ValueError, match="rel_threshold=-1"):
        weight_sparsity(w, rel_threshold=-1)


# -- Dale's law ------------------------------------------------------------------------------


def test_mixed_sign_columns_give_the_consistency_counted_by_hand() -> None:
    # columns = presynaptic units: all +, mixed, all zero (vacuous), all - with a zero
    w = torch.tensor([[1.0, 1.0, 0.0, -1.0], [2.0, -1.0, 0.0, -2.0], [3.0, 0.5, 0.0, 0.0]])
    assert sign_consistency(w) == pytest.approx(3 / 4)
    out = dale_statistics(w)
    assert out["consistent_units"] == 3 and out["units"] == 4
    # summed outgoing weight: +6, +0.5, 0, -3 -> two excitatory, one inhibitory
    assert out["ei_ratio"] == pytest.approx(2.0) == ei_ratio(presynaptic_matrix(w))
    assert out["excitatory_fraction"] == pytest.approx(2 / 3)
    # a tolerance turns the small opposite-sign weight into an absent synapse
    w2 = w.clone()
    w2[1, 1] = -1e-4
    assert sign_consistency(w2) == pytest.approx(3 / 4)
    assert sign_consistency(w2, tol=1e-3) == pytest.approx(1.0)


def test_convolution_units_are_input_channels_and_groups_are_separate() -> None:
    w = torch.ones(4, 3, 2, 2)
    w[1, 0, 1, 1] = -1.0  # one negative tap of input channel 0
    assert presynaptic_matrix(w).shape == (3, 16)
    assert sign_consistency(w) == pytest.approx(2 / 3)
    conv = nn.Conv2d(4, 4, 1, groups=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.weight[2:, 1] = -1.0  # input channel 3 (group 1's 2nd) inhibits both its outputs
    # read without groups, dim-1 index 1 would mix input 1 (+) with input 3 (-)
    assert sign_consistency(conv) == pytest.approx(1.0)
    with torch.no_grad():
        conv.weight[2, 1] = 0.5  # input 3 now excites output 2: mixed
    assert sign_consistency(conv) == pytest.approx(3 / 4)
    assert presynaptic_matrix(conv.weight.detach(), groups=2).shape == (4, 2)


def test_transposed_convolution_reads_presynaptic_units_on_dim_0() -> None:
    deconv = nn.ConvTranspose2d(3, 5, 2, bias=False)
    with torch.no_grad():
        deconv.weight.copy_(torch.tensor([1.0, -1.0, 1.0]).view(3, 1, 1, 1).expand(3, 5, 2, 2))
    assert sign_consistency(deconv) == 1.0


def test_dale_models_are_consistent_and_backprop_layers_are_not() -> None:
    assert sign_consistency(BioMLP(hidden_sizes=(32,), seed=0)) == 1.0
    assert sign_consistency(BioConvNet(input_shape=(1, 8, 8), channels=(4,), seed=0)) == 1.0
    dale = dale_(nn.Linear(50, 20), 0.2, generator=torch.Generator().manual_seed(0))
    out = dale_statistics(dale.weight)
    assert out["ei_ratio"] == pytest.approx(40 / 10)
    torch.manual_seed(0)
    assert sign_consistency(nn.Linear(64, 200)) < 0.05
    with pytest.raises(ValueError, match="no weight layer"):
        sign_consistency(nn.Sequential(nn.ReLU()))


def test_plain_parametrization_can_break_dales_law() -> None:
    layer = dale_(nn.Conv2d(3, 4, 3), parametrization="plain",
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert sign_consistency(layer) == 1.0
    with torch.no_grad():
        layer.weight[0, 0, 0, 0] *= -1
    assert sign_consistency(layer) == pytest.approx(2 / 3)


def test_sign_flips_count_strict_reversals_only() -> None:
    before = sign_pattern(torch.tensor([1.0, -2.0, 0.0, 3.0, float("nan")]))
    after = sign_pattern(torch.tensor([-1.0, -1.0, 5.0, 0.0, 1.0]))
    assert before.dtype == torch.int8
    assert count_sign_flips(before, after) == 1  # + -> - ; 0 -> + and + -> 0 are no flips
    with pytest.raises(ValueError, match="differ in shape"):
        count_sign_flips(before, after[:3])


def test_nonfinite_weights_are_counted_not_fatal() -> None:
    w = torch.ones(3, 4)
    w[0, 1] = float("nan")
    w[2, 3] = float("-inf")
    out = dale_statistics(w)
    assert out["nonfinite"] == 2
    assert out["sign_consistency"] == pytest.approx(3 / 4)  # -inf is a negative weight
    dist = weight_distribution(w)
    assert dist["nonfinite"] == 2 and dist["positive_fraction"] == pytest.approx(1.0)


# -- weight distribution ---------------------------------------------------------------------


def test_lognormal_sample_fits_lognormal_better_than_normal_and_vice_versa() -> None:
    g = torch.Generator().manual_seed(0)
    log_normal = torch.exp(torch.randn(20_000, generator=g) * 0.8 - 2.0)
    signs = torch.where(torch.rand(20_000, generator=g) < 0.2, -1.0, 1.0)
    fit = lognormal_fit(signs * log_normal)
    assert fit.ks_lognormal < 0.02 < 0.1 < fit.ks_normal
    assert fit.mu == pytest.approx(-2.0, abs=0.03) and fit.sigma == pytest.approx(0.8, abs=0.03)
    normal = torch.randn(20_000, generator=g) * 0.5 + 4.0
    fit = lognormal_fit(normal)
    assert fit.ks_normal < 0.02 < fit.ks_lognormal


def test_ks_distances_match_scipy() -> None:
    w = torch.randn(3_000, generator=torch.Generator().manual_seed(1)) * 0.1
    fit = lognormal_fit(w)
    a = w.abs().double().numpy()
    log_a = stats.kstest(a, "lognorm", args=(fit.sigma, 0, math.exp(fit.mu))).statistic
    norm_a = stats.kstest(a, "norm", args=(a.mean(), a.std())).statistic
    assert fit.ks_lognormal == pytest.approx(log_a, abs=1e-9)
    assert fit.ks_normal == pytest.approx(norm_a, abs=1e-9)


def test_moments_match_scipy() -> None:
    x = torch.distributions.Gamma(2.0, 1.0).sample((5_000,)).double()
    m = standardized_moments(x)
    assert m["skewness"] == pytest.approx(stats.skew(x.numpy()), rel=1e-9)
    assert m["kurtosis"] == pytest.approx(stats.kurtosis(x.numpy()), rel=1e-9)
    lognormal = torch.exp(torch.randn(50_000, generator=torch.Generator().manual_seed(0)))
    lm = log_magnitude_moments(-lognormal)
    assert abs(lm["skewness"]) < 0.05 and abs(lm["kurtosis"]) < 0.1
    assert math.isnan(standardized_moments(torch.ones(5))["skewness"])


def test_subsampling_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    w = torch.randn(1000, 1000)
    state = torch.get_rng_state()
    a, b = sample_values(w, 10_000), sample_values(w, 10_000)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and a.numel() == 10_000 and a.dtype == torch.float64
    with pytest.raises(ValueError, match="max_samples=0"):
        sample_values(w, 0)


def test_fraction_positive_and_degenerate_inputs() -> None:
    assert fraction_positive(torch.tensor([1.0, -1.0, 0.0, 2.0])) == pytest.approx(0.5)
    assert math.isnan(lognormal_fit(torch.zeros(10)).ks_lognormal)
    decayed = torch.tensor([1.0, 0.5, -1e-6, -2e-7, 0.8, -0.3])  # two negatives near zero
    assert fraction_positive(decayed) == pytest.approx(0.5)
    assert fraction_positive(decayed, tol=1e-3) == pytest.approx(0.75)
    assert math.isnan(fraction_positive(decayed, tol=10.0))
    with pytest.raises(ValueError, match="tol=-1"):
        fraction_positive(decayed, tol=-1.0)
    out = weight_distribution(torch.full((4, 4), 0.5))  # one magnitude: no spread to fit
    assert math.isnan(out["ks_lognormal"]) and out["log_abs_std"] == 0.0
