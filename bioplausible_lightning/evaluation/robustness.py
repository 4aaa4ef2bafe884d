"""Accuracy under adversarial attack (torchattacks), gradient-based, gradient-free and transfer.

Sparse, winner-take-all or sign-constrained networks can *mask gradients*: FGSM/PGD then
fail although the model is not robust.  So every report carries, beside FGSM and PGD, the
gradient-free Square attack and a transfer attack (examples crafted on a second model, e.g.
the backprop baseline); a robustness claim stands only when those agree.  AutoAttack
(standard version, L∞: APGD-CE, APGD-T, FAB-T and Square), the field's reference
evaluation, is available too; it is expensive, so it can run on the first
``AttackConfig.autoattack_samples`` examples only.

Conventions: inputs are in [0, 1] and the model includes its own normalisation (ε is in
pixel units); *robust accuracy* is the fraction of examples classified correctly both clean
and under attack (worst case over restarts), so it never exceeds clean accuracy.  With
``cumulative=True`` (the default) an example broken at a smaller ε also counts as broken at
every larger ε of the sweep — its adversarial example lies inside the larger ball — so the
reported curve is the worst case found and cannot rise with ε by chance.  Attacks
take gradients w.r.t. the *input* only; the model's parameters and ``.grad`` are untouched
and every submodule's train/eval mode is restored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_in_range, check_min_int, check_positive
from ._common import Data, batches, collect, eval_mode, model_device, predict

AttackName = Literal["fgsm", "pgd", "square", "transfer", "autoattack"]
ATTACKS: tuple[str, ...] = get_args(AttackName)
TransferAttack = Literal["fgsm", "pgd"]


@dataclass
class AttackConfig:
    """Attack budgets.  Reported next to every number, so keep them honest and fixed.

    Attributes:
        pgd_steps: PGD iterations.
        pgd_restarts: PGD random restarts; an example counts as robust only if it survives all.
        pgd_step_size: PGD step as a multiple of ε (default ``2.5 / pgd_steps``, Madry et al.).
        square_queries: Square attack's query budget per restart.
        square_restarts: Square attack restarts.
        square_p_init: Square attack's initial fraction of pixels changed per query.
        transfer_attack: Attack run on the source model to craft transfer examples.
        autoattack_samples: AutoAttack attacks only the first this many examples (its
            accuracy is over those); ``None``: all of them.
        seed: Seed for random starts (the global RNG is restored afterwards).
        batch_size: Examples attacked at once.
    """

    pgd_steps: int = 20
    pgd_restarts: int = 1
    pgd_step_size: float | None = None
    square_queries: int = 1000
    square_restarts: int = 1
    square_p_init: float = 0.8
    transfer_attack: TransferAttack = "pgd"
    autoattack_samples: int | None = None
    seed: int = 0
    batch_size: int = 500

    def __post_init__(self) -> None:
        for name in ("pgd_steps", "pgd_restarts", "square_queries", "square_restarts"):
            check_min_int(name, getattr(self, name))
        check_min_int("batch_size", self.batch_size)
        if self.autoattack_samples is not None:
            check_min_int("autoattack_samples", self.autoattack_samples)
        if self.pgd_step_size is not None:
            check_positive("pgd_step_size", self.pgd_step_size)
        check_in_range("square_p_init", self.square_p_init, 0, 1, low_open=True)
        check_choice("transfer_attack", self.transfer_attack, get_args(TransferAttack))

    def describe(self, attack: str) -> str:
        """One line that states the protocol behind a number."""
        step = self.pgd_step_size or 2.5 / self.pgd_steps
        pgd = f"L∞ PGD, {self.pgd_steps} steps of {step:.3g}·ε, {self.pgd_restarts} restart(s)"
        return {
            "fgsm": "L∞ FGSM (one gradient-sign step), untargeted",
            "pgd": f"{pgd}, random start, untargeted",
            "square": (
                f"L∞ Square (gradient-free), {self.square_queries} queries × "
                f"{self.square_restarts} restart(s), margin loss"
            ),
            "transfer": (
                f"examples crafted by {self.transfer_attack.upper()} on the source model, "
                "applied to the model under test"
                + (f" ({pgd})" if self.transfer_attack == "pgd" else "")
            ),
            "autoattack": (
                "L∞ AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square 5000 queries; "
                "torchattacks)"
                + (
                    f", first {self.autoattack_samples} examples"
                    if self.autoattack_samples is not None
                    else ""
                )
            ),
        }[attack]


@dataclass
class RobustnessResult:
    """Accuracies in [0, 1]: ``accuracy[attack][i]`` is the robust accuracy at ``eps[i]``."""

    clean_accuracy: float
    eps: list[float]
    accuracy: dict[str, list[float]]
    n_samples: int
    protocol: dict[str, str] = field(default_factory=dict)
    #: Examples each attack ran on when fewer than ``n_samples`` (AutoAttack).
    n_attacked: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _AttackView(nn.Module):
    """What torchattacks sees: the model, with the input always in the autograd graph.

    A model that ignores (part of) its input would make ``autograd.grad`` raise; adding
    ``0 * sum(x)`` gives it the true zero gradient instead.  The empty anchor parameter
    tells torchattacks the device even for a model without parameters.
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.empty(0, device=device), requires_grad=False)
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        return logits + 0.0 * x.flatten(1).sum(1, keepdim=True).to(logits.dtype)


