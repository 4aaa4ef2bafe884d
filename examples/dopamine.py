"""RPE-adaptive step size (``DopamineStepSize``) vs fixed-LR weight perturbation vs backprop.

Three tasks, each trained by (i) weight perturbation with a fixed learning rate, (ii) the
same weight perturbation whose step size is adapted by the rule's reward prediction error,
and (iii) backprop — all three with plain SGD, each at its own best learning rate from the
same small sweep, 5 seeds:

* **XOR**, a plain 2-8-2 tanh MLP, full batch: optimizer steps until all four points are
  classified correctly (cap: ``--xor-steps``);
* **digits** (scikit-learn, 64-32-10 tanh MLP, batch 64): steps until 95 % validation
  accuracy (checked every 10 steps; cap: ``--digits-steps``);
* **Mackey–Glass** (τ = 17, generated here by Euler integration): predict x(t+6) from
  x(t), x(t−6), x(t−12), x(t−18) with a 4-16-1 tanh MLP, full batch of 500 points; test
  NRMSE on the 526 points after the next 250 (the validation segment, which picks the LR)
  after an equal number of steps.

A run that never reaches its target counts as the cap (and is reported as unsolved).
Each step is exactly what ``PerturbationModule.training_step`` does with one batch (rule
estimate → ``optimizer.step()`` → ``zero_grad()`` → ``step_size_adapter.step(rpe)``),
written as a plain loop so its 185 short runs finish in minutes on a CPU.

    python examples/dopamine.py            # ~6 min of one CPU thread
    python examples/dopamine.py --quick    # 3 seeds, smaller sweeps and caps, ~45 s
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bioplausible_lightning import DigitsDataModule, DopamineStepSize, WeightPerturbation
from bioplausible_lightning.losses import cross_entropy

METHODS = ("fixed-LR WP", "RPE-adaptive WP", "backprop")
SCALES: list[float] = []  # every step size scale the adapter set after its warm-up


def squared_error(pred: Tensor, target: Tensor) -> Tensor:
    return (pred.squeeze(-1) - target).pow(2)


@dataclass
class Task:
    name: str
    make_model: Callable[[], nn.Module]
    loss: Callable[[Tensor, Tensor], Tensor]
    batches: Callable[[int], Callable[[], tuple[Tensor, Tensor]]]  # seed -> next_batch()
    evaluate: Callable[[nn.Module], float]  # the metric tracked while training
    done: Callable[[float], bool] | None  # reached the target? (None: run all steps)
    final: Callable[[nn.Module], float] | None  # reported metric after the last step
    max_steps: int
    eval_every: int
    rule: Callable[[int], WeightPerturbation]


def mlp(*sizes: int) -> nn.Module:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.Tanh()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


# -- the tasks -----------------------------------------------------------------------------
def xor_task(max_steps: int) -> Task:
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1, 0])
    return Task(
        "XOR (2-8-2)", lambda: mlp(2, 8, 2), cross_entropy, lambda seed: lambda: (x, y),
        lambda m: accuracy(m, x, y), lambda acc: acc == 1.0, None, max_steps, 1,
        lambda seed: WeightPerturbation(sigma=0.01, structure="dense", seed=seed),
    )  # fmt: skip


def digits_task(max_steps: int) -> Task:
    def split(seed: int) -> tuple[Tensor, ...]:
        dm = DigitsDataModule(seed=seed)
        dm.setup("fit")
        images, labels = dm.train_set.dataset.tensors
        tr, va = dm.train_indices, dm.val_indices
        return images[tr].flatten(1), labels[tr], images[va].flatten(1), labels[va]

    data = {}

    def batches(seed: int) -> Callable[[], tuple[Tensor, Tensor]]:
        data["val"] = split(seed)[2:]
        x, y = split(seed)[:2]
        gen = torch.Generator().manual_seed(seed)
        order: list[Tensor] = []

        def next_batch() -> tuple[Tensor, Tensor]:
            if not order:
                order.extend(torch.randperm(len(x), generator=gen).split(64))
            idx = order.pop(0)
            return x[idx], y[idx]

        return next_batch

    return Task(
        "digits (64-32-10)", lambda: mlp(64, 32, 10), cross_entropy, batches,
        lambda m: accuracy(m, *data["val"]), lambda acc: acc >= 0.95, None, max_steps, 10,
        lambda seed: WeightPerturbation(sigma=1e-3, num_directions=8, seed=seed),
    )  # fmt: skip


def mackey_glass(n: int, tau: int = 17, dt: float = 0.1, seed: int = 0) -> Tensor:
    """x' = 0.2 x(t−τ) / (1 + x(t−τ)¹⁰) − 0.1 x(t), Euler steps of ``dt``, sampled every 1."""
    per = round(1 / dt)
    lag = tau * per
    gen = torch.Generator().manual_seed(seed)
    hist = [1.2 + 0.01 * float(torch.randn((), generator=gen)) for _ in range(lag + 1)]
    out = []
    for i in range((n + 300) * per):  # 300 time units of transient are discarded
        x, xd = hist[-1], hist[-1 - lag]
        hist.append(x + dt * (0.2 * xd / (1 + xd**10) - 0.1 * x))
        if i % per == per - 1:
            out.append(hist[-1])
        if len(hist) > 2 * lag + 2:
            del hist[: len(hist) - lag - 2]
    return torch.tensor(out[300:], dtype=torch.float32)


