"""Robustness at the end of ``trainer.test()``, for any LightningModule whose forward gives logits.

From the CLI::

    bioplausible-lightning test ... \\
        --trainer.callbacks+=bioplausible_lightning.evaluation.RobustnessCallback \\
        --trainer.callbacks.eps='[0.05, 0.1]' --trainer.callbacks.output=robustness.json

Add ``transfer`` with ``--trainer.callbacks.source_model`` (the architecture, e.g.
``bioplausible_lightning.BioMLP`` with its init args) and ``--trainer.callbacks.source_checkpoint``
(e.g. the checkpoint of a ``BackpropModule`` run).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from .._validation import check_choice
from ._common import collect
from .robustness import ATTACKS, AttackConfig, RobustnessResult, evaluate_robustness


class RobustnessCallback(Callback):
    """Runs :func:`evaluate_robustness` on the test data when a test epoch ends.

    Logs ``robust/<attack>@<eps>`` and ``robust/clean`` through the module's logger, keeps
    the full result in :attr:`result` and optionally writes it as JSON.  The attacks run
    under ``torch.enable_grad()`` inside Lightning's inference-mode test loop; gradients
    are taken w.r.t. inputs only and the model's parameters are left untouched.

    Args:
        eps: L∞ budgets in pixel units ([0, 1] inputs).
        attacks: Any of ``"fgsm"``, ``"pgd"``, ``"square"``, ``"transfer"``.
        max_samples: Test examples attacked (the first ones of the test loader).
        pgd_steps: PGD iterations.
        pgd_restarts: PGD random restarts.
        square_queries: Square attack query budget.
        source_model: Model to craft transfer examples on (e.g. the backprop baseline);
            without it ``"transfer"`` is skipped and said so in the result.
        source_checkpoint: Weights for ``source_model``: a Lightning checkpoint of a module
            wrapping it as ``.model`` (e.g. a ``BackpropModule``) or a plain state dict.
        output: Optional path of a JSON file for the result.
        seed: Seed of the attacks' random starts and of the test-subset draw.
    """

    def __init__(
        self,
        eps: Sequence[float] = (0.05, 0.1, 0.2),
        attacks: Sequence[str] = ("fgsm", "pgd", "square"),
        max_samples: int = 1000,
        pgd_steps: int = 20,
        pgd_restarts: int = 1,
        square_queries: int = 1000,
        source_model: nn.Module | None = None,
        source_checkpoint: str | None = None,
        output: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for i, attack in enumerate(attacks):
            check_choice(f"attacks[{i}]", attack, ATTACKS)
        self.eps = [float(e) for e in eps]
        self.attacks = list(attacks)
        self.max_samples = max_samples
        self.config = AttackConfig(
            pgd_steps=pgd_steps, pgd_restarts=pgd_restarts, square_queries=square_queries, seed=seed
        )
        if source_checkpoint is not None:
            if source_model is None:
                raise ValueError(
                    f"source_checkpoint={source_checkpoint!r} needs source_model (the "
                    "architecture to load the weights into)."
                )
            load_source_weights(source_model, source_checkpoint)
        self.source_model = source_model
        self.seed = seed
        self.output = Path(output) if output is not None else None
        self.result: RobustnessResult | None = None

    def _test_data(self, trainer: L.Trainer):
        loaders = trainer.test_dataloaders
        if loaders is None and trainer.datamodule is not None:
            loaders = trainer.datamodule.test_dataloader()
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        if loaders is None:
            raise ValueError("RobustnessCallback found no test dataloader on the trainer.")
        # a random subset: test sets may be sorted by class (e.g. image folders)
        x, y = collect(loaders)
        generator = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(x.shape[0], generator=generator)[: self.max_samples]
        return x[idx], y[idx]

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = self._test_data(trainer)
        data = (data[0].to(pl_module.device), data[1].to(pl_module.device))
        self.result = evaluate_robustness(
            pl_module, data, self.eps, self.attacks, self.config, self.source_model,
            max_samples=self.max_samples,
        )  # fmt: skip
        pl_module.log("robust/clean", self.result.clean_accuracy)
        for attack, accs in self.result.accuracy.items():
            for e, acc in zip(self.result.eps, accs, strict=True):
                pl_module.log(f"robust/{attack}@{e:g}", acc)
        if self.output is not None and trainer.is_global_zero:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.result.to_dict(), indent=2, ensure_ascii=False)
            self.output.write_text(text, encoding="utf-8")


def load_source_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a Lightning checkpoint (keys ``model.*``) or a plain state dict into ``model``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    if any(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval()


__all__ = ["RobustnessCallback", "load_source_weights"]