def _check_eps(eps: float) -> float:
    check_in_range("eps", eps, 0, 1, hint="pixel units")
    return float(eps)


def _check_attack(attack: str) -> str:
    check_choice("attack", attack, ATTACKS)
    return attack


def _make_attack(
    view: nn.Module, attack: str, eps: float, config: AttackConfig, restart: int, n_classes: int
):
    import torchattacks

    if attack == "autoattack":  # n_classes: APGD-T and FAB-T target every other class
        return torchattacks.AutoAttack(view, norm="Linf", eps=eps, version="standard",
                                       n_classes=n_classes, seed=config.seed + restart)  # fmt: skip
    if attack == "fgsm":
        return torchattacks.FGSM(view, eps=eps)
    if attack == "pgd":
        alpha = (config.pgd_step_size or 2.5 / config.pgd_steps) * eps
        return torchattacks.PGD(view, eps=eps, alpha=alpha, steps=config.pgd_steps)
    if attack == "square":
        return torchattacks.Square(
            view,
            norm="Linf",
            eps=eps,
            n_queries=config.square_queries,
            n_restarts=config.square_restarts,
            p_init=config.square_p_init,
            loss="margin",
            seed=config.seed + restart,
        )
    raise ValueError(f"attack={attack!r} cannot craft examples directly.")


@torch.no_grad()
def _n_classes(view: nn.Module, x: Tensor, device: torch.device) -> int:
    return int(view(x[:1].clone().to(device)).shape[1])


def _square_needs_images(x: Tensor) -> Tensor:
    if x.ndim == 4:
        return x
    raise ValueError(
        f"The Square attack needs image-shaped inputs (N, C, H, W); got {tuple(x.shape)}."
    )


def adversarial_examples(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: Literal["fgsm", "pgd", "square", "autoattack"],
    eps: float,
    config: AttackConfig | None = None,
    restart: int = 0,
) -> Tensor:
    """Adversarial versions of ``x`` (same device as ``x``) crafted against ``model``.

    The model is put in eval mode (modes restored); gradients are taken w.r.t. the input
    only, under ``torch.enable_grad()`` so that this also works inside Lightning's
    ``inference_mode`` test loop.  The global RNG state is saved and restored.
    """
    config = config or AttackConfig()
    eps = _check_eps(eps)
    if attack == "square":
        _square_needs_images(x)
    if eps == 0:
        return x.clone()
    device = model_device(model, x.device)
    view = _AttackView(model, device)
    devices = [device] if device.type == "cuda" else []
    out = []
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        eval_mode(model),
        torch.random.fork_rng(devices=devices),
    ):
        torch.manual_seed(config.seed * 1000 + restart)
        atk = _make_attack(view, attack, eps, config, restart, _n_classes(view, x, device))
        for s in batches(x.shape[0], config.batch_size):
            xb, yb = x[s].clone().to(device), y[s].clone().to(device)
            out.append(atk(xb, yb).detach().to(x.device))
    return torch.cat(out)


def _robust_mask(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: str,
    eps: float,
    config: AttackConfig,
    source: nn.Module | None,
    standing: Tensor,
) -> Tensor:
    """Which of the examples in ``standing`` survive ``attack`` at ``eps``."""
    if eps == 0:
        return standing.clone()
    if attack == "transfer":
        assert source is not None
        crafted_with = config.transfer_attack
        restarts = config.pgd_restarts if crafted_with == "pgd" else 1
        target = source
    else:
        crafted_with = attack
        restarts = config.pgd_restarts if attack == "pgd" else 1
        target = model
    robust = standing.clone()
    for restart in range(restarts):
        # only examples still standing need attacking again
        idx = torch.nonzero(robust).flatten()
        if idx.numel() == 0:
            break
        x_adv = adversarial_examples(target, x[idx], y[idx], crafted_with, eps, config, restart)
        robust[idx] = predict(model, x_adv, config.batch_size) == y[idx].cpu()
    return robust


