"""Wall time of each Hebbian preset's label-free stage vs. the peer's own figure.

``../shared/anchors.md`` times the peers' reference implementations on one CPU thread of this
machine, on MNIST-5k's 4,500 training images: Krotov–Hopfield's unsupervised stage 376 s,
SoftHebb's 47 s.  This script runs each preset's config (``examples/mnist_*.yaml``) through
Lightning for exactly its label-free stage (the ``readout_start`` updates before the readout
starts learning), on one thread, and prints the ratio to the peer's time (< 1: faster).

    python benchmarks/hebbian_presets.py                       # both presets
    python benchmarks/hebbian_presets.py --data-dir PATH/mnist-5k

Skips cleanly when the data folder is absent.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import lightning as L
import torch

from bioplausible_lightning.data import MNISTDataModule
from bioplausible_lightning.evaluation.learners import Learner, LearnerRun

ROOT = Path(__file__).resolve().parents[1]
#: (config, the peer's label-free time in seconds on one thread, from ../shared/anchors.md)
PRESETS = {
    "krotov-hopfield": ("examples/mnist_krotov.yaml", 376.0),
    "softhebb": ("examples/mnist_softhebb.yaml", 47.0),
}


def label_free_seconds(config: str, data_dir: str) -> tuple[float, int, float]:
    """``(seconds, updates, epochs)`` of the config's label-free stage."""
    run = LearnerRun(Learner("preset", config))
    data = MNISTDataModule(data_dir=data_dir, download=False, batch_size=run.batch_size, seed=0)
    data.prepare_data()
    data.setup("fit")
    module = run.module(run.model(data, seed=0))
    steps = int(module.rule.readout_start)
    if steps < 1:
        raise ValueError(f"{config}: readout_start is 0, the config has no label-free stage.")
    trainer = L.Trainer(
        max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, data)
    seconds = time.perf_counter() - start
    epochs = steps / math.ceil(len(data.train_set) / run.batch_size)
    return seconds, steps, epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist-5k"))
    names = ",".join(PRESETS)
    p.add_argument("--presets", default=names, help=f"comma list of {names}")
    args = p.parse_args()
    if not Path(args.data_dir, "MNIST").is_dir():
        print(f"skipped: no MNIST under {args.data_dir}")
        return
    torch.set_num_threads(1)
    print("| preset | label-free updates | epochs | this package | peer | ratio |")
    print("|---|---|---|---|---|---|")
    for name in args.presets.split(","):
        config, peer = PRESETS[name]
        seconds, steps, epochs = label_free_seconds(str(ROOT / config), args.data_dir)
        print(f"| {name} | {steps} | {epochs:.1f} | {seconds:.1f} s | {peer:.0f} s | "
              f"{seconds / peer:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
