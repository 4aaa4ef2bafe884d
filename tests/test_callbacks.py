"""The monitors on foreign and on perturbation-trained LightningModules, with real loggers."""

from __future__ import annotations

import csv
import glob
import math
import os
from functools import partial
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import Tensor, nn

from bioplausible_lightning.callbacks import (
    DaleLawMonitor,
    SparsityMonitor,
    WeightDistributionMonitor,
)
from bioplausible_lightning.data import DigitsDataModule
from bioplausible_lightning.metrics import default_weight_getter
from bioplausible_lightning.nn import BioMLP

RANGES = {  # key suffix -> (low, high) for every logged value
    "zero_fraction": (0, 1), "hoyer": (0, 1), "population_sparseness": (0, 1),
    "lifetime_sparseness": (0, 1), "dead_fraction": (0, 1), "weight_sparsity": (0, 1),
    "sign_consistency": (0, 1), "excitatory_fraction": (0, 1), "ei_ratio": (0, math.inf),
    "sign_flips": (0, math.inf), "positive_fraction": (0, 1), "positive_mass": (0, 1),
    "ks_lognormal": (0, 1),
    "ks_normal": (0, 1), "log_abs_std": (0, math.inf), "log_abs_mean": (-math.inf, math.inf),
    "log_abs_skewness": (-math.inf, math.inf), "log_abs_kurtosis": (-2, math.inf),
    "nonfinite": (0, 0),
}  # fmt: skip