def mackey_glass_task(max_steps: int) -> Task:
    series = mackey_glass(1300)
    series = (series - series.mean()) / series.std()
    taps, horizon = (0, 6, 12, 18), 6
    t = torch.arange(18, len(series) - horizon)
    x = torch.stack([series[t - k] for k in taps], 1)
    y = series[t + horizon]
    train, val, test = slice(0, 500), slice(500, 750), slice(750, None)

    def nrmse(model: nn.Module, part: slice) -> float:
        with torch.no_grad():
            err = squared_error(model(x[part]), y[part]).mean().sqrt()
        return float(err / y[part].std())

    return Task(
        "Mackey–Glass (4-16-1)", lambda: mlp(4, 16, 1), squared_error,
        lambda seed: lambda: (x[train], y[train]), lambda m: nrmse(m, val), None,
        lambda m: nrmse(m, test), max_steps, max_steps,
        lambda seed: WeightPerturbation(sigma=1e-3, num_directions=4, seed=seed),
    )  # fmt: skip


# -- one run -------------------------------------------------------------------------------
def run(task: Task, method: str, lr: float, seed: int, gamma: float = 1.0
        ) -> tuple[int, float, float]:  # fmt: skip
    """``(steps taken, tracked metric, final metric)``; steps > max_steps: unsolved."""
    torch.manual_seed(seed)
    model = task.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    rule = task.rule(seed) if method != "backprop" else None
    adapter = DopamineStepSize(optimizer, gamma=gamma) if method == "RPE-adaptive WP" else None
    next_batch = task.batches(seed)
    metric = math.nan
    for step in range(1, task.max_steps + 1):
        x, y = next_batch()
        if rule is None:
            loss = task.loss(model(x), y).mean()
            loss.backward()
            finite, rpe = bool(torch.isfinite(loss)), None
        else:
            out = rule.estimate(model, task.loss, x, y)
            finite, rpe = out.finite, out.rpe
        if not finite:  # diverged: unsolved / infinite error
            return task.max_steps + 1, math.inf, math.inf
        optimizer.step()
        optimizer.zero_grad()
        if adapter is not None and rpe is not None:
            adapter.step(rpe)
            if adapter.num_steps > adapter.warmup:
                SCALES.append(adapter.scale)
        if step % task.eval_every == 0:
            metric = task.evaluate(model)
            if not math.isfinite(metric):
                return task.max_steps + 1, math.inf, math.inf
            if task.done is not None and task.done(metric):
                return step, metric, metric
    final = task.final(model) if task.final is not None else metric
    return task.max_steps + (task.done is not None), metric, final


@dataclass
class Result:
    lr: float
    values: list[float]  # steps (solved tasks) or the final metric (NRMSE)
    solved: int
    selection: float  # what the sweep minimised


