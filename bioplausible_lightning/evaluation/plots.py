"""PNG figures of a comparison report (matplotlib, headless).

Each function takes the plain dicts stored in ``report.json`` so that figures can be
re-drawn from a saved report without re-running anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: Colours of the standard comparison's learners (others: matplotlib's cycle); the
#: reference baselines (raw pixels, random features) are drawn grey and dotted.
COLORS = {"node-dale": "tab:green", "backprop-dale": "tab:blue", "backprop": "tab:orange",
          "hebbian": "tab:red", "pixels": "gray", "random": "silver"}  # fmt: skip
REFERENCES = ("pixels", "random")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_robustness(robustness: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Accuracy vs ε, one panel per attack, one line per model."""
    plt = _pyplot()
    attacks = sorted({a for r in robustness.values() for a in r["accuracy"]})
    fig, axes = plt.subplots(1, max(1, len(attacks)), figsize=(3.2 * max(1, len(attacks)), 3))
    axes = np.atleast_1d(axes)
    for ax, attack in zip(axes, attacks, strict=False):
        for name, res in robustness.items():
            if attack in res["accuracy"]:
                eps = [0.0, *res["eps"]]
                acc = [res["clean_accuracy"], *res["accuracy"][attack]]
                ax.plot(eps, acc, "o-", label=name, color=COLORS.get(name))
        ax.set(title=attack, xlabel="ε (L∞, pixels)", ylabel="robust accuracy", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].legend()
    return _save(fig, path)


def plot_fewshot(fewshot: Mapping[str, Any], path: Path) -> Path:
    """Protocol (a) accuracy vs K (error bars: 95% CI over seeds) and protocol (b)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    all_k: set[int] = set()
    for name, per_k in fewshot.get("from_scratch", {}).get("results", {}).items():
        ks = sorted(per_k, key=int)
        all_k.update(int(k) for k in ks)
        mean = [per_k[k]["mean"] for k in ks]
        ci = [0 if math.isnan(per_k[k]["ci"]) else per_k[k]["ci"] for k in ks]
        axes[0].errorbar([int(k) for k in ks], mean, yerr=ci, fmt="o-", capsize=3,
                         label=name, color=COLORS.get(name))  # fmt: skip
    axes[0].set(title="(a) from scratch, full test set", xlabel="K examples per class",
                ylabel="test accuracy", xscale="log", ylim=(0, 1))  # fmt: skip
    axes[0].set_xticks(sorted(all_k), [str(k) for k in sorted(all_k)])
    axes[0].minorticks_off()
    episodic = fewshot.get("episodic", {})
    for name, per_k in episodic.get("results", {}).items():
        ks = sorted(per_k, key=int)
        mean = [per_k[k]["mean"] for k in ks]
        ci = [per_k[k]["ci"] for k in ks]
        style = "s:" if name in REFERENCES else "o-"
        axes[1].errorbar([int(k) for k in ks], mean, yerr=ci, fmt=style, capsize=3,
                         label=name, color=COLORS.get(name))  # fmt: skip
    axes[1].set(title=f"(b) {episodic.get('n_way', 'N')}-way, held-out classes",
                xlabel="K shots", ylabel="episode accuracy", ylim=(0, 1))  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_depth(depth: Mapping[str, Any], path: Path) -> Path:
    """Test accuracy vs number of hidden layers."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    for name, accs in depth.get("accuracy", {}).items():
        ax.plot(depth["depths"], accs, "o-", label=name, color=COLORS.get(name))
    ax.set(xlabel="hidden layers", ylabel="test accuracy", xscale="log", ylim=(0, 1))
    ax.set_xticks(depth.get("depths", []), [str(d) for d in depth.get("depths", [])])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_weights(histograms: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Histograms of log10|w| per layer (a lognormal weight is a Gaussian here)."""
    plt = _pyplot()
    layers = sorted({layer for h in histograms.values() for layer in h})
    fig, axes = plt.subplots(1, max(1, len(layers)), figsize=(3.2 * max(1, len(layers)), 3))
    axes = np.atleast_1d(axes)
    for ax, layer in zip(axes, layers, strict=False):
        for name, per_layer in histograms.items():
            if layer in per_layer:
                h = per_layer[layer]
                ax.stairs(h["density"], h["edges"], label=name, color=COLORS.get(name))
        ax.set(title=layer, xlabel="log10 |w|", ylabel="density")
    axes[0].legend()
    return _save(fig, path)


def plot_sparsity(history: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Population sparseness and silent-unit fraction per hidden layer over training."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for name, per_layer in history.items():
        for layer, series in per_layer.items():
            style = dict(color=COLORS.get(name), label=f"{name} {layer}", marker="o",
                         markersize=3 if len(series["epoch"]) > 20 else 6)  # fmt: skip
            axes[0].plot(series["epoch"], series["population_sparseness"], **style)
            axes[1].plot(series["epoch"], series["silent_fraction"], **style)
    axes[0].set(xlabel="epoch", ylabel="population sparseness", ylim=(0, 1))
    axes[1].set(xlabel="epoch", ylabel="silent units", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


__all__ = ["plot_depth", "plot_fewshot", "plot_robustness", "plot_sparsity", "plot_weights"]
