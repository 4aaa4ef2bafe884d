"""Few-shot learning under the two protocols the field uses; say which one a number is.

(a) **From scratch**: train on K labelled examples per class, test on the full test set,
    repeat over seeds (:func:`from_scratch_few_shot`; the K-per-class draw is
    ``SplitDataModule(samples_per_class=K)``, disjoint from validation and test).
(b) **Episodic**: train on some classes, then on the *held-out* classes run N-way K-shot
    episodes, classifying queries by the nearest class prototype (mean feature of the K
    support examples) in a chosen layer's frozen features (:func:`episodic_few_shot`).
(c) **Label-free features + K-shot readout**: hidden layers trained *without labels* on the
    unlabelled training images (a Hebbian learner's hidden representation), frozen; only a
    linear readout is trained on K labelled examples per class (:func:`linear_probe_few_shot`).
    Not comparable with (a): the hidden layers saw every training image (without labels).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_min_int
from ..data.sampling import samples_per_class_subset
from ._common import Data, batches, collect, eval_mode, model_device
from .stats import Estimate, mean_ci

PROTOCOL_A = (
    "(a) from scratch: train on K labelled examples per class, test on the full test set; "
    "mean ± 95% CI over seeds"
)
PROTOCOL_B = (
    "(b) episodic N-way K-shot on classes held out from training: nearest prototype on "
    "frozen features; mean ± 95% CI over episodes"
)
PROTOCOL_C = (
    "(c) label-free features + K-shot readout: hidden layers trained without labels on the "
    "unlabelled training images and frozen; a linear readout (multinomial logistic regression, "
    "L-BFGS, weight decay 1e-4, on features scaled to unit L2 norm per example) trained on K "
    "labelled training examples per class; full test set; mean ± std over draws"
)
Metric = Literal["euclidean", "cosine"]


@dataclass
class Episode:
    """One N-way K-shot episode: indices into the data and episode-local labels 0..N-1."""

    support: Tensor
    support_labels: Tensor
    query: Tensor
    query_labels: Tensor
    classes: Tensor


class EpisodeSampler:
    """Seeded N-way K-shot episodes over ``labels``: exactly ``k_shot`` support and
    ``n_query`` query examples per drawn class, support and query disjoint.

    Args:
        labels: Label of every example that episodes may use.
        n_way: Classes per episode.
        k_shot: Support examples per class.
        n_query: Query examples per class.
        episodes: Number of episodes.
        classes: Classes episodes draw from (default: all in ``labels``).
        seed: Seed; the same seed gives the same episodes.
    """

    def __init__(
        self,
        labels: Tensor,
        n_way: int = 5,
        k_shot: int = 1,
        n_query: int = 15,
        episodes: int = 100,
        classes: Sequence[int] | None = None,
        seed: int = 0,
    ) -> None:
        for name, value in (("n_way", n_way), ("k_shot", k_shot), ("n_query", n_query)):
            check_min_int(name, value)
        check_min_int("episodes", episodes)
        self.labels = torch.as_tensor(labels).long().cpu()
        pool = sorted({int(c) for c in (classes if classes is not None else self.labels.tolist())})
        if n_way > len(pool) or n_way < 2:
            raise ValueError(
                f"n_way={n_way!r} is invalid: need 2 <= n_way <= {len(pool)} (classes {pool})."
            )
        self.by_class = {c: torch.nonzero(self.labels == c).flatten() for c in pool}
        for c, idx in self.by_class.items():
            if idx.numel() < k_shot + n_query:
                raise ValueError(
                    f"k_shot={k_shot} + n_query={n_query} is invalid: class {c} has only "
                    f"{idx.numel()} examples."
                )
        self.classes = pool
        self.n_way, self.k_shot, self.n_query, self.episodes, self.seed = (
            n_way, k_shot, n_query, episodes, seed,
        )  # fmt: skip

    def __len__(self) -> int:
        return self.episodes

    def __iter__(self) -> Iterator[Episode]:
        generator = torch.Generator().manual_seed(self.seed)
        pool = torch.as_tensor(self.classes)
        for _ in range(self.episodes):
            chosen = pool[torch.randperm(len(pool), generator=generator)[: self.n_way]]
            sup, qry = [], []
            for c in chosen.tolist():
                idx = self.by_class[c]
                idx = idx[torch.randperm(idx.numel(), generator=generator)]
                sup.append(idx[: self.k_shot])
                qry.append(idx[self.k_shot : self.k_shot + self.n_query])
            local = torch.arange(self.n_way)
            yield Episode(
                support=torch.cat(sup),
                support_labels=local.repeat_interleave(self.k_shot),
                query=torch.cat(qry),
                query_labels=local.repeat_interleave(self.n_query),
                classes=chosen,
            )


def nearest_prototype_accuracy(
    support: Tensor,
    support_labels: Tensor,
    query: Tensor,
    query_labels: Tensor,
    metric: Metric = "euclidean",
) -> float:
    """Accuracy of classifying each query by its nearest class mean of the support set."""
    check_choice("metric", metric, get_args(Metric))
    classes = torch.unique(support_labels)
    protos = torch.stack([support[support_labels == c].mean(0) for c in classes])
    if metric == "cosine":
        protos = nn.functional.normalize(protos, dim=1)
        query = nn.functional.normalize(query, dim=1)
        pred = (query @ protos.T).argmax(1)
    else:
        pred = torch.cdist(query, protos).argmin(1)
    return float((classes[pred] == query_labels).float().mean())


def nearest_neighbour_accuracy(
    train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], batch_size: int = 1024
) -> float:
    """Accuracy of labelling each test example like its most similar (cosine) training
    example: the classifier a few-shot learner has to beat with the same labelled examples."""
    x_train = nn.functional.normalize(train[0].flatten(1).float(), dim=1)
    correct = 0
    for rows in batches(len(test[0]), batch_size):
        x = nn.functional.normalize(test[0][rows].flatten(1).float(), dim=1)
        pred = train[1][(x @ x_train.T).argmax(1)]
        correct += int((pred == test[1][rows]).sum())
    return correct / max(len(test[0]), 1)


def default_feature_layer(model: nn.Module) -> str:
    """Name of the model's last leaf module with parameters (its readout layer)."""
    # a parametrised layer (e.g. under Dale's law) is a leaf too: its only child is the
    # `parametrizations` container, whose modules are not layers
    names = [n for n, m in model.named_modules()
             if n and "parametrizations" not in n.split(".")
             and all(c == "parametrizations" for c, _ in m.named_children())]  # fmt: skip
    names = [n for n in names if any(True for _ in model.get_submodule(n).parameters())]
    if not names:
        raise ValueError("The model has no layer with parameters to take features from.")
    return names[-1]


