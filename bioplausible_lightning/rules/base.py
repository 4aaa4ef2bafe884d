"""The protocol every learning rule follows, and the machinery the two rules share.

A rule evaluates the model on several perturbed copies of one mini-batch *in a single
forward pass* (the batch is replicated; forward hooks add each replica's perturbation to
the layer outputs, so the weights themselves are never modified), turns the loss
differences into a gradient estimate, and *adds* it into ``p.grad``.  The user's torch
optimizer then steps, so schedulers, clipping and accumulation work as usual.  No
``backward()`` or ``torch.autograd.grad`` is ever called: everything runs under
``torch.no_grad()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Container, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._replicas import replicated_forward
from .._validation import check_choice, check_int, check_min_int, check_names, check_positive
from ..distributed import Reducer
from ..losses import PerSampleLoss
from .layers import find_target_layers
from .rule import LearningRule, PerModel

#: Seeds of the per-step generators are drawn from ``[0, SEED_RANGE)``.
SEED_RANGE = 2**62

Estimator = Literal["antithetic", "forward"]
NoiseKind = Literal["gaussian", "rademacher"]
ReplicateAt = Literal["input", "first_target"]


def sample_noise(
    shape: Sequence[int], kind: str, generator: torch.Generator, like: Tensor
) -> Tensor:
    """Zero-mean, unit-variance noise of ``shape`` on ``like``'s device and dtype."""
    if kind == "rademacher":
        bits = torch.randint(0, 2, tuple(shape), generator=generator, device=like.device)
        return bits.to(like.dtype).mul_(2).sub_(1)
    return torch.randn(tuple(shape), generator=generator, device=like.device, dtype=like.dtype)


