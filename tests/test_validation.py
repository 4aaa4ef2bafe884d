"""The shared config checks: each error names the parameter, the value and what is allowed,
and the package's modules use them (so a bool, a NaN or a float is refused everywhere)."""

import math

import pytest
import torch
from torch import nn

from bioplausible_lightning._validation import (
    check_callable,
    check_choice,
    check_finite,
    check_fraction,
    check_in_range,
    check_instance,
    check_min,
    check_min_int,
    check_positive_ints,
    check_probability,
)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: check_finite("g", math.inf), r"g=inf is invalid: it must be a finite number\."),
        (lambda: check_finite("g", 0.0, nonzero=True),
         r"g=0.0 is invalid: it must be a finite number != 0\."),
        (lambda: check_finite("g", "1", optional=True),
         r"g='1' is invalid: it must be a finite number or None\."),
        (lambda: check_min("p", 1.5, 2), r"p=1.5 is invalid: it must be a finite number >= 2\."),
        (lambda: check_min("p", math.inf, 2), r"p=inf is invalid: it must be a finite number"),
        (lambda: check_min("s", True, 1, finite=False),
         r"s=True is invalid: it must be a number >= 1\."),
        (lambda: check_fraction("f", 1.0), r"f=1.0 is invalid: it must be a number in \[0, 1\)\."),
        (lambda: check_probability("c", 0), r"c=0 is invalid: it must be a number in \(0, 1\)\."),
        (lambda: check_in_range("e", math.nan, 0, 1, hint="pixel units"),
         r"e=nan is invalid: it must be a number in \[0, 1\] \(pixel units\)\."),
        (lambda: check_min_int("n", None), r"n=None is invalid: it must be an int >= 1\."),
        (lambda: check_min_int("n", 1, 2, hint="two samples"),
         r"n=1 is invalid: it must be an int >= 2 \(two samples\)\."),
        (lambda: check_min_int("n", 0, optional=True),
         r"n=0 is invalid: it must be an int >= 1 or None\."),
        (lambda: check_positive_ints("sizes", [4, 0]),
         r"sizes=\[4, 0\] is invalid: it must be a sequence of ints >= 1\."),
        (lambda: check_positive_ints("sizes", [4, 2.5]), r"sizes=\[4, 2.5\] is invalid"),
        (lambda: check_positive_ints("sizes", (True,)), r"sizes=\(True,\) is invalid"),
        (lambda: check_positive_ints("sizes", 8), r"sizes=8 is invalid"),
        (lambda: check_positive_ints("shape", (1, 8), length=3, hint="C, H, W"),
         r"shape=\(1, 8\) is invalid: it must be a sequence of 3 ints >= 1 \(C, H, W\)\."),
        (lambda: check_instance("model", "mlp", nn.Module, optional=True),
         r"model='mlp' is invalid: it must be an nn.Module or None\."),
        (lambda: check_instance("opt", 1, torch.optim.Optimizer),
         r"opt=1 is invalid: it must be a torch.optim.Optimizer\."),
        (lambda: check_instance("x", 1.0, (str, int)),
         r"x=1.0 is invalid: it must be a str or an int\."),
        (lambda: check_choice("dim", True, (0, 1)),
         r"dim=True is invalid: allowed values are \(0, 1\)\."),
        (lambda: check_choice("loss", "l1", ["ce", "mse"], hint="or a callable"),
         r"loss='l1' is invalid: allowed values are \('ce', 'mse'\) \(or a callable\)\."),
        (lambda: check_callable("f", 3, optional=True, hint="module -> Tensor"),
         r"f=3 is invalid: it must be a callable or None \(module -> Tensor\)\."),
    ],
)
def test_messages_name_the_parameter_the_value_and_what_is_allowed(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_valid_values_pass():
    check_finite("g", -0.5, nonzero=True)
    check_finite("g", None, optional=True)
    check_min("s", math.inf, 1, finite=False)
    check_fraction("f", 0)
    check_probability("c", 0.95)
    check_min_int("n", None, optional=True)
    check_choice("dim", 1, (0, 1))
    check_choice("flag", True, (True, False))
    check_instance("model", None, nn.Module, optional=True)
    assert check_positive_ints("sizes", []) == ()
    assert check_positive_ints("shape", torch.Size([1, 8, 8]), length=3) == (1, 8, 8)
    assert check_positive_ints("sizes", [torch.tensor(3), 4]) == (3, 4)


# -- cases the package's hand-written checks let through ------------------------------------


def test_modules_refuse_what_their_old_checks_missed():
    from bioplausible_lightning.evaluation import AttackConfig
    from bioplausible_lightning.metrics import presynaptic_matrix, weight_sparsity
    from bioplausible_lightning.nn import BioMLP, InputNormalization, KWinnersTakeAll

    with pytest.raises(ValueError, match=r"sparsity=True is invalid"):
        KWinnersTakeAll(True)
    with pytest.raises(ValueError, match=r"hidden_sizes=\(2.5,\) is invalid"):
        BioMLP(hidden_sizes=(2.5,))  # int(2.5) == 2 used to build a 2-unit layer
    with pytest.raises(ValueError, match=r"presynaptic_dim=True is invalid"):
        presynaptic_matrix(torch.ones(2, 3), presynaptic_dim=True)
    with pytest.raises(ValueError, match=r"rel_threshold=nan is invalid"):
        weight_sparsity(torch.ones(3), math.nan)
    with pytest.raises(ValueError, match=r"pgd_step_size=inf is invalid"):
        AttackConfig(pgd_step_size=math.inf)
    with pytest.raises(ValueError, match=r"std=\[0.5, nan\] is invalid"):
        InputNormalization(0.5, [0.5, math.nan])