@torch.no_grad()
def extract_features(
    model: nn.Module,
    data: Data,
    layer: str | None = None,
    batch_size: int = 512,
    max_samples: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Frozen features ``(N, D)`` and labels.

    ``layer=None`` takes the *input* of the readout layer (the penultimate representation);
    a module name takes that module's *output*, flattened per example (``""``: the model's
    own output, e.g. ``nn.Flatten()`` for a raw-pixel reference).
    """
    x, y = collect(data, max_samples)
    name = layer if layer is not None else default_feature_layer(model)
    try:
        module = model.get_submodule(name)
    except AttributeError as err:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"layer={layer!r} is invalid: allowed module names are {names}.") from err
    captured: list[Tensor] = []
    if layer is None:
        handle = module.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    else:
        handle = module.register_forward_hook(lambda m, args, out: captured.append(out))
    device = model_device(model, x.device)
    feats = []
    try:
        with eval_mode(model):
            for s in batches(x.shape[0], batch_size):
                captured.clear()
                model(x[s].to(device))
                feats.append(captured[0].flatten(1).float().cpu())
    finally:
        handle.remove()
    return torch.cat(feats), y.cpu()


def episodic_few_shot(
    model: nn.Module,
    data: Data,
    classes: Sequence[int] | None = None,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 15,
    episodes: int = 100,
    layer: str | None = None,
    metric: Metric = "euclidean",
    seed: int = 0,
) -> Estimate:
    """Protocol (b): mean ± 95% CI accuracy over N-way K-shot nearest-prototype episodes.

    ``data`` holds labelled examples of the held-out ``classes`` (labels as in ``data``);
    the model must not have been trained on them.
    """
    feats, labels = extract_features(model, data, layer)
    sampler = EpisodeSampler(labels, n_way, k_shot, n_query, episodes, classes, seed)
    accs = [
        nearest_prototype_accuracy(
            feats[ep.support], ep.support_labels, feats[ep.query], ep.query_labels, metric
        )
        for ep in sampler
    ]
    return mean_ci(accs)


def from_scratch_few_shot(
    train_and_test: Callable[[int, int], float],
    shots: Sequence[int] = (1, 5, 10),
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
) -> dict[int, Estimate]:
    """Protocol (a): ``train_and_test(k, seed)`` trains from scratch on K examples per class
    and returns full-test-set accuracy; returns mean ± 95% CI over seeds for every K."""
    if not shots or not seeds:
        raise ValueError(f"shots={list(shots)!r}, seeds={list(seeds)!r}: both must be non-empty.")
    for k in shots:
        check_min_int("shots[i]", k)
    return {int(k): mean_ci([train_and_test(int(k), int(s)) for s in seeds]) for k in shots}


def unit_norm(features: Tensor) -> Tensor:
    """Protocol (c)'s one feature-scaling recipe, for every feature type: each example's
    feature vector divided by its L2 norm (all-zero vectors stay zero)."""
    return nn.functional.normalize(features.float(), dim=1)


def logistic_regression(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> nn.Linear:
    """Multinomial logistic regression fitted by full-batch L-BFGS (deterministic: zero init)."""
    with torch.enable_grad(), torch.inference_mode(False):
        x, y = features.detach().float().clone(), labels.detach().long().clone()
        head = nn.Linear(x.shape[1], num_classes)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter,
                                line_search_fn="strong_wolfe")  # fmt: skip

        def closure() -> Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(head(x), y)
            loss = loss + weight_decay * head.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    return head.requires_grad_(False)


def linear_probe_few_shot(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    shots: Sequence[int] = (1, 5, 10),
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    num_classes: int | None = None,
) -> dict[int, Estimate]:
    """Protocol (c) on precomputed frozen features: for every K and seed, draw K labelled
    examples per class from ``train = (features, labels)``, fit :func:`logistic_regression`
    on :func:`unit_norm` features, score on all of ``test``; mean ± std (``Estimate.std``)
    over seeds for every K.  Pass raw pixels or a random network's features for the
    baselines: the recipe is the same for every feature type."""
    if not shots or not seeds:
        raise ValueError(f"shots={list(shots)!r}, seeds={list(seeds)!r}: both must be non-empty.")
    for k in shots:
        check_min_int("shots[i]", k)
    train_x, train_y = unit_norm(train[0].flatten(1)), train[1].long()
    test_x, test_y = unit_norm(test[0].flatten(1)), test[1].long()
    n_cls = num_classes or int(max(train_y.max(), test_y.max())) + 1
    out = {}
    for k in shots:
        accs = []
        for seed in seeds:
            idx = samples_per_class_subset(train_y, int(k), int(seed))
            head = logistic_regression(train_x[idx], train_y[idx], n_cls)
            accs.append(float((head(test_x).argmax(1) == test_y).float().mean()))
        out[int(k)] = mean_ci(accs)
    return out


__all__ = [
    "PROTOCOL_A",
    "PROTOCOL_B",
    "PROTOCOL_C",
    "Episode",
    "EpisodeSampler",
    "default_feature_layer",
    "episodic_few_shot",
    "extract_features",
    "from_scratch_few_shot",
    "linear_probe_few_shot",
    "logistic_regression",
    "nearest_neighbour_accuracy",
    "nearest_prototype_accuracy",
    "unit_norm",
]