def sweep(task: Task, method: str, lrs: list[float], seeds: list[int], gamma: float
          ) -> Result:  # fmt: skip
    best: Result | None = None
    for lr in lrs:
        runs = [run(task, method, lr, s, gamma) for s in seeds]
        if task.done is not None:  # steps to the target; the LR that needs fewest
            values = [float(min(n, task.max_steps)) for n, _, _ in runs]
            solved = sum(n <= task.max_steps for n, _, _ in runs)
            selection = statistics.mean(values)
        else:  # test metric reported; the LR chosen on the validation metric
            values = [final for _, _, final in runs]
            solved = len(seeds)
            selection = statistics.mean(tracked for _, tracked, _ in runs)
        scales = ""
        if len(SCALES) > 1:  # the spread of the adapter's scale: 10th, 50th, 90th percentile
            p10, p50, p90 = (statistics.quantiles(SCALES, n=10)[i] for i in (0, 4, 8))
            scales = f"  scale p10/50/90 {p10:.2f}/{p50:.2f}/{p90:.2f}"
        SCALES.clear()
        solved_text = f"  solved {solved}/{len(seeds)}" if task.done is not None else ""
        print(f"  {task.name:22s} {method:16s} lr={lr:<7g} {statistics.mean(values):10.4g}"
              f"{solved_text}  (select {selection:.4g}){scales}", flush=True)  # fmt: skip
        if best is None or selection < best.selection:
            best = Result(lr, values, solved, selection)
    assert best is not None
    return best


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer seeds, LRs and steps (~1 min)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 5)")
    p.add_argument("--xor-steps", type=int, default=2000)
    p.add_argument("--digits-steps", type=int, default=5000)
    p.add_argument("--mg-steps", type=int, default=2000)
    p.add_argument(
        "--gamma",
        type=float,
        default=1.0,
        help="DopamineStepSize gamma (-1: the opposite direction, an ablation)",
    )
    p.add_argument("--tasks", default="xor,digits,mg", help="comma list of xor,digits,mg")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds or (3 if args.quick else 5)))
    # learning rates swept: (both WP variants, backprop); each one's optimum lies inside
    # its grid (checked with wider sweeps), the grids are kept small for the run time
    grids = {
        "XOR (2-8-2)": ([0.3, 1.0, 3.0],) * 2 if args.quick else ([0.1, 0.3, 1.0, 3.0, 10.0],) * 2,
        "digits (64-32-10)": ([0.03, 0.1], [0.3, 1.0])
        if args.quick
        else ([0.01, 0.03, 0.1], [0.1, 0.3, 1.0, 3.0]),
        "Mackey–Glass (4-16-1)": ([0.01, 0.03], [0.1, 0.3])
        if args.quick
        else ([0.003, 0.01, 0.03, 0.1], [0.03, 0.1, 0.3, 1.0]),
    }
    shrink = 4 if args.quick else 1
    makers = {"xor": lambda: xor_task(args.xor_steps // shrink),
              "digits": lambda: digits_task(args.digits_steps // shrink),
              "mg": lambda: mackey_glass_task(args.mg_steps // shrink)}  # fmt: skip
    tasks = [makers[name.strip()]() for name in args.tasks.split(",")]
    start = time.perf_counter()
    results = {}
    for task in tasks:
        for method in METHODS:
            grid = grids[task.name][method == "backprop"]
            results[task.name, method] = sweep(task, method, grid, seeds, args.gamma)
    rows = [
        "| task | measure | fixed-LR WP | RPE-adaptive WP | adaptive ÷ fixed | backprop |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for task in tasks:
        r = [results[task.name, m] for m in METHODS]
        means = [statistics.mean(x.values) for x in r]
        if task.done is not None:
            measure = f"steps to target, mean of {len(seeds)} (cap {task.max_steps})"
            cells = [f"{m:.0f} (lr {x.lr:g}, {x.solved}/{len(seeds)} solved)"
                     for m, x in zip(means, r)]  # fmt: skip
        else:
            measure = f"test NRMSE after {task.max_steps} steps, mean of {len(seeds)}"
            cells = [f"{m:.3f} (lr {x.lr:g})" for m, x in zip(means, r)]
        ratio = means[1] / means[0]
        rows.append(f"| {task.name} | {measure} | {cells[0]} | {cells[1]} | {ratio:.2f} "
                    f"| {cells[2]} |")  # fmt: skip
    table = "\n".join(rows)
    print()
    print(table)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return table


if __name__ == "__main__":
    main()
