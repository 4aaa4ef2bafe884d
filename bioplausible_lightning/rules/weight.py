"""Weight perturbation: nudge the weights at random, keep the nudge in proportion to the gain.

The perturbation is applied *inside the forward* by hooks: a layer computes
``x Wᵀ + σ · x Pᵀ`` for its replica's perturbation ``P``, so the weights are never
modified (an interrupted or non-finite step leaves them bit-identical) and the + and −
passes of every direction run as one concatenated batch.

The rule is composed of parts with one job each: a *structure* (:class:`LowRank` or
:class:`Dense`: what a direction ``P`` is, how it is drawn, how it changes a layer's output
and how ``Σ_k c_k P_k`` is formed), an *estimator* (:class:`~bioplausible_lightning.rules.
base.Antithetic` or :class:`~bioplausible_lightning.rules.base.ForwardDifference`: the
replicas and their finite differences), the *mode* (where a layer's perturbation and update
live) and the noise distribution, which the parts draw from.

Perturbation structures (the dominant cost of a naive implementation is drawing
``num_weights`` random numbers several times per step):

* ``"lowrank"`` (default): ``P = U Vᵀ / √r`` with ``U ∈ R^{out×r}``, ``V ∈ R^{in×r}``.
  The forward adds ``σ ((x V) Uᵀ) / √r``: O(r·(m+n)) random numbers and an O(B·r·(m+n))
  extra cost per layer instead of O(m·n).  ``E[(g·P) P] = g``, so the estimate is unbiased.
* ``"dense"``: a full random ``P`` per layer and direction, *regenerated from a seed* when
  the gradient is formed rather than stored.

``mode="multiplicative"`` perturbs the log-magnitudes ``θ`` of exp-parametrised Dale
layers (``W → W ⊙ exp(σP) ≈ W + σ W⊙P``) and estimates ``dL/dθ`` directly; other layers
are perturbed additively.  ``mode="additive"`` perturbs every effective weight additively
and maps the estimate through the parametrisation locally (``dL/dθ = dL/dW ⊙ W``).

Under multi-process training (DDP) the default ``distributed="shared_seed"`` exploits what
backprop lacks: the update is ``Σ_k c_k P_k`` with random directions ``P_k`` regenerated from
a seed and one scalar ``c_k`` per direction.  Every process draws the same directions (the
same seed), measures ``c_k`` on its own shard, and the processes average only the ``K``
scalars; each then rebuilds the identical update locally.  The bytes exchanged per step do
not depend on the model's size, and the result equals one process with the global batch
(up to float rounding), since the global batch's loss difference is the mean of the
shards'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..distributed import Reducer
from ..losses import PerSampleLoss
from .base import (
    SEED_RANGE,
    Estimator,
    NoiseKind,
    PerturbationRule,
    ReplicateAt,
    check_choice,
    check_min_int,
    rank_seed,
    sample_noise,
)
from .layers import (
    accumulate_param_grad,
    accumulate_weight_grad,
    add_outer_products,
    conv_input_and_padding,
    is_conv,
    is_exp_dale,
    is_weight_parametrized,
    weight_param,
    write_outer_in_place,
)
from .rule import RuleOutput

Structure = Literal["lowrank", "dense"]
Mode = Literal["additive", "multiplicative"]
Distributed = Literal["shared_seed", "all_reduce"]


@dataclass
class _PendingUpdate:
    """An estimate measured but not yet written: under ``distributed="shared_seed"`` the
    update is built from the coefficients averaged over the processes."""

    layers: list[tuple[str, nn.Module]]
    factors: dict[int, dict[str, Tensor]]
    coeff: Tensor
    step_seed: int
    like: Tensor


def _apply(module: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """The layer's linear map with ``weight`` in place of its own (no bias)."""
    if is_conv(module):
        x, padding = conv_input_and_padding(module, x)
        return F.conv2d(x, weight, None, module.stride, padding, module.dilation)
    return F.linear(x, weight)


