"""Node perturbation: perturb each layer's *activity*, keep what lowered the loss.

Every example gets its own perturbation ξ of a layer's pre-activations, so one batch
yields one loss difference *per example*: ``δ = ΔL · ξ / σ`` estimates ``dL/da`` for that
example and layer, and the layer's update is the local product of ``δ`` with the layer's
own input (``δ xᵀ`` for a linear layer, the matching correlation for a convolution) —
the form of a three-factor Hebbian rule.  The estimate's variance grows with the number
of *units* rather than the number of weights, which is why it learns far faster than
weight perturbation on the same budget.

Per-example credit assumes that one example's perturbation changes only its own loss.
``BatchNorm`` in train mode breaks that (batch statistics couple the examples), so layers
that run before such a module get the replica's *summed* loss difference as every
example's credit instead: still an unbiased estimate, with more variance (BatchNorm in
eval mode, ``GroupNorm`` or ``LayerNorm`` keep per-example credit).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from .._replicas import batch_coupled_modules
from .._validation import check_bool
from ..losses import PerSampleLoss
from .base import Estimator, NoiseKind, PerturbationRule, ReplicateAt, sample_noise
from .layers import (
    accumulate_param_grad,
    accumulate_weight_grad,
    conv_input_and_padding,
    is_conv,
    is_weight_parametrized,
    write_outer_in_place,
)
from .rule import RuleOutput


class NodePerturbation(PerturbationRule):
    """Layer-local, per-sample node (activity) perturbation.

    Args:
        sigma: Standard deviation of the pre-activation perturbation (> 0).
        num_directions: Perturbations per example averaged per step (>= 1; the default 8
            is what reaches backprop's accuracy on the digits).
        estimator: ``"antithetic"`` (default) or ``"forward"``.
        noise: ``"gaussian"`` or ``"rademacher"``.
        layerwise: Perturb one layer at a time (one replica block per layer, all in one
            batched forward).  Removes the other layers' perturbations from each layer's
            loss difference, i.e. less variance, at ``num_layers`` × the forward cost.
        layers: Optional ``fnmatch`` patterns of the module names to train.
        seed: Seed of the rule's generator.
        replicate_at: ``"input"`` or ``"first_target"`` (see :class:`PerturbationRule`).
    """

    def __init__(
        self,
        sigma: float = 0.1,
        num_directions: int = 8,
        estimator: Estimator = "antithetic",
        noise: NoiseKind = "gaussian",
        layerwise: bool = True,
        layers: Sequence[str] | None = None,
        seed: int = 0,
        *,
        replicate_at: ReplicateAt = "input",
    ) -> None:
        super().__init__(sigma, num_directions, estimator, noise, layers, seed,
                         replicate_at=replicate_at)  # fmt: skip
        check_bool("layerwise", layerwise)
        self.layerwise = layerwise
        self._warned_coupled = False

    @torch.no_grad()
    def estimate(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        inputs: Tensor,
        targets: Tensor,
        grad_scale: float = 1.0,
    ) -> RuleOutput:
        layers = self.targets(model)
        batch = inputs.shape[0]
        block = self.replicas_per_block
        num_blocks = len(layers) if self.layerwise else 1
        replicas = block * num_blocks
        generator = self.step_generator(inputs.device)  # independent across processes
        direction, sign = self.replica_signs(inputs.device, inputs.dtype)
        records: dict[int, tuple[Tensor, Tensor]] = {}
        order: list[int | None] = []  # target indices as their hooks fire; None: a BatchNorm

        def make_hook(index: int, name: str):
            start = index * block if self.layerwise else 0

            def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
                if index in records:
                    raise RuntimeError(
                        f"NodePerturbation: layer {name!r} ran twice in one forward pass; "
                        "shared (re-used) layers are not supported."
                    )
                out = output.view(replicas, batch, *output.shape[1:])
                noise = sample_noise(
                    (self.num_directions, batch, *output.shape[1:]), self.noise, generator, output
                )
                shape = (block, 1) + (1,) * (output.ndim - 1)
                out[start : start + block].add_(
                    noise[direction] * sign.view(shape), alpha=self.sigma
                )
                x = args[0].view(replicas, batch, *args[0].shape[1:])[start : start + block]
                x = self.finite_difference.direction_inputs(x)
                records[index] = (x, noise)
                order.append(index)
                return output

            return hook

        hooks = {module: make_hook(i, name) for i, (name, module) in enumerate(layers)}
        for module in batch_coupled_modules(model):
            hooks.setdefault(module, lambda *_: order.append(None))
        with self.hooked(hooks):
            losses, logits = self.replicated_losses(model, loss_fn, inputs, targets, replicas)
        self.check_ran(layers, records)
        pooled = self._pooled_credit(order)
        summary_losses = losses[:block]
        loss, mean_logits = self.summarize(summary_losses, logits[:block])
        if not self.estimable(losses):
            return RuleOutput(loss, mean_logits, finite=False)

        scale = grad_scale / (self.num_directions * batch)
        for index, (_, module) in enumerate(layers):
            x, noise = records[index]
            start = index * block if self.layerwise else 0
            coeff = self.directional_coefficients(losses[start : start + block])  # (K, B)
            if index in pooled:  # batch-coupled downstream: the whole batch's loss change
                coeff = coeff.sum(1, keepdim=True).expand_as(coeff)
            delta = noise * coeff.view(*coeff.shape, *([1] * (noise.ndim - 2)))
            self._accumulate(module, x, delta, scale)
        rpe = self.reward_prediction_error(summary_losses.mean(1))  # the first block's
        return RuleOutput(loss, mean_logits, finite=True, rpe=rpe)

    def _pooled_credit(self, order: list[int | None]) -> set[int]:
        """Target layers that ran before the last batch-coupled module."""
        if None not in order:
            return set()
        last = len(order) - 1 - order[::-1].index(None)
        pooled = {index for index in order[:last] if index is not None}
        if pooled and not self._warned_coupled:
            self._warned_coupled = True
            warnings.warn(
                "NodePerturbation: the model has BatchNorm in train mode, which couples the "
                "examples of a batch; the layers before it use the batch's summed loss change "
                "as credit (unbiased, but noisier). Put BatchNorm in eval mode or use "
                "GroupNorm/LayerNorm to keep per-example credit.",
                stacklevel=3,
            )
        return pooled

    @staticmethod
    def _accumulate(module: nn.Module, x: Tensor, delta: Tensor, scale: float) -> None:
        """Layer-local update: correlate ``delta`` with the layer's input."""
        delta = delta * scale  # small: scale here, not the weight-sized product
        if is_conv(module):
            flat_x, padding = conv_input_and_padding(module, x.reshape(-1, *x.shape[2:]))
            flat_delta = delta.reshape(-1, *delta.shape[2:])
            grad_w = conv2d_weight(
                flat_x, module.weight.shape, flat_delta,
                module.stride, padding, module.dilation, module.groups,
            )  # fmt: skip
            grad_b = flat_delta.sum(dim=(0, 2, 3))
        else:
            flat_x = x.reshape(-1, x.shape[-1])
            flat_delta = delta.reshape(-1, delta.shape[-1])
            grad_b = flat_delta.sum(0)
            grad_w = None
            # inplace_update: the outer product goes into the weight itself, unformed
            if is_weight_parametrized(module) or not write_outer_in_place(
                module.weight, flat_delta.T, flat_x.T
            ):
                grad_w = flat_delta.T @ flat_x
        if grad_w is not None:
            accumulate_weight_grad(module, grad_w)
        if module.bias is not None and module.bias.requires_grad:
            accumulate_param_grad(module.bias, grad_b)
