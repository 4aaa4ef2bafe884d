"""Cost of one training step of each perturbation structure vs. two forwards and vs. backprop.

Measured in one run, on one ≥10M-parameter MLP, at the batch sizes given, all timings
interleaved round-robin so that machine noise hits every variant alike; prints ratios.

    python benchmarks/step_cost.py                  # CPU, batch 64 and 256
    python benchmarks/step_cost.py --device cuda    # on a GPU
    python benchmarks/step_cost.py --dale           # the same MLP built from DaleLinear layers
    python benchmarks/step_cost.py --memory-only    # peak memory only (no timing): seconds

Peak memory is the peak of live tensor bytes (tracked by a TorchDispatchMode, so it is exact
and device-independent), parameters and inputs included.  The last column leaves out the
``.grad`` buffers (one per parameter) that the rule → ``p.grad`` → torch-optimizer protocol
needs, to show what the rule itself costs.  The "in place (lean)" rows are
``PerturbationModule(inplace_update=True)``'s step (:mod:`bioplausible_lightning.lean`): the
same rule, its update applied to the weights as plain SGD as it is formed, no ``.grad``
buffers at all; the script ends with their measured peak ÷ inference ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bioplausible_lightning import DaleLinear, NodePerturbation, WeightPerturbation
from bioplausible_lightning.lean import applied_in_place
from bioplausible_lightning.losses import cross_entropy

SIZES = (784, 2560, 2560, 1024, 10)


def build_mlp(dale: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers.append(DaleLinear(n_in, n_out) if dale else nn.Linear(n_in, n_out))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class PeakMemory(TorchDispatchMode):
    """Peak bytes of tensors allocated while active (storages tracked by weak reference)."""

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        for t in existing:  # counted from the start; views of them are no new memory
            self._add(t)
        self.peak = sum(n for _, n in self.live.values())

    def _add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key and key not in self.live:
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t)
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def naive_gaussian_step(model, x, y, opt, sigma=1e-3, state={"seed": 0}):  # noqa: B006
    """MeZO-style seeded full-Gaussian weight perturbation, in place: the cost to beat."""
    params = [p for p in model.parameters()]
    state["seed"] += 1

    def walk(scale, set_grad=None):
        gen = torch.Generator(device=x.device).manual_seed(state["seed"])
        for p in params:
            z = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
            p.add_(z, alpha=scale)
            if set_grad is not None:
                p.grad = z.mul_(set_grad)

    with torch.no_grad():
        walk(sigma)
        plus = cross_entropy(model(x), y).mean()
        walk(-2 * sigma)
        minus = cross_entropy(model(x), y).mean()
        walk(sigma, set_grad=float((plus - minus) / (2 * sigma)))
    opt.step()
    opt.zero_grad(set_to_none=True)


def rule_step(rule):
    def step(model, x, y, opt):
        rule.estimate(model, cross_entropy, x, y)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def lean_step(rule):
    """``inplace_update=True``: the update goes into the weights as it is formed (plain SGD
    with ``opt``'s learning rate); no ``.grad`` buffer exists, so no optimizer step is left."""

    def step(model, x, y, opt):
        with applied_in_place(opt, model):
            rule.estimate(model, cross_entropy, x, y)

    return step


LEAN_SUFFIX = ", in place (lean)"


def backprop_step(model, x, y, opt):
    cross_entropy(model(x), y).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def forward_only(model, x, y, opt):
    with torch.no_grad():
        model(x)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dale", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="skip the timings")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_mlp(args.dale).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    variants: dict[str, Callable] = {
        "forward (inference, no_grad)": forward_only,
        "backprop step": backprop_step,
        "naive seeded full-Gaussian WP (in place)": naive_gaussian_step,
        "WP low-rank r=1, fused ± batch": rule_step(WeightPerturbation(structure="lowrank")),
        "WP low-rank r=1 Rademacher, fused": rule_step(
            WeightPerturbation(structure="lowrank", noise="rademacher")
        ),
        "WP dense Gaussian, seeded, fused": rule_step(WeightPerturbation(structure="dense")),
        "NP all layers at once, per-sample": rule_step(
            NodePerturbation(num_directions=1, layerwise=False)
        ),
        "WP low-rank r=1" + LEAN_SUFFIX: lean_step(WeightPerturbation(structure="lowrank")),
        "WP dense Gaussian" + LEAN_SUFFIX: lean_step(WeightPerturbation(structure="dense")),
        "NP all layers at once" + LEAN_SUFFIX: lean_step(
            NodePerturbation(num_directions=1, layerwise=False)
        ),
    }
    kind = "DaleLinear (exp)" if args.dale else "nn.Linear"
    print(f"MLP {SIZES} of {kind}: {n_params / 1e6:.2f}M parameters, device={device}, "
          f"threads={torch.get_num_threads()}, SGD step in every training step\n")  # fmt: skip
    for batch in args.batch_sizes:
        x = torch.rand(batch, SIZES[0], device=device)
        y = torch.randint(0, SIZES[-1], (batch,), device=device)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for rep in range(0 if args.memory_only else args.repeats + 2):
            for name, fn in variants.items():
                sync(device)
                t0 = time.perf_counter()
                fn(model, x, y, opt)
                sync(device)
                if rep >= 2:  # warm-up
                    times[name].append(time.perf_counter() - t0)
        nan = float("nan")
        med = {name: statistics.median(t) if t else nan for name, t in times.items()}
        fwd, bp = med["forward (inference, no_grad)"], med["backprop step"]
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        inf_peak = _peak(forward_only, model, x, y, opt)
        print(f"batch {batch}: forward {fwd * 1e3:.1f} ms, backprop step {bp * 1e3:.1f} ms, "
              f"inference peak {inf_peak / 2**20:.1f} MiB")  # fmt: skip
        print(
            f"| step (batch {batch}) | ms | ÷ 2 forwards | ÷ backprop step | peak memory ÷ "
            "inference | same without .grad buffers |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        lean: dict[str, float] = {}
        for name, t in med.items():
            if name.startswith("forward"):
                continue
            peak = _peak(variants[name], model, x, y, opt)
            ratio = peak / inf_peak
            if name.endswith(LEAN_SUFFIX):  # no .grad buffers to leave out
                lean[name] = ratio
                print(f"| {name} | {t * 1e3:.1f} | {t / (2 * fwd):.2f} | {t / bp:.2f} | "
                      f"{ratio:.3f} | (none allocated) |")  # fmt: skip
                continue
            print(f"| {name} | {t * 1e3:.1f} | {t / (2 * fwd):.2f} | {t / bp:.2f} | "
                  f"{ratio:.2f} | {(peak - param_bytes) / inf_peak:.2f} |")  # fmt: skip
        print()
        for name, ratio in lean.items():
            verdict = "meets" if ratio <= 1.2 else "misses"
            print(f"batch {batch}: {name.removesuffix(LEAN_SUFFIX)} in place: peak training "
                  f"memory / inference = {ratio:.3f} ({verdict} the <= 1.2 goal)")  # fmt: skip
        print()


def _peak(fn, model, x, y, opt) -> int:
    tracker = PeakMemory([*model.parameters(), *model.buffers(), x, y])
    with tracker:
        fn(model, x, y, opt)
    return tracker.peak


if __name__ == "__main__":
    main()
