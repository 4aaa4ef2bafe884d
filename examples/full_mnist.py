"""The full-MNIST headline: every learner's own CLI config on the official 60,000 / 10,000.

Runs ``bioplausible-lightning fit`` (then its test) for each learner with
``--data.init_args.data_dir`` pointed at the full data set and a budget of at least as many
optimizer steps as the learner's MNIST-5k config takes (whole epochs of the 54,000 training
images; the cosine schedules span the new budget), and writes a table of test accuracies to
``--out``.  Optionally attacks the Hebbian learners' checkpoints (``--square``).

    python examples/full_mnist.py                                   # ../shared/data/mnist
    python examples/full_mnist.py --data-dir data --download        # torchvision download

A report run (minutes on 2 cores), not a test.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "bioplausible_lightning.cli"]
BACKPROP = "bioplausible_lightning.BackpropModule"
#: name → (config, extra CLI args, epochs on the full training set, cosine schedule?)
LEARNERS: dict[str, tuple[str, tuple[str, ...], int, bool]] = {
    "node-dale": ("examples/mnist.yaml", (), 5, True),
    "backprop-dale": ("examples/mnist.yaml", ("--model", BACKPROP), 5, True),
    "backprop": ("examples/mnist_backprop.yaml", (), 5, True),
    "hebbian": ("examples/mnist_hebbian.yaml", (), 2, False),
    "hebbian-dot": ("examples/mnist_hebbian_dot.yaml", (), 3, False),
    "softhebb": ("examples/mnist_softhebb.yaml", (), 3, False),
    "krotov-hopfield": ("examples/mnist_krotov.yaml", (), 4, False),
}  # fmt: skip
#: The peers' published full-MNIST figures, for the table.
PUBLISHED = {
    "krotov-hopfield": "98.5 % (Krotov & Hopfield 2019)",
    "softhebb": "99.4 % (Journé et al. 2023)",
}


def fit(name: str, data_dir: str, download: bool, runs: Path) -> dict:
    config, extra, epochs, cosine = LEARNERS[name]
    args = [*CLI, "fit", "--config", str(ROOT / config), *extra,
            "--data.init_args.data_dir", data_dir,
            "--data.init_args.download", str(download).lower(),
            "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(runs / name)]  # fmt: skip
    if cosine:
        args += ["--model.lr_scheduler.init_args.T_max", str(epochs)]
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    acc = re.search(r"test/acc\s+([0-9.]+)", done.stdout + done.stderr)
    ckpts = sorted((runs / name).rglob("*.ckpt"))
    return {"config": config, "args": list(extra), "epochs": epochs, "seconds": round(seconds, 1),
            "test_acc": float(acc.group(1)) if acc else None,
            "checkpoint": str(ckpts[-1]) if ckpts else None}  # fmt: skip


def attack(name: str, checkpoint: str, out: Path, kind: str, samples: int) -> dict:
    """``kind`` ("square" or "autoattack") at ε = 0.05, 0.1 on the first ``samples`` test
    images, through the CLI's ``test`` with the package's ``RobustnessCallback``."""
    config = LEARNERS[name][0]
    path = out / f"{name}_{kind}.json"
    subprocess.run([*CLI, "test", "--config", str(ROOT / config), "--ckpt_path", checkpoint,
                    "--trainer.enable_progress_bar", "false",
                    "--trainer.callbacks+=bioplausible_lightning.evaluation.RobustnessCallback",
                    "--trainer.callbacks.eps=[0.05, 0.1]", f"--trainer.callbacks.attacks=[{kind}]",
                    f"--trainer.callbacks.max_samples={samples}",
                    f"--trainer.callbacks.output={path}"],
                   check=True, capture_output=True, cwd=ROOT)  # fmt: skip
    result = json.loads(path.read_text())
    return {f"{kind}@0.1": result["accuracy"][kind][1], f"{kind}_samples": result["n_samples"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    p.add_argument("--download", action="store_true")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "full-mnist"))
    p.add_argument("--runs", default=str(ROOT / "outputs" / "full-mnist"), help="logs, checkpoints")
    p.add_argument("--learners", default=",".join(LEARNERS))
    p.add_argument("--square", default="", help="comma list of learners to attack with Square")
    p.add_argument("--square-samples", type=int, default=500)
    p.add_argument("--autoattack", default="", help="comma list of learners to run AutoAttack on")
    p.add_argument("--autoattack-samples", type=int, default=100)
    args = p.parse_args()
    if not args.download and not Path(args.data_dir, "MNIST").is_dir():
        print(f"skipped: no MNIST under {args.data_dir} (pass --download to fetch it)")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    for name in filter(None, args.learners.split(",")):
        report[name] = fit(name, args.data_dir, args.download, Path(args.runs))
        print(name, report[name], flush=True)
        report_path.write_text(json.dumps(report, indent=2))
    for kind, names, samples in (("square", args.square, args.square_samples),
                                 ("autoattack", args.autoattack, args.autoattack_samples)):
        for name in filter(None, names.split(",")):
            ckpt = report[name]["checkpoint"]
            report[name].update(attack(name, ckpt, out, kind, samples))
            print(name, report[name], flush=True)
            report_path.write_text(json.dumps(report, indent=2))
    header = ("| learner | config | epochs (54,000 images) | test acc. | Square ε=0.1 "
              "| AutoAttack ε=0.1 | published |")  # fmt: skip
    lines = [header, "|---|---|---:|---:|---:|---:|---|"]

    def robust(r: dict, kind: str) -> str:
        if f"{kind}@0.1" not in r:
            return "–"
        n = r.get(f"{kind}_samples", r.get("n_samples"))
        return f"{100 * r[f'{kind}@0.1']:.1f} % ({n} images)"

    for name, r in report.items():
        lines.append(
            f"| {name} | `{r['config']}{' ' + ' '.join(r['args']) if r['args'] else ''}` | "
            f"{r['epochs']} | {100 * r['test_acc']:.1f} % | {robust(r, 'square')} | "
            f"{robust(r, 'autoattack')} | {PUBLISHED.get(name, '–')} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