class PlainClassifier(L.LightningModule):
    """Not from this package: torch layers, autograd, dropout (so RNG use is visible)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def perturbation_module() -> L.LightningModule:
    from bioplausible_lightning.module import PerturbationModule
    from bioplausible_lightning.rules import NodePerturbation

    model = BioMLP(hidden_sizes=(32,), sparsity=0.5, seed=0)
    return PerturbationModule(
        model, NodePerturbation(sigma=0.1), optimizer=partial(torch.optim.Adam, lr=1e-2)
    )


def monitors(every: int = 4) -> list:
    return [
        SparsityMonitor(log_every_n_steps=every),
        DaleLawMonitor(log_every_n_steps=every),
        WeightDistributionMonitor(log_every_n_steps=every, save_figure=True),
    ]


def fit(module: L.LightningModule, callbacks: list, logger=False, batches: int = 8,
        ckpt_path=None, **kw):  # fmt: skip
    options = dict(
        max_epochs=1, limit_train_batches=batches, limit_val_batches=2, logger=logger,
        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=4,
    )  # fmt: skip
    trainer = L.Trainer(**{**options, **kw})
    trainer.fit(module, DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    return trainer


def check_ranges(metrics: dict[str, float]) -> None:
    for key, value in metrics.items():
        low, high = RANGES[key.rsplit("/", 1)[1]]
        assert low <= value <= high, f"{key}={value} outside [{low}, {high}]"


def read_csv(log_dir: str) -> dict[str, list[float]]:
    columns: dict[str, list[float]] = {}
    with open(os.path.join(log_dir, "metrics.csv")) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value != "":
                    columns.setdefault(key, []).append(float(value))
    return columns


def read_tensorboard(log_dir: str) -> tuple[dict[str, list[float]], list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir, size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    scalars = {t: [e.value for e in events.Scalars(t)] for t in tags["scalars"]}
    return scalars, tags["histograms"]


def module_factories() -> list:
    return [
        pytest.param(PlainClassifier, id="plain-autograd"),
        pytest.param(perturbation_module, id="perturbation"),
    ]


@pytest.mark.parametrize("make_module", module_factories())
@pytest.mark.parametrize("logger_kind", ["csv", "tensorboard"])
def test_all_monitors_log_valid_values(make_module, logger_kind: str, tmp_path) -> None:
    L.seed_everything(0)
    module = make_module()
    if logger_kind == "csv":
        logger = CSVLogger(tmp_path)
    else:
        logger = TensorBoardLogger(tmp_path)
    callbacks = monitors()
    fit(module, callbacks, logger)
    sparsity, dale, weights = callbacks
    if logger_kind == "csv":
        logged = read_csv(logger.log_dir)
    else:
        logged, histograms = read_tensorboard(logger.log_dir)
        assert any(h.startswith("weights/") and h.endswith("/log10_abs") for h in histograms)
    for monitor in callbacks:
        assert monitor.history, type(monitor).__name__
        for key, value in monitor.latest.items():
            assert logged[key][-1] == pytest.approx(value, rel=1e-5, nan_ok=True), key
        check_ranges(monitor.latest)
    # samples at steps 3 and 7 (every 4th batch); the epoch end saw no new weights
    assert [row["step"] for row in dale.history] == [3, 7]
    layers = {key.split("/")[1] for key in sparsity.latest}
    weighted = [n for n, m in module.named_modules() if default_weight_getter(m) is not None]
    assert len(weighted) == 2
    assert set(weighted) <= layers and len(layers) > len(weighted)  # + the activations
    assert {f"weights/{n}/ks_lognormal" for n in weighted} <= set(weights.latest)
    if make_module is perturbation_module:
        assert dale.latest["dale/sign_consistency"] == 1.0  # Dale layers by construction
        assert dale.latest["dale/sign_flips"] == 0.0
        assert sparsity.latest["sparsity/model.layers.1/zero_fraction"] >= 0.5  # k-WTA 50 %
    else:
        assert dale.latest["dale/sign_consistency"] < 0.2  # free weights mix signs
    assert os.path.isfile(os.path.join(logger.log_dir, "weight_distributions.png"))


def test_without_logger_results_stay_in_history(tmp_path) -> None:
    callbacks = monitors(every=3)
    fit(PlainClassifier(), callbacks, logger=False, batches=7, default_root_dir=tmp_path,
        limit_val_batches=0)  # fmt: skip
    # batches 3 and 6, then the epoch end (no validation: training epoch end, step 7)
    assert [row["step"] for row in callbacks[0].history] == [2, 5, 7]
    assert callbacks[1].values("dale/sign_flips")[0] >= 0  # since the start of training
    assert callbacks[2].figure_path == os.path.join(tmp_path, "weight_distributions.png")
    assert os.path.getsize(callbacks[2].figure_path) > 0


class Noise(nn.Module):
    """Draws from the global RNG even in eval mode, as some custom layers do."""

    def forward(self, x: Tensor) -> Tensor:
        return x + 1e-3 * torch.randn_like(x)


def test_monitors_do_not_change_training(tmp_path) -> None:
    """Same seed, with and without monitors: identical parameters and RNG stream."""
    states, rng = [], []
    for callbacks in ([], monitors(every=2)):
        L.seed_everything(0)
        module = PlainClassifier()
        module.net.insert(2, Noise())
        module.net[1].eval()  # a module the user froze in eval mode stays so
        fit(module, callbacks, default_root_dir=tmp_path)
        assert not module.net[1].training and module.net[4].training
        assert bool(callbacks) == bool(callbacks and callbacks[0].history)
        states.append(module.state_dict())
        rng.append(torch.get_rng_state())
    assert torch.equal(rng[0], rng[1])
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_no_matching_layer_warns_once_naming_the_search(tmp_path) -> None:
    callbacks = [
        SparsityMonitor(name_pattern="^encoder\\."),
        DaleLawMonitor(layer_types=(nn.Conv2d,)),
        WeightDistributionMonitor(name_pattern="nothing"),
    ]
    with pytest.warns(UserWarning) as record:
        fit(PlainClassifier(), callbacks, default_root_dir=tmp_path)
    messages = [str(w.message) for w in record if "found no layer" in str(w.message)]
    assert len(messages) == 3
    assert "'^encoder\\\\.'" in messages[0] and "ReLU" in messages[0]
    assert "Conv2d" in messages[1] and "Linear" not in messages[1]
    assert all(not c.history for c in callbacks)


def test_nonfinite_weights_and_activity_are_counted(tmp_path) -> None:
    module = PlainClassifier()
    with torch.no_grad():
        module.net[1].weight[0, :3] = float("nan")
        module.net[4].weight[1, 1] = float("inf")
    callbacks = monitors(every=2)
    fit(module, callbacks, batches=2, default_root_dir=tmp_path)
    sparsity, dale, weights = (c.latest for c in callbacks)
    assert dale["dale/net.1/nonfinite"] >= 3 and dale["dale/net.4/nonfinite"] >= 1
    assert weights["weights/net.1/nonfinite"] >= 3
    assert sparsity["sparsity/net.1/nonfinite"] > 0
    assert 0 <= dale["dale/net.1/sign_consistency"] <= 1


class Custom(nn.Module):
    """A layer that stores its weight as ``W`` (in, out): only a getter can find it."""

    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.rand(64, 10))

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.W


class CustomClassifier(PlainClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(Custom())


def test_weight_getter_reaches_arbitrary_modules(tmp_path) -> None:
    def getter(module: nn.Module) -> Tensor | None:
        return module.W.t() if isinstance(module, Custom) else None

    dale = DaleLawMonitor(weight_getter=getter, log_every_n_steps=1)
    weights = WeightDistributionMonitor(weight_getter=getter, log_every_n_steps=1)
    fit(CustomClassifier(), [dale, weights], batches=2, default_root_dir=tmp_path)
    assert [name for name, _ in dale.layers] == ["net.0"]
    assert dale.history[0]["dale/net.0/sign_consistency"] == 1.0  # uniform(0, 1): all positive
    assert weights.latest["weights/net.0/positive_fraction"] <= 1.0


def test_user_probe_and_forward_fn_also_serve_trainer_validate(tmp_path) -> None:
    seen: list[int] = []

    def forward_fn(module: L.LightningModule, batch: tuple[Tensor, Tensor]) -> Tensor:
        seen.append(batch[0].shape[0])
        return module(batch[0])

    x, y = torch.rand(300, 1, 8, 8), torch.zeros(300, dtype=torch.long)
    monitor = SparsityMonitor(probe_batch=(x, y), probe_size=40, forward_fn=forward_fn)
    trainer = L.Trainer(
        logger=False, callbacks=[monitor], enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=1, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.validate(PlainClassifier(), DigitsDataModule(batch_size=32), verbose=False)
    assert seen == [40] and len(monitor.history) == 1


def test_layer_selection_by_type_and_name() -> None:
    module = PlainClassifier()
    only_relu = SparsityMonitor(layer_types=[nn.ReLU])
    assert [n for n, _ in only_relu.select_layers(module)] == ["net.2"]
    last = DaleLawMonitor(name_pattern=r"net\.4$")
    assert [n for n, _ in last.select_layers(module)] == ["net.4"]


def test_only_rank_zero_collects() -> None:
    monitor = DaleLawMonitor()
    module = PlainClassifier()
    monitor.layers = monitor.select_layers(module)
    trainer = SimpleNamespace(is_global_zero=False, loggers=[], current_epoch=0)
    monitor.sample(trainer, module)
    assert monitor.history == []


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: SparsityMonitor(log_every_n_steps=0), "log_every_n_steps=0"),
        (lambda: DaleLawMonitor(log_every_n_steps=2.5), "log_every_n_steps=2.5"),
        (lambda: SparsityMonitor(layer_types=[int]), "layer_types="),
        (lambda: DaleLawMonitor(name_pattern="(unclosed"), "name_pattern='\\(unclosed'"),
        (lambda: SparsityMonitor(probe_size=1), "probe_size=1"),
        (lambda: SparsityMonitor(weight_rel_threshold=1.5), "weight_rel_threshold=1.5"),
        (lambda: DaleLawMonitor(weight_getter="weight"), "weight_getter='weight'"),
        (lambda: WeightDistributionMonitor(figure_name="a/b.jpg"), "figure_name='a/b.jpg'"),
        (lambda: WeightDistributionMonitor(max_samples=1), "max_samples=1"),
    ],
)
def test_bad_configuration_names_the_parameter(make, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make()


def test_tensorboard_histograms_per_layer(tmp_path) -> None:
    logger = TensorBoardLogger(tmp_path)
    monitor = WeightDistributionMonitor(log_every_n_steps=2, save_figure=False)
    fit(PlainClassifier(), [monitor], logger, batches=4)
    _, histograms = read_tensorboard(logger.log_dir)
    assert {"weights/net.1", "weights/net.4", "weights/net.4/log10_abs"} <= set(histograms)
    assert monitor.figure_path is None and not glob.glob(os.path.join(logger.log_dir, "*.png"))


def test_one_sample_per_optimizer_step_under_gradient_accumulation() -> None:
    from bioplausible_lightning.module import PerturbationModule
    from bioplausible_lightning.rules import NodePerturbation

    accumulating = PerturbationModule(BioMLP(hidden_sizes=(16,), seed=0),
                                      NodePerturbation(num_directions=1),
                                      accumulate_grad_batches=4)  # fmt: skip
    for module, kw in [(PlainClassifier(), {"accumulate_grad_batches": 4}), (accumulating, {})]:
        dale, weights = DaleLawMonitor(log_every_n_steps=1), WeightDistributionMonitor(1)
        trainer = fit(module, [dale, weights], limit_val_batches=0, **kw)
        assert trainer.global_step == 2  # 8 batches, 4 per optimizer step
        for monitor in (dale, weights):
            steps = [row["step"] for row in monitor.history]
            assert len(steps) == 2 and len(set(steps)) == 2, steps
        first, second = (tuple(v for k, v in row.items() if k.startswith("weights/"))
                         for row in weights.history)  # fmt: skip
        assert first != second


def test_default_interval_is_the_trainers_log_every_n_steps() -> None:
    callbacks = [DaleLawMonitor(), WeightDistributionMonitor(), SparsityMonitor()]
    fit(PlainClassifier(), callbacks, log_every_n_steps=2, limit_val_batches=0)
    for monitor in callbacks:
        assert [row["step"] for row in monitor.history][:4] == [1, 3, 5, 7], monitor
    with pytest.raises(ValueError, match="'trainer' for the Trainer's log_every_n_steps"):
        DaleLawMonitor(log_every_n_steps="every")


def test_a_fit_shorter_than_the_interval_is_sampled_once_at_its_end(tmp_path) -> None:
    # 5 optimizer steps, interval 50 (the Trainer's default): the Dale and weight monitors
    # (no epoch-end sample by default) would end the fit with nothing logged
    short = [DaleLawMonitor(), WeightDistributionMonitor()]
    trainer = fit(PlainClassifier(), short, logger=CSVLogger(tmp_path), batches=5,
                  log_every_n_steps=50, limit_val_batches=0)  # fmt: skip
    logged = read_csv(trainer.logger.log_dir)
    for monitor, key in zip(short, ("dale/sign_consistency", "weights/net.1/ks_normal")):
        assert [row["step"] for row in monitor.history] == [5], monitor
        assert logged[key] == monitor.values(key)  # and sent to the logger
    # a fit that did sample gets no extra sample at its end
    sampled = [DaleLawMonitor(log_every_n_steps=4), WeightDistributionMonitor(4)]
    fit(PlainClassifier(), sampled, batches=6, limit_val_batches=0)
    for monitor in sampled:  # optimizer step 4, logged at Lightning's logger step 3
        assert [row["step"] for row in monitor.history] == [3], monitor


def test_monitor_history_and_sign_patterns_continue_across_a_resume(tmp_path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(epochs: int, ckpt_path=None, save=False) -> list:
        L.seed_everything(0)
        callbacks = [DaleLawMonitor(log_every_n_steps=4), WeightDistributionMonitor(4)]
        extra = [ModelCheckpoint(dirpath=tmp_path, save_last=True)] if save else []
        fit(perturbation_module(), callbacks + extra, max_epochs=epochs, limit_val_batches=0,
            enable_checkpointing=save, default_root_dir=tmp_path, ckpt_path=ckpt_path)  # fmt: skip
        return callbacks

    straight = run(2)
    run(1, save=True)
    resumed = run(2, ckpt_path=str(tmp_path / "last.ckpt"))
    for a, b in zip(straight, resumed):
        assert [row["step"] for row in b.history] == [3, 7, 11, 15]
        assert b.history == a.history  # sign flips counted against the saved patterns
    assert resumed[0].state_key != resumed[1].state_key


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: DaleLawMonitor(log_every_n_steps=True), "log_every_n_steps"),
        (lambda: DaleLawMonitor(log_on_epoch_end="yes"), "log_on_epoch_end"),
        (lambda: DaleLawMonitor(tol=True), "tol"),
        (lambda: DaleLawMonitor(track_sign_flips=1), "track_sign_flips"),
        (lambda: WeightDistributionMonitor(save_figure="no"), "save_figure"),
        (lambda: WeightDistributionMonitor(figure_name=3), "figure_name"),
        (lambda: SparsityMonitor(activity_tol=float("nan")), "activity_tol"),
        (lambda: SparsityMonitor(forward_fn="forward"), "forward_fn"),
    ],
)
def test_monitor_arguments_are_type_checked_at_construction(make, name) -> None:
    with pytest.raises(ValueError, match=rf"{name}=.* is invalid"):
        make()
