"""Two published Hebbian methods as presets of :class:`CompetitiveHebbian`.

Both are competitive Hebbian rules of the paper's family, so they run on the same machinery
(any model, ``p.grad``, the rule's own SGD, checkpoints) and can sit beside the paper's rule
in every report.  The presets fix the peers' published settings; every argument can still be
overridden.  Models with the peers' architectures are in
:mod:`bioplausible_lightning.nn.peers`; ready-made configs in ``examples/``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .hebbian import CompetitiveHebbian, StepNormalization


class KrotovHopfield(CompetitiveHebbian):
    """Krotov & Hopfield (2019), "Unsupervised learning by competing hidden units".

    The strongest unit of each example learns Hebbian, the ``k``-th strongest anti-Hebbian
    with strength ``Δ``; units respond with the Lebesgue-p product (give the layer a
    :class:`~bioplausible_lightning.nn.LebesguePower` weight, as
    :class:`~bioplausible_lightning.nn.HebbianMLP` does with ``lebesgue_p=3``), the update
    acts on the synapses and is divided by its largest entry, and the rate falls linearly to
    zero over ``lr_decay_steps``.  MNIST settings: p = 3, k = 7, Δ = 0.4, rate 0.02.

    Args:
        lr: Initial rate (``ε₀``).
        k: The anti-Hebbian rank (>= 2).
        anti_hebbian: ``Δ``, in [0, 1].
        lr_decay_steps: Updates over which the rate decays to zero (None: constant).
        layers, layer_steps: As for :class:`CompetitiveHebbian`.
    """

    def __init__(
        self,
        lr: float = 0.02,
        k: int = 7,
        anti_hebbian: float = 0.4,
        lr_decay_steps: int | None = None,
        layers: Sequence[str] | None = None,
        layer_steps: int | None = None,
    ) -> None:
        super().__init__(
            lr=lr, competition="rank", k=k, homeostasis=0.0, layers=layers,
            layer_steps=layer_steps, similarity="dot", anti_hebbian=anti_hebbian,
            normalize="max", lr_decay_steps=lr_decay_steps,
        )  # fmt: skip


class SoftHebb(CompetitiveHebbian):
    """SoftHebb (Moraitis et al. 2022; Journé et al., ICLR 2023).

    A soft winner-take-all ``y = softmax(u / T)`` on the units' responses ``u = w·x``, the
    update ``Δw_i = η_i y_i (x − u_i w_i)`` with the per-unit rate
    ``η_i = η sqrt(|‖w_i‖ − 1|)`` that slows converged units down; ``anti_hebbian=1`` gives
    the 2023 paper's soft anti-Hebbian plasticity (every unit but the winner moves away).
    MNIST settings: one layer of 2000 units, inverse temperature 12 (``T = 1/12``).

    Args:
        lr: Rate ``η``; or one per layer (the conv network's 0.08 / 0.03 / 0.06).
        temperature: ``T`` (> 0), the inverse of SoftHebb's ``t_inv``; or one per layer
            (the conv network's ``t_inv`` 1 / 0.65 / 0.25).
        anti_hebbian: 0 (MNIST, 2022) or 1 (the 2023 conv networks).
        lr_decay_steps: Optional linear decay of the rate to zero.
        layers, layer_steps: As for :class:`CompetitiveHebbian`.
        normalize: ``"unit"`` (MNIST) or ``"max"``: the layer's update divided by its
            largest entry, then scaled per unit (the 2023 conv networks' step).
    """

    def __init__(
        self,
        lr: float | Sequence[float] = 0.05,
        temperature: float | Sequence[float] = 1 / 12,
        anti_hebbian: float = 0.0,
        lr_decay_steps: int | None = None,
        layers: Sequence[str] | None = None,
        layer_steps: int | None = None,
        normalize: StepNormalization = "unit",
    ) -> None:
        super().__init__(
            lr=lr, competition="soft", temperature=temperature, homeostasis=0.0,
            adaptive_rate=True, layers=layers, layer_steps=layer_steps, similarity="dot",
            anti_hebbian=anti_hebbian, normalize=normalize, lr_decay_steps=lr_decay_steps,
        )  # fmt: skip