class PerturbationStructure:
    """What a layer's random direction ``P_k`` is; one job: draw, apply and sum directions.

    ``like`` is the layer's trainable weight tensor (its shape is ``P``'s); random numbers
    come from the layer's generator ``gen`` in a fixed order, so a direction that is not
    stored can be drawn again (:attr:`regenerates`).
    """

    #: The update draws the directions again from the layer's generator (not stored).
    regenerates: bool = False
    #: :meth:`update` can add into an existing ``.grad`` in place.
    accumulates_in_place: bool = False

    def draw(self, shape: torch.Size, k: int, noise: str, gen: torch.Generator,
             like: Tensor) -> dict[str, Tensor]:  # fmt: skip
        """The stored random factors of ``k`` directions of a weight of ``shape``."""
        return {}

    def direction(self, factors: dict[str, Tensor], j: int, like: Tensor, noise: str,
                  gen: torch.Generator | None) -> Tensor:  # fmt: skip
        """Direction ``j`` (unit scale), shaped like ``like``."""
        raise NotImplementedError

    def output_delta(self, module: nn.Module, xs: Tensor, factors: dict[str, Tensor],
                     direction: Tensor, sign: Tensor) -> Tensor | None:  # fmt: skip
        """``σ⁻¹ ×`` every replica's output change ``(R, B, ...)`` in one batched product
        from its input ``xs``, or None where that needs ``P`` itself (then the rule applies
        each :meth:`direction`)."""
        return None

    def add_output_delta(self, module: nn.Module, out: Tensor, xs: Tensor,
                         factors: dict[str, Tensor], direction: Tensor, sign: Tensor,
                         sigma: float) -> bool:  # fmt: skip
        """Add ``σ ×`` every replica's output change into ``out`` and return True, or return
        False where that needs ``P`` itself (see :meth:`output_delta`)."""
        delta = self.output_delta(module, xs, factors, direction, sign)
        if delta is None:
            return False
        out.add_(delta, alpha=sigma)
        return True

    def update(self, factors: dict[str, Tensor], coeff: Tensor, like: Tensor, noise: str,
               gen: torch.Generator | None, into: Tensor | None = None) -> Tensor:  # fmt: skip
        """``Σ_k coeff_k P_k``, added into ``into`` in place when given (only where
        :attr:`accumulates_in_place`), else a new tensor shaped like ``like``."""
        raise NotImplementedError

    def outer_factors(self, factors: dict[str, Tensor], coeff: Tensor,
                      like: Tensor) -> tuple[Tensor, Tensor] | None:  # fmt: skip
        """``(u, v)`` with ``Σ_k coeff_k P_k = u @ vᵀ`` (flattened to ``(out, fan)``), for a
        structure whose update is a thin outer product; None otherwise."""
        return None