class FiniteDifference:
    """How an estimator lays out its replicas and turns their losses into coefficients.

    One job: the finite difference.  A block of replicas holds every direction's perturbed
    passes (and the clean one, for a forward difference); :meth:`replica_signs` says which
    direction and sign each replica carries, :meth:`coefficients` turns the block's losses
    into one directional derivative per direction.  The rules ask the instance named by
    their ``estimator`` setting (:data:`ESTIMATORS`).
    """

    def replicas(self, num_directions: int) -> int:
        """Replicas one block of ``num_directions`` directions needs."""
        raise NotImplementedError

    def replica_signs(
        self, num_directions: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """``(direction index, sign)`` of each replica in a block; a clean replica has sign 0."""
        raise NotImplementedError

    def coefficients(self, block_losses: Tensor, sigma: float) -> Tensor:
        """Per-direction finite differences ``(K, ...)`` from a block's losses ``(R, ...)``."""
        raise NotImplementedError

    def reward_prediction_error(self, block_losses: Tensor) -> Tensor:
        """Per-direction loss minus the loss expected of it (see
        :meth:`PerturbationRule.reward_prediction_error`)."""
        raise NotImplementedError

    def summarize(self, losses: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The batch loss and logits reported for metrics, from a block ``(R, B, ...)``."""
        raise NotImplementedError

    def direction_inputs(self, x: Tensor) -> Tensor:
        """A layer's input to pair with each direction ``(K, ...)``, from a block's ``(R, ...)``."""
        raise NotImplementedError


class Antithetic(FiniteDifference):
    """``(f(θ + σz) − f(θ − σz)) / 2σ``: a (+) and a (−) replica per direction; half the
    variance of a forward difference for the same two passes."""

    def replicas(self, num_directions: int) -> int:
        return 2 * num_directions

    def replica_signs(
        self, num_directions: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        direction = torch.arange(num_directions, device=device).repeat_interleave(2)
        sign = torch.tensor([1.0, -1.0], device=device, dtype=dtype).repeat(num_directions)
        return direction, sign

    def coefficients(self, block_losses: Tensor, sigma: float) -> Tensor:
        return (block_losses[0::2] - block_losses[1::2]) / (2 * sigma)

    def reward_prediction_error(self, block_losses: Tensor) -> Tensor:
        return (block_losses[0::2] - block_losses[1::2]) / 2

    def summarize(self, losses: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        return losses.mean(), logits.mean(0)

    def direction_inputs(self, x: Tensor) -> Tensor:
        return (x[0::2] + x[1::2]) / 2  # ≈ the unperturbed input, to O(σ²)


class ForwardDifference(FiniteDifference):
    """``(f(θ + σz) − f(θ)) / σ``: one clean replica first, then one per direction."""

    def replicas(self, num_directions: int) -> int:
        return num_directions + 1

    def replica_signs(
        self, num_directions: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        direction = torch.cat([torch.zeros(1, device=device, dtype=torch.long),
                               torch.arange(num_directions, device=device)])  # fmt: skip
        sign = torch.cat([torch.zeros(1, device=device, dtype=dtype),
                          torch.ones(num_directions, device=device, dtype=dtype)])  # fmt: skip
        return direction, sign

    def coefficients(self, block_losses: Tensor, sigma: float) -> Tensor:
        return (block_losses[1:] - block_losses[:1]) / sigma

    def reward_prediction_error(self, block_losses: Tensor) -> Tensor:
        return block_losses[1:] - block_losses[:1]

    def summarize(self, losses: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        return losses[0].mean(), logits[0]

    def direction_inputs(self, x: Tensor) -> Tensor:
        return x[1:]


#: The estimator of each ``estimator=`` setting.
ESTIMATORS: dict[str, FiniteDifference] = {
    "antithetic": Antithetic(),
    "forward": ForwardDifference(),
}


def rank_seed(seed: int, rank: int) -> int:
    """A seed for process ``rank`` derived from a shared ``seed`` (rank 0 keeps it)."""
    return (seed + 0x9E3779B97F4A7C15 * rank) % SEED_RANGE


class PerturbationRule(LearningRule):
    """Base class: replicate, perturb through hooks, measure per-sample losses, estimate.

    Args:
        sigma: Perturbation scale (> 0).
        num_directions: Independent perturbations averaged per step (>= 1).
        estimator: ``"antithetic"`` — (f(+σz) − f(−σz)) / 2σ, half the variance for the same
            two passes — or ``"forward"`` — (f(+σz) − f(0)) / σ.
        noise: ``"gaussian"`` or ``"rademacher"`` (±1: cheaper to draw, same variance).
        layers: Optional ``fnmatch`` patterns of module names to train; default all
            supported layers (``nn.Linear``, ``nn.Conv2d``; parametrised ones
            too, e.g. under Dale's law).
        seed: Seed of the rule's own generator (its state is saved in checkpoints).  Under
            multi-process training every process holds the same generator; where
            independent noise lowers the variance (node perturbation), each process draws
            its noise from one draw of it and its rank (:meth:`step_generator`).
        replicate_at: Where the batch is replicated: at the model's ``"input"`` (default,
            works for every model), or at the input of the ``"first_target"`` layer that
            runs, so the layers before it run once instead of once per replica — a large
            saving when only a readout is perturbed.  Needs a model in which nothing from
            before that layer bypasses it (a skip connection around it fails with a shape
            error).
    """

    def __init__(
        self,
        sigma: float,
        num_directions: int = 1,
        estimator: Estimator = "antithetic",
        noise: NoiseKind = "gaussian",
        layers: Sequence[str] | None = None,
        seed: int = 0,
        *,
        replicate_at: ReplicateAt = "input",
    ) -> None:
        check_positive("sigma", sigma)
        check_choice("replicate_at", replicate_at, ("input", "first_target"))
        check_min_int("num_directions", num_directions, 1)
        check_choice("estimator", estimator, ("antithetic", "forward"))
        check_choice("noise", noise, ("gaussian", "rademacher"))
        self.layers = check_names("layers", layers)
        check_int("seed", seed)
        self.sigma = float(sigma)
        self.num_directions = num_directions
        self.estimator = estimator
        self.noise = noise
        self.seed = seed
        self.replicate_at = replicate_at
        self._generator: torch.Generator | None = None
        self._pending_state: Tensor | None = None
        self._targets: PerModel[list[tuple[str, nn.Module]]] = PerModel()

    # -- replicas ------------------------------------------------------------------------
    @property
    def finite_difference(self) -> FiniteDifference:
        """The estimator object of the ``estimator`` setting (:data:`ESTIMATORS`)."""
        return ESTIMATORS[self.estimator]

    @property
    def replicas_per_block(self) -> int:
        """Replicas one set of directions needs: 2K (antithetic) or K + 1 (forward)."""
        return self.finite_difference.replicas(self.num_directions)

    def replica_signs(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(direction index, sign)`` of each replica in a block; the clean replica has sign 0."""
        return self.finite_difference.replica_signs(self.num_directions, device, dtype)

    def directional_coefficients(self, block_losses: Tensor) -> Tensor:
        """Per-direction finite differences ``(K, ...)`` from a block's losses ``(R, ...)``."""
        return self.finite_difference.coefficients(block_losses, self.sigma)

    def reward_prediction_error(self, block_losses: Tensor) -> Tensor:
        """Per-direction reward prediction error ``(K,)`` from a block's mean losses ``(R,)``.

        ``rpe_k = L(θ + σ z_k) − E_k``: the batch-mean loss of direction k's (+) replica minus
        the loss the rule expected of it, with the expectation

        * ``"forward"``: the clean replica's loss ``L(θ)`` — so ``rpe.mean()`` is the expected
          loss of the perturbed replicas minus the actual loss of the unperturbed model;
        * ``"antithetic"``: the mean of the pair, ``(L(θ + σz_k) + L(θ − σz_k)) / 2`` — so
          ``rpe_k = (L(θ + σz_k) − L(θ − σz_k)) / 2``.

        In reward terms (reward = −loss) it is the reward of the expectation minus that of
        the perturbed outcome: > 0 when the perturbation did worse than expected (a regret),
        < 0 when it did better.  Both are ``σ ∇L·z_k + O(σ²)``: the directional differences
        the estimate is made of, times σ, so it costs nothing extra.
        """
        return self.finite_difference.reward_prediction_error(block_losses)

    # -- generator state (checkpointed) ---------------------------------------------------
    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if self._pending_state is not None:
                gen.set_state(self._pending_state)
                self._pending_state = None
            elif self._generator is not None:
                gen.set_state(self._generator.get_state())
            self._generator = gen
        return self._generator

    def step_generator(self, device: torch.device, independent: bool = True) -> torch.Generator:
        """The generator of this step's noise.

        One process: the rule's own generator, as always.  Under multi-process training with
        ``independent=True``: a fresh generator seeded from one draw of the rule's generator
        *and the rank*, so every process draws different noise (averaging their estimates
        then reduces the variance) while the rule's generator itself advances identically on
        every process — rank 0's checkpoint then resumes every rank exactly.
        """
        gen = self.generator(device)
        if self._world_size == 1 or not independent:
            return gen
        step_seed = int(torch.randint(0, SEED_RANGE, (1,), generator=gen, device=device))
        ranked = torch.Generator(device=device)
        ranked.manual_seed(rank_seed(step_seed, self._rank))
        return ranked

    def synchronize(self, reducer: Reducer) -> None:
        """Nothing to average: the generator advances identically on every process."""

    def state_dict(self) -> dict[str, Any]:
        """The perturbation RNG state: restoring it makes resumed runs bit-identical."""
        state = self._pending_state
        if self._generator is not None:
            state = self._generator.get_state()
        return {"seed": self.seed, "generator_state": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = state["seed"]
        self._pending_state = state["generator_state"]
        if self._generator is not None and self._pending_state is not None:
            self._generator.set_state(self._pending_state)
            self._pending_state = None

    # -- shared helpers -------------------------------------------------------------------
    def targets(self, model: nn.Module, warn_unowned: bool = True) -> list[tuple[str, nn.Module]]:
        targets = self._targets.get(model)
        if targets is None:
            targets = self._targets.set(model, find_target_layers(
                model, self.layers, type(self).__name__, warn_unowned=warn_unowned))  # fmt: skip
        return targets

    @staticmethod
    @contextlib.contextmanager
    def hooked(hooks: dict[nn.Module, Callable]) -> Iterator[None]:
        handles: list[RemovableHandle] = []
        try:
            for module, hook in hooks.items():
                handles.append(module.register_forward_hook(hook))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def check_ran(self, layers: list[tuple[str, nn.Module]], ran: Container[int]) -> None:
        """Raise naming every target layer whose forward hook did not fire in the pass."""
        missing = [name for index, (name, _) in enumerate(layers) if index not in ran]
        if missing:
            raise RuntimeError(
                f"{type(self).__name__}: target layer(s) {missing} did not run in the forward "
                "pass, so no estimate can be formed for them. Typical causes: the layer's "
                "weight is used functionally (F.linear(x, layer.weight)) instead of calling "
                "the layer, it is an unused head, or it sits inside a torch.compile'd "
                "submodule. Call the layer itself, or leave it out with `layers=[...]` "
                "(fnmatch patterns of the layers to train)."
            )

    def replicated_losses(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        inputs: Tensor,
        targets: Tensor,
        replicas: int,
    ) -> tuple[Tensor, Tensor]:
        """Run all replicas as one batch; return per-sample losses ``(R, B)`` and logits.

        Dropout masks are shared by the replicas of an example and BatchNorm normalises each
        replica with its own batch statistics (:func:`~bioplausible_lightning._replicas.
        replicated_forward`), so the loss differences measure the perturbations only.
        """
        batch = inputs.shape[0]

        def replicate(x: Tensor) -> Tensor:
            return x.repeat(replicas, *([1] * (x.ndim - 1)))

        if self.replicate_at == "input":
            with replicated_forward(model, batch, replicas):
                logits = model(replicate(inputs))
        else:
            done = []

            def at_first_target(module: nn.Module, args: tuple) -> tuple | None:
                if done:
                    return None
                done.append(True)
                return (replicate(args[0]), *args[1:])

            handles = [module.register_forward_pre_hook(at_first_target)
                       for _, module in self.targets(model)]  # fmt: skip
            try:
                with replicated_forward(model, batch, replicas):
                    logits = model(inputs)
            finally:
                for handle in handles:
                    handle.remove()
        if logits.shape[0] != replicas * batch:
            raise ValueError(
                f"{type(self).__name__}: the model returned {logits.shape[0]} rows for "
                f"{replicas} replicas of a batch of {batch}; with replicate_at='first_target' "
                "every layer after the first perturbed one must keep the replicated batch."
            )
        losses = loss_fn(logits, targets.repeat(replicas))
        if losses.shape != (replicas * batch,):
            raise ValueError(
                f"loss must return one value per example (shape ({replicas * batch},)), got "
                f"{tuple(losses.shape)}; use reduction='none'."
            )
        return losses.view(replicas, batch), logits.view(replicas, batch, *logits.shape[1:])

    @staticmethod
    def estimable(losses: Tensor) -> bool:
        """Whether an estimate can be formed: every loss finite, and at least one (an empty
        batch is reported like a non-finite one: ``finite=False``, no ``.grad`` written)."""
        return losses.numel() > 0 and bool(torch.isfinite(losses).all())

    def summarize(self, losses: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The batch loss and logits reported for metrics (clean replica when there is one)."""
        return self.finite_difference.summarize(losses, logits)