def robust_accuracy(
    model: nn.Module,
    data: Data,
    attack: AttackName,
    eps: float,
    config: AttackConfig | None = None,
    source_model: nn.Module | None = None,
    max_samples: int | None = None,
) -> float:
    """Robust accuracy in [0, 1] of ``model`` under one attack at one ε.

    ``attack="transfer"`` crafts the examples on ``source_model`` (required) with
    ``config.transfer_attack`` and evaluates them on ``model``.
    """
    result = evaluate_robustness(
        model, data, [eps], [attack], config, source_model, max_samples=max_samples
    )
    return result.accuracy[attack][0]


def evaluate_robustness(
    model: nn.Module,
    data: Data,
    eps: Sequence[float] = (0.05, 0.1, 0.2, 0.3),
    attacks: Sequence[str] = ("fgsm", "pgd", "square", "transfer"),
    config: AttackConfig | None = None,
    source_model: nn.Module | None = None,
    max_samples: int | None = 1000,
    source_name: str | None = None,
    cumulative: bool = True,
) -> RobustnessResult:
    """Robust accuracy of ``model`` for every attack in ``attacks`` at every ε in ``eps``.

    Every attack sees the same first ``max_samples`` examples of ``data`` (pass a shuffled
    subset if the data is sorted by class).  ``"transfer"`` needs ``source_model``; it is
    skipped (and said so in ``protocol``) when none is given.  ``"autoattack"`` runs on the
    first ``config.autoattack_samples`` examples (``n_attacked``).  ``cumulative``: see the
    module docstring.
    """
    config = config or AttackConfig()
    eps_list = [_check_eps(e) for e in eps]
    if not eps_list:
        raise ValueError("eps=[] is invalid: give at least one ε in [0, 1].")
    for attack in attacks:
        _check_attack(attack)
    x, y = collect(data, max_samples)
    clean_correct = predict(model, x, config.batch_size) == y.cpu()
    result = RobustnessResult(
        clean_accuracy=float(clean_correct.float().mean()),
        eps=eps_list,
        accuracy={},
        n_samples=int(x.shape[0]),
        source=source_name,
    )
    for attack in attacks:
        if attack == "transfer" and source_model is None:
            result.protocol[attack] = "skipped: no source_model given"
            continue
        if attack == "square" and x.ndim != 4:
            _square_needs_images(x)
        start = time.perf_counter()
        n = x.shape[0]
        if attack == "autoattack" and config.autoattack_samples is not None:
            n = min(n, config.autoattack_samples)
            result.n_attacked[attack] = n
        xa, ya, correct = x[:n], y[:n], clean_correct[:n]
        accs = [math.nan] * len(eps_list)
        standing = correct.clone()
        for i in sorted(range(len(eps_list)), key=lambda j: eps_list[j]):
            mask = _robust_mask(model, xa, ya, attack, eps_list[i], config, source_model,
                                standing if cumulative else correct)  # fmt: skip
            if cumulative:
                standing = mask
            accs[i] = float(mask.float().mean())
        result.accuracy[attack] = accs
        result.seconds[attack] = round(time.perf_counter() - start, 3)
        result.protocol[attack] = config.describe(attack) + (
            "; an example broken at a smaller ε counts as broken at larger ε"
            if cumulative and len(eps_list) > 1
            else ""
        )
    return result


def accuracy_at(result: RobustnessResult, attack: str, eps: float) -> float:
    """The robust accuracy at the ε in ``result.eps`` closest to ``eps`` (nan if absent)."""
    if attack not in result.accuracy:
        return math.nan
    i = min(range(len(result.eps)), key=lambda j: abs(result.eps[j] - eps))
    return result.accuracy[attack][i] if abs(result.eps[i] - eps) < 1e-9 else math.nan


__all__ = [
    "ATTACKS",
    "AttackConfig",
    "RobustnessResult",
    "accuracy_at",
    "adversarial_examples",
    "evaluate_robustness",
    "robust_accuracy",
]