class LowRank(PerturbationStructure):
    """``P = U Vᵀ / √r`` with stored ``U ∈ R^{out×r}``, ``V ∈ R^{fan×r}``: O(r·(m+n))
    random numbers per layer and direction; the output change ``((x V) Uᵀ) / √r`` never
    forms ``P``, and the update is one ``(out × K·r) @ (K·r × fan)`` product."""

    accumulates_in_place = True

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def draw(self, shape: torch.Size, k: int, noise: str, gen: torch.Generator,
             like: Tensor) -> dict[str, Tensor]:  # fmt: skip
        fan = math.prod(shape[1:])
        return {"u": sample_noise((k, shape[0], self.rank), noise, gen, like),
                "v": sample_noise((k, fan, self.rank), noise, gen, like)}  # fmt: skip

    def direction(self, factors: dict[str, Tensor], j: int, like: Tensor, noise: str,
                  gen: torch.Generator | None) -> Tensor:  # fmt: skip
        p = factors["u"][j] @ factors["v"][j].T / math.sqrt(self.rank)
        return p.view(like.shape)

    def output_delta(self, module: nn.Module, xs: Tensor, factors: dict[str, Tensor],
                     direction: Tensor, sign: Tensor) -> Tensor:  # fmt: skip
        scale = sign.view(-1, 1, 1) / math.sqrt(self.rank)
        u = factors["u"].index_select(0, direction) * scale  # (R, out, r)
        v = factors["v"].index_select(0, direction)  # (R, fan, r)
        if not is_conv(module):
            flat = xs.reshape(xs.shape[0], -1, xs.shape[-1])
            delta = torch.bmm(torch.bmm(flat, v), u.transpose(1, 2))
            return delta.view(*xs.shape[:-1], u.shape[1])
        r, b = xs.shape[:2]
        kernels = v.transpose(1, 2).reshape(r * self.rank, *weight_param(module).shape[1:])
        grouped = xs.transpose(0, 1).reshape(b, r * xs.shape[2], *xs.shape[3:])
        grouped, padding = conv_input_and_padding(module, grouped)
        proj = F.conv2d(grouped, kernels, None, module.stride, padding, module.dilation,
                        groups=r)  # fmt: skip
        proj = proj.view(b, r, self.rank, *proj.shape[2:])
        return torch.einsum("brkhw,rok->rbohw", proj, u)

    def add_output_delta(self, module: nn.Module, out: Tensor, xs: Tensor,
                         factors: dict[str, Tensor], direction: Tensor, sign: Tensor,
                         sigma: float) -> bool:  # fmt: skip
        if is_conv(module):
            return super().add_output_delta(module, out, xs, factors, direction, sign, sigma)
        # a linear layer: accumulate into ``out`` itself, no output-sized temporary
        u = factors["u"].index_select(0, direction) * (sign.view(-1, 1, 1) / math.sqrt(self.rank))
        v = factors["v"].index_select(0, direction)
        flat = xs.reshape(xs.shape[0], -1, xs.shape[-1])
        out.view(out.shape[0], -1, out.shape[-1]).baddbmm_(
            torch.bmm(flat, v), u.transpose(1, 2), alpha=sigma
        )
        return True

    def outer_factors(self, factors: dict[str, Tensor], coeff: Tensor,
                      like: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
        # Σ_k c_k U_k V_kᵀ / √r as one (out × K·r) @ (K·r × fan) product
        u = (factors["u"] * (coeff / math.sqrt(self.rank)).view(-1, 1, 1)).transpose(0, 1)
        u = u.reshape(like.shape[0], -1)
        return u, factors["v"].transpose(0, 1).reshape(-1, u.shape[1])

    def update(self, factors: dict[str, Tensor], coeff: Tensor, like: Tensor, noise: str,
               gen: torch.Generator | None, into: Tensor | None = None) -> Tensor:  # fmt: skip
        u, v = self.outer_factors(factors, coeff, like)
        if into is not None:
            add_outer_products(into.view(like.shape[0], -1), u, v)  # in place
            return into
        return add_outer_products(None, u, v).view(like.shape)


class Dense(PerturbationStructure):
    """A full random ``P`` per layer and direction, drawn from the layer's generator in the
    forward and drawn again (not stored) when the update is formed."""

    regenerates = True

    def direction(self, factors: dict[str, Tensor], j: int, like: Tensor, noise: str,
                  gen: torch.Generator | None) -> Tensor:  # fmt: skip
        return sample_noise(like.shape, noise, gen, like)

    def update(self, factors: dict[str, Tensor], coeff: Tensor, like: Tensor, noise: str,
               gen: torch.Generator | None, into: Tensor | None = None) -> Tensor:  # fmt: skip
        grad = torch.zeros_like(like)
        for k in range(coeff.shape[0]):
            grad.add_(self.direction(factors, k, like, noise, gen), alpha=float(coeff[k]))
        return grad


class WeightPerturbation(PerturbationRule):
    """Antithetic / forward-difference weight perturbation with seeded regeneration.

    Args:
        sigma: Perturbation scale (> 0); in weight units (additive) or log units
            (multiplicative).
        num_directions: Random directions averaged per step (>= 1).
        estimator: ``"antithetic"`` (default) or ``"forward"``.
        structure: ``"lowrank"`` (default, cheap) or ``"dense"``.
        rank: Rank of a low-rank perturbation (>= 1).
        mode: ``"additive"`` or ``"multiplicative"`` (exp-parametrised Dale layers).
        noise: Distribution of the random factors: ``"gaussian"`` or ``"rademacher"``.
        layers: Optional ``fnmatch`` patterns of the module names to train.
        seed: Seed of the rule's generator.
        replicate_at: ``"input"`` or ``"first_target"`` (see :class:`PerturbationRule`).
        distributed: How the processes of a multi-process run combine their estimates
            (ignored with one process).  ``"shared_seed"`` (default): every process draws
            the same directions and only the ``num_directions`` loss differences are
            averaged — a few bytes per step whatever the model size; the step equals one
            process with the global batch.  ``"all_reduce"``: every process draws its own
            directions and the gradients are averaged like node perturbation's —
            ``num_directions`` × processes directions per step, for ~4 bytes per parameter.
    """

    def __init__(
        self,
        sigma: float = 1e-3,
        num_directions: int = 1,
        estimator: Estimator = "antithetic",
        structure: Structure = "lowrank",
        rank: int = 1,
        mode: Mode = "additive",
        noise: NoiseKind = "gaussian",
        layers: Sequence[str] | None = None,
        seed: int = 0,
        *,
        replicate_at: ReplicateAt = "input",
        distributed: Distributed = "shared_seed",
    ) -> None:
        super().__init__(sigma, num_directions, estimator, noise, layers, seed,
                         replicate_at=replicate_at)  # fmt: skip
        check_choice("structure", structure, ("lowrank", "dense"))
        check_choice("mode", mode, ("additive", "multiplicative"))
        check_min_int("rank", rank, 1)
        check_choice("distributed", distributed, ("shared_seed", "all_reduce"))
        self.structure = structure
        self.rank = rank
        self.mode = mode
        self.distributed = distributed
        self._pending: _PendingUpdate | None = None

    # -- the parts -------------------------------------------------------------------------
    @property
    def perturbation_structure(self) -> PerturbationStructure:
        """The :class:`PerturbationStructure` of the ``structure`` and ``rank`` settings."""
        return LowRank(self.rank) if self.structure == "lowrank" else Dense()

    # -- random factors, regenerated from (step seed, layer) ----------------------------
    def _layer_generator(self, step_seed: int, index: int, device: torch.device) -> torch.Generator:
        gen = torch.Generator(device=device)
        gen.manual_seed((step_seed + 1_000_003 * (index + 1)) % SEED_RANGE)
        return gen

    def _factors(self, module: nn.Module, gen: torch.Generator, like: Tensor) -> dict[str, Tensor]:
        """Random factors of one layer for all directions: the bias's, then the structure's
        (a dense structure draws its directions later, from the same generator)."""
        k, w = self.num_directions, weight_param(module)
        factors = {}
        if module.bias is not None and module.bias.requires_grad:
            factors["bias"] = sample_noise((k, w.shape[0]), self.noise, gen, like)
        factors.update(self.perturbation_structure.draw(w.shape, k, self.noise, gen, like))
        return factors

    def _multiplicative(self, module: nn.Module) -> bool:
        return self.mode == "multiplicative" and is_exp_dale(module)

    # -- the estimate ---------------------------------------------------------------------
    @torch.no_grad()
    def estimate(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        inputs: Tensor,
        targets: Tensor,
        grad_scale: float = 1.0,
    ) -> RuleOutput:
        self._pending = None
        layers = self.targets(model)
        replicas = self.replicas_per_block
        device = inputs.device
        step_seed = int(
            torch.randint(0, SEED_RANGE, (1,), generator=self.generator(device), device=device)
        )
        if self._world_size > 1 and self.distributed == "all_reduce":
            step_seed = rank_seed(step_seed, self._rank)  # independent directions per process
        direction, sign = self.replica_signs(device, inputs.dtype)
        factors: dict[int, dict[str, Tensor]] = {}
        seen: set[int] = set()

        def make_hook(index: int, name: str):
            def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
                if index in seen:
                    raise RuntimeError(
                        f"WeightPerturbation: layer {name!r} ran twice in one forward pass; "
                        "shared (re-used) layers are not supported."
                    )
                seen.add(index)
                gen = self._layer_generator(step_seed, index, device)
                f = factors[index] = self._factors(module, gen, output)
                self._perturb_output(module, args[0], output, f, gen, direction, sign, replicas)
                return output

            return hook

        hooks = {module: make_hook(i, name) for i, (name, module) in enumerate(layers)}
        with self.hooked(hooks), parametrize.cached():  # one W = sign ⊙ exp(θ) per layer
            losses, logits = self.replicated_losses(model, loss_fn, inputs, targets, replicas)
        self.check_ran(layers, seen)
        loss, mean_logits = self.summarize(losses, logits)
        if not self.estimable(losses):
            return RuleOutput(loss, mean_logits, finite=False)

        block_losses = losses.mean(1)
        coeff = self.directional_coefficients(block_losses) * (grad_scale / self.num_directions)
        pending = _PendingUpdate(layers, factors, coeff, step_seed, losses)
        if self._shares_seeds:
            self._pending = pending  # written by synchronize(), from the averaged coeff
        else:
            self._write_update(pending)
        rpe = self.reward_prediction_error(block_losses)
        return RuleOutput(loss, mean_logits, finite=True, rpe=rpe)

    @property
    def _shares_seeds(self) -> bool:
        return self._world_size > 1 and self.distributed == "shared_seed"

    def _write_update(self, pending: _PendingUpdate) -> None:
        """Add ``Σ_k coeff_k P_k`` to the target layers' ``.grad``."""
        device = pending.like.device
        for index, (_, module) in enumerate(pending.layers):
            gen = None
            if self.perturbation_structure.regenerates:  # draw again, don't store, directions
                gen = self._layer_generator(pending.step_seed, index, device)
                self._factors(module, gen, pending.like)  # replay the generator up to them
            self._accumulate(module, pending.factors[index], pending.coeff, gen)

    def synchronize(self, reducer: Reducer) -> None:
        """``"shared_seed"``: average the per-direction coefficients, then write the update
        (identical on every process: same directions, same averaged scalars)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            reducer.mean([pending.coeff], then=lambda: self._write_update(pending))

    def synchronized_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Under ``"shared_seed"``: the target layers' parameters (rebuilt identically)."""
        if not self._shares_seeds:
            return []
        params = []
        for _, module in self.targets(model):
            params.append(weight_param(module))
            if module.bias is not None:
                params.append(module.bias)
        return params

    def _perturb_output(
        self, module: nn.Module, x: Tensor, output: Tensor, factors: dict[str, Tensor],
        gen: torch.Generator, direction: Tensor, sign: Tensor, replicas: int,
    ) -> None:  # fmt: skip
        out = output.view(replicas, -1, *output.shape[1:])
        xs = x.view(replicas, -1, *x.shape[1:])
        if "bias" in factors:  # output features: dim 1 of a conv, the last dim of a Linear
            bshape = (replicas, 1, -1) + (1,) * (output.ndim - 2)
            if not is_conv(module):
                bshape = (replicas,) + (1,) * (output.ndim - 1) + (-1,)
            out.add_((factors["bias"][direction] * sign[:, None]).view(bshape), alpha=self.sigma)
        structure = self.perturbation_structure
        multiplicative = self._multiplicative(module)
        if not multiplicative:  # additive: the structure's batched product, where it has one
            if structure.add_output_delta(module, out, xs, factors, direction, sign, self.sigma):
                return
        weight = module.weight if multiplicative else None  # cached: no recompute
        like = weight_param(module)
        for k in range(self.num_directions):
            rows = torch.nonzero((direction == k) & (sign != 0)).flatten()
            p = structure.direction(factors, k, like, self.noise, gen)
            if weight is not None:
                p = p * weight
            chunk = xs[rows].reshape(-1, *x.shape[1:])
            delta = _apply(module, chunk, p).view(len(rows), -1, *output.shape[1:])
            out[rows] += delta * (self.sigma * sign[rows]).view(-1, *([1] * output.ndim))

    def _accumulate(self, module: nn.Module, factors: dict[str, Tensor], coeff: Tensor,
                    gen: torch.Generator | None) -> None:  # fmt: skip
        if "bias" in factors:
            accumulate_param_grad(module.bias, coeff @ factors["bias"])
        param = weight_param(module)
        multiplicative = self._multiplicative(module)
        structure = self.perturbation_structure
        # the raw tensor receives the update in place where nothing maps it (θ itself, or an
        # unparametrised weight); else it goes through the parametrisation's chain rule
        direct = multiplicative or not is_weight_parametrized(module)
        if direct and structure.accumulates_in_place:
            if param.grad is not None:
                structure.update(factors, coeff, param, self.noise, gen, into=param.grad)
                return
            outer = structure.outer_factors(factors, coeff, param)
            if outer is not None and write_outer_in_place(param, *outer):  # inplace_update
                return
        grad = structure.update(factors, coeff, param, self.noise, gen)
        if multiplicative:
            accumulate_param_grad(param, grad)
        else:
            accumulate_weight_grad(module, grad)
