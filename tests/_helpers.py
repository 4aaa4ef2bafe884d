"""Shared test helpers (tests/ is on sys.path under pytest's default import mode)."""

import lightning as L


def quiet_trainer(tmp_path=None, **kwargs) -> L.Trainer:
    """A deterministic Trainer without logger, checkpoints, progress bar or summary."""
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, deterministic=True)  # fmt: skip
    if tmp_path is not None:
        defaults["default_root_dir"] = tmp_path
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def trap_autograd(monkeypatch) -> None:
    """Make every backward() / autograd.grad call fail for the rest of the test."""
    import torch

    def trap(*args, **kwargs):
        raise AssertionError("backward() / autograd.grad called during training")

    monkeypatch.setattr(torch.Tensor, "backward", trap)
    monkeypatch.setattr(torch.autograd, "backward", trap)
    monkeypatch.setattr(torch.autograd, "grad", trap)
