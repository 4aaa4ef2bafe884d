"""Bytes all-reduced per step and step time of each learner at 1 and N processes (DDP).

One run fits, for each learner — backprop (``BackpropModule``), node perturbation and
seed-shared weight perturbation (``PerturbationModule``) — a short Lightning run at 1 process
and at ``--processes`` processes with ``strategy="ddp"``, on the ~11.2 M-parameter MLP of
``benchmarks/step_cost.py`` (``--quick``: a 0.27 M-parameter one), with random inputs and a
fixed per-process batch (weak scaling: N processes train on N × the examples per step).

    python benchmarks/distributed.py                  # CPU, gloo, 1 and 2 processes
    python benchmarks/distributed.py --quick          # a small MLP, a few seconds a run
    python benchmarks/distributed.py --accelerator gpu --processes 4   # NCCL, unchanged

Bytes are what one process hands to the collectives during a training step: every
``torch.distributed.all_reduce`` / ``broadcast`` call (the module's own communication) plus,
for backprop, the gradient buckets DDP all-reduces inside ``backward()`` (counted by a DDP
communication hook).  Step time is the median wall time of a training step on rank 0,
Lightning's per-step overhead included, after warm-up steps.  Each configuration runs in
its own process group (a fresh interpreter).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

LEARNERS = ("backprop", "node perturbation", "weight perturbation (seed-shared)")
QUICK_SIZES = (784, 256, 256, 10)


def _worker(args: argparse.Namespace) -> None:
    """One configuration: fit, time the steps, count the bytes; rank 0 writes JSON."""
    import lightning as L
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset

    sys.path.insert(0, str(Path(__file__).parent))
    from step_cost import SIZES

    from bioplausible_lightning import (
        BackpropModule,
        NodePerturbation,
        PerturbationModule,
        WeightPerturbation,
    )

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    sent = {"bytes": 0}

    def counted(fn):
        def wrapper(tensor, *a, **k):
            sent["bytes"] += tensor.numel() * tensor.element_size()
            return fn(tensor, *a, **k)

        return wrapper

    dist.all_reduce = counted(dist.all_reduce)
    dist.broadcast = counted(dist.broadcast)

    def counting_hook(state, bucket):
        # DDP's own all-reduce of a gradient bucket, routed through the counted Python
        # torch.distributed.all_reduce (DDP's built-in path runs in C++, unseen)
        return default_hooks.allreduce_hook(state, bucket)

    sizes = QUICK_SIZES if args.quick else SIZES
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    sgd = lambda params: torch.optim.SGD(params, lr=1e-4)  # noqa: E731
    if args.worker == "backprop":
        module = BackpropModule(model, optimizer=sgd)
    elif args.worker == "node perturbation":
        rule = NodePerturbation(num_directions=1, layerwise=False)
        module = PerturbationModule(model, rule, optimizer=sgd)
    else:
        module = PerturbationModule(model, WeightPerturbation(), optimizer=sgd)

    steps = args.warmup + args.steps
    n = steps * args.batch_size * args.processes
    data = TensorDataset(torch.rand(n, sizes[0]), torch.randint(0, sizes[-1], (n,)))
    loader = DataLoader(data, batch_size=args.batch_size)
    timings: list[float] = []
    per_step_bytes: list[int] = []

    class Timer(L.Callback):
        def on_train_start(self, trainer, pl_module):
            # Lightning registers DDP communication hooks on CUDA only: count the buckets here
            ddp = trainer.strategy.model
            if args.worker == "backprop" and isinstance(ddp, DistributedDataParallel):
                ddp.register_comm_hook(None, counting_hook)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start, self.bytes = time.perf_counter(), sent["bytes"]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx >= args.warmup:
                timings.append(time.perf_counter() - self.start)
                per_step_bytes.append(sent["bytes"] - self.bytes)

    options: dict[str, Any] = {"strategy": "ddp"} if args.processes > 1 else {}
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=args.processes, max_steps=steps,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Timer()], **options,
    )  # fmt: skip
    trainer.fit(module, loader)
    if trainer.global_rank == 0:
        result = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "step_s": statistics.median(timings),
            "bytes": statistics.median(per_step_bytes),
            "threads": torch.get_num_threads(),
        }
        Path(args.out).write_text(json.dumps(result))


def _run(args: argparse.Namespace, learner: str, processes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--worker", learner, "--processes", str(processes),
                   "--out", str(out), "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--accelerator", args.accelerator, "--threads", str(args.threads)]  # fmt: skip
        command += ["--quick"] if args.quick else []
        env = {k: v for k, v in os.environ.items()
               if k not in ("MASTER_PORT", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}  # fmt: skip
        env["OMP_NUM_THREADS"] = str(args.threads)  # Lightning then leaves the threads alone
        job = subprocess.run(command, env=env, capture_output=True, text=True)
        if job.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"{learner} at {processes} process(es) failed:\n{job.stderr[-4000:]}"
            )
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 0.27 M-parameter MLP")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process, the same in every run (default: "
                             "CPU cores // processes, so 1 and N processes get the same "
                             "threads each and N processes use the cores one process could)")
    parser.add_argument("--worker", choices=LEARNERS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.processes)
    if args.worker is not None:
        _worker(args)
        return
    import torch

    print(f"host: {os.cpu_count()} CPU cores, torch {torch.__version__}, accelerator="
          f"{args.accelerator}, {args.threads} torch thread(s) per process, per-process batch "
          f"{args.batch_size}, median of {args.steps} steps after {args.warmup} warm-up "
          "steps\n")  # fmt: skip
    rows, first = [], None
    for learner in LEARNERS:
        base = None
        for processes in sorted({1, args.processes}):
            r = _run(args, learner, processes)
            first = first or r
            throughput = processes * args.batch_size / r["step_s"]
            base = base or throughput
            rows.append((learner, processes, r, throughput, throughput / base))
    params = first["parameters"]
    print(f"MLP {QUICK_SIZES if args.quick else 'of benchmarks/step_cost.py'}: "
          f"{params / 1e6:.2f} M parameters = {4 * params / 1e6:.1f} MB of float32 gradients\n")
    print("| learner | processes | bytes all-reduced / step | step ms | examples / s | "
          "× 1 process |")
    print("|---|---:|---:|---:|---:|---:|")
    for learner, processes, r, throughput, speedup in rows:
        print(f"| {learner} | {processes} | {_bytes(r['bytes'])} | "
              f"{r['step_s'] * 1e3:.1f} | {throughput:.0f} | {speedup:.2f} |")  # fmt: skip


def _bytes(n: float) -> str:
    """Decimal units, like the gradient size printed above the table."""
    if n < 1e3:
        return f"{n:.0f} B"
    return f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"


if __name__ == "__main__":
    main()
