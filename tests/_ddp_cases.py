"""Small training runs for the distributed tests, and the job that runs them under ``ddp``.

``python tests/_ddp_cases.py OUT_DIR`` first fits one model with ``strategy="ddp_spawn"``
(:func:`run_spawn`), then every case with Lightning's ``strategy="ddp"`` on 2 CPU processes
(gloo): Lightning re-launches this script for rank 1, so all cases share one process start.
After each fit every rank gathers what must be identical (parameters, the optimizers'
learning rates, the rule's state, the skip counters); rank 0 saves, per case, whether the
ranks agree bit for bit, the final parameters and the digits test accuracy to
``OUT_DIR/results.pt``.  ``tests/test_distributed.py`` reads the job's results (:class:`DDPJob`,
started by ``conftest.py`` as soon as a test that needs it is collected) and compares them with
the same cases fitted in one process (:func:`run_case` with ``devices=1``).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import pytest
import torch
from torch import nn

import bioplausible_lightning
from bioplausible_lightning import (
    BackpropModule,
    BioMLP,
    CompetitiveHebbian,
    DigitsDataModule,
    DopamineStepSize,
    HebbianPerturbation,
    NodePerturbation,
    PerturbationModule,
    WeightPerturbation,
)
from bioplausible_lightning.losses import cross_entropy

#: The global batch: 2 processes x 32, or 1 process x 64.
GLOBAL_BATCH = 64
#: What an outer launcher may have set; Lightning must pick its own rendezvous.
LAUNCHER_VARIABLES = ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")


class DDPJob:
    """This script's job (:func:`main`) in a child process, niced, in a session of its own
    with the processes it starts. ``conftest.py`` starts it at collection and runs the tests
    that read it last, so its process start-ups and tiny fits overlap the rest of the suite.
    A thread writes the job's exit code to ``OUT/exit_code`` when it ends, so that a test
    process other than the one that started it (a pytest-xdist worker) can wait for it too
    (:func:`job_results`)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        root = Path(bioplausible_lightning.__file__).resolve().parents[1]  # this checkout
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(root), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
        for name in LAUNCHER_VARIABLES:
            env.pop(name, None)
        with open(out / "job.log", "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), str(out)], env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        threading.Thread(target=self._record_exit, daemon=True).start()

    def _record_exit(self) -> None:
        code = self.process.wait()
        (self.out / "exit_code.tmp").write_text(str(code))
        (self.out / "exit_code.tmp").replace(self.out / "exit_code")  # whole, or not there

    def results(self, timeout: float = 400) -> dict[str, Any]:
        """Wait for the job; its results, or a test failure with the end of its log."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            _fail(self.out, f"killed after {timeout:g} s")
        return job_results(self.out, timeout=10)  # its exit code is being written

    def stop(self) -> None:
        """Kill the job and its processes if they still run (an interrupted suite)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def job_results(out: Path, timeout: float = 400) -> dict[str, Any]:
    """Wait until the job writing to ``out`` has ended (its ``exit_code``); its results, or a
    test failure with the end of its log."""
    deadline = time.monotonic() + timeout
    while not (out / "exit_code").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    code = (out / "exit_code").read_text() if (out / "exit_code").exists() else None
    if code != "0" or not (out / "results.pt").exists():
        _fail(out, f"rc={code}" if code is not None else f"not ended after {timeout:g} s")
    return torch.load(out / "results.pt", weights_only=False)


def _fail(out: Path, status: str) -> NoReturn:
    log = out / "job.log"
    text = log.read_text(errors="replace") if log.exists() else "(no log: it never started)"
    pytest.fail(f"the 2-process job failed ({status}):\n{text[-6000:]}")


def ddp_job_folder(config: pytest.Config) -> Path | None:
    """Where a pytest-xdist worker finds the job its controller started (``conftest.py``);
    None outside pytest-xdist."""
    folder = getattr(config, "workerinput", {}).get("bioplausible_ddp_job")
    return None if folder is None else Path(folder)


#: Where ``conftest.py`` keeps the job it started for this test session.
DDP_JOB = pytest.StashKey[DDPJob]()


def _mlp(dropout: float | None = None) -> nn.Module:
    torch.manual_seed(0)
    drop = [] if dropout is None else [nn.Dropout(dropout)]  # draws from the global RNG
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), *drop, nn.Linear(32, 10))


class _NanOnRankOne:
    """Cross-entropy that is NaN at one call on rank 1 only (a local non-finite step)."""

    def __init__(self, at_call: int) -> None:
        self.at_call, self.calls = at_call, 0

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = cross_entropy(logits, targets)
        self.calls += 1
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 1 and self.calls == self.at_call:
            losses = losses.clone()
            losses[0] = math.nan
        return losses


def build(case: str) -> tuple[L.LightningModule, dict[str, Any]]:
    """The module of ``case`` and the Trainer options of its fit."""
    adam = lambda lr: lambda p: torch.optim.Adam(p, lr=lr)  # noqa: E731
    if case == "np":  # learns: accuracy compared with one process
        model = BioMLP(hidden_sizes=(64,), seed=0)
        return PerturbationModule(model, NodePerturbation(num_directions=4)), {"max_epochs": 3}
    if case == "wp_shared_multiplicative":  # = one process with the global batch
        rule = WeightPerturbation(num_directions=2, mode="multiplicative", seed=1)
        return PerturbationModule(BioMLP(hidden_sizes=(32,), seed=0), rule, adam(1e-2)), {
            "max_steps": 8}  # fmt: skip
    if case == "wp_allreduce_additive":
        rule = WeightPerturbation(num_directions=2, distributed="all_reduce", seed=1)
        return PerturbationModule(_mlp(), rule, adam(1e-2)), {"max_steps": 8}
    if case == "wp_shared_dense":
        rule = WeightPerturbation(structure="dense", estimator="forward", seed=2)
        return PerturbationModule(_mlp(), rule, adam(1e-2)), {"max_steps": 4}
    if case == "wp_shared_inplace":  # inplace_update: every rank applies the same update
        rule = WeightPerturbation(num_directions=2, seed=1)
        sgd = lambda p: torch.optim.SGD(p, lr=0.05)  # noqa: E731
        return PerturbationModule(_mlp(), rule, sgd, inplace_update=True), {"max_steps": 6}
    if case == "bp":
        return BackpropModule(BioMLP(hidden_sizes=(64,), seed=0)), {"max_epochs": 3}
    if case == "hebbian":  # the rule's own SGD and its thresholds
        rule = HebbianPerturbation(readout=NodePerturbation(num_directions=2))
        return PerturbationModule(_mlp(), rule), {"max_steps": 6}
    if case == "hebbian_greedy":  # after its greedy stage only the readout runs
        rule = HebbianPerturbation(CompetitiveHebbian(layer_steps=3),
                                   NodePerturbation(num_directions=2), readout_start=3)  # fmt: skip
        return PerturbationModule(_mlp(), rule), {"max_steps": 6}
    if case == "skip_with_adapter":  # rank 1 alone meets a NaN at its 3rd batch
        module = PerturbationModule(
            _mlp(), NodePerturbation(num_directions=2), loss=_NanOnRankOne(at_call=3),
            step_size_adapter=lambda opt: DopamineStepSize(opt, warmup=2),
            accumulate_grad_batches=2,
        )  # fmt: skip
        return module, {"max_steps": 4}
    if case == "bp_skip":  # backprop: the backward waits until every process found its loss
        module = BackpropModule(_mlp(), loss=_NanOnRankOne(at_call=3), accumulate_grad_batches=2)
        return module, {"max_steps": 4}  # finite (a backward on rank 0 alone would hang)
    raise ValueError(f"unknown case {case!r}")


CASES = (
    "np", "wp_shared_multiplicative", "wp_allreduce_additive", "wp_shared_dense",
    "wp_shared_inplace", "bp", "hebbian", "hebbian_greedy", "skip_with_adapter", "bp_skip",
)  # fmt: skip


def trainer(devices: int, root: Path, **kwargs: Any) -> L.Trainer:
    options = dict(accelerator="cpu", devices=devices, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                   limit_val_batches=0, default_root_dir=root)  # fmt: skip
    if devices > 1:
        options["strategy"] = "ddp"
    options.update(kwargs)
    return L.Trainer(**options)


def data(devices: int) -> DigitsDataModule:
    return DigitsDataModule(batch_size=GLOBAL_BATCH // devices, seed=0)


def digits_accuracy(module: L.LightningModule) -> float:
    """Accuracy on the digits test split, on this process, over the whole split."""
    dm = DigitsDataModule(seed=0)
    dm.setup()
    x, y = dm.test_set.tensors
    module.eval()
    with torch.no_grad():
        return float((module.model(x).argmax(1) == y).float().mean())


def parameters(module: L.LightningModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def fingerprint(module: L.LightningModule) -> list[Any]:
    """Everything that must be identical on every process after a fit."""
    items: list[Any] = list(parameters(module).values())
    items.append([g["lr"] for opt in module.trainer.optimizers for g in opt.param_groups])
    items.append([g["lr"] for opt in module._rule_optimizers for g in opt.param_groups])
    items.append((module.skipped_steps, module.consecutive_skips, module.global_step))
    if isinstance(module, PerturbationModule):
        items.append(module.rule.state_dict())
        if module.step_size_adapter is not None:
            items.append(module.step_size_adapter.state_dict())
    return items


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def run_case(case: str, devices: int, root: Path) -> dict[str, Any]:
    L.seed_everything(0, verbose=False)
    module, options = build(case)
    fit = trainer(devices, root, **options)
    fit.fit(module, data(devices))
    result = {"params": parameters(module), "accuracy": digits_accuracy(module),
              "skipped_steps": module.skipped_steps, "global_step": module.global_step}  # fmt: skip
    if devices > 1:
        gathered: list[Any] = [None] * fit.world_size
        torch.distributed.all_gather_object(gathered, fingerprint(module))
        result["identical"] = all(same(gathered[0], other) for other in gathered[1:])
        result["world_size"] = fit.world_size
    return result


class SaveFingerprint(L.Callback):
    """At the end of training, on every process: gather :func:`fingerprint`; rank 0 saves
    whether the processes agree, and its parameters, to ``path`` (for ``ddp_spawn``, whose
    processes return nothing else to the caller)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        gathered: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, fingerprint(module))
        if trainer.global_rank == 0:
            torch.save({"identical": all(same(gathered[0], g) for g in gathered[1:]),
                        "world_size": trainer.world_size, "params": parameters(module)},
                       self.path)  # fmt: skip


class ShutDownProcessGroup(L.Callback):
    """After fit, on every process: a barrier, then ``destroy_process_group``.

    Lightning leaves the process group to an ``atexit`` handler; a process that reaches
    interpreter shutdown with Gloo's worker threads still holding work can abort with
    ``terminate called without an active exception`` (seen once under ``ddp_spawn`` on the CI
    machine). Torch's documented shutdown is an explicit destroy on every process once no more
    collectives follow; ``teardown`` is the last hook of ``fit``, and ``ddp_spawn``'s hand-back
    of rank 0's weights after it uses no collective.
    """

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        shut_down_process_group()


def shut_down_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank tears down while another still communicates
        torch.distributed.destroy_process_group()


def run_resume(devices: int, root: Path) -> dict[str, Any]:
    """Straight 2 epochs vs. a run stopped mid-epoch (a checkpoint at step 4) and resumed."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(ckpt_path: str | None = None, callbacks: tuple = (), **kwargs: Any):
        L.seed_everything(0, verbose=False)
        rule = NodePerturbation(num_directions=2, seed=3)  # per-rank noise, shared generator
        module = PerturbationModule(_mlp(dropout=0.2), rule,  # the module checkpoints
                                    lambda p: torch.optim.Adam(p, lr=1e-2))  # its global RNG
        options = {"max_epochs": 2, **kwargs}
        run = trainer(devices, root, callbacks=list(callbacks),
                      enable_checkpointing=bool(callbacks), **options)  # fmt: skip
        run.fit(module, data(devices), ckpt_path=ckpt_path)
        return module

    straight = fit()
    directory = root / "resume_ckpt"
    fit(callbacks=(ModelCheckpoint(dirpath=directory, save_top_k=-1, every_n_train_steps=4),),
        max_steps=4)  # fmt: skip
    (path,) = directory.glob("*step=4*.ckpt")
    resumed = fit(ckpt_path=str(path))
    a, b = parameters(straight), parameters(resumed)
    return {"bit_identical": all(torch.equal(a[k], b[k]) for k in a)}


def main(out: Path) -> None:
    warnings.filterwarnings("ignore")
    results: dict[str, Any] = {}
    if "LOCAL_RANK" not in os.environ:  # the launching process, before Lightning starts rank 1
        results["spawn"] = run_spawn(out)
    for case in CASES:
        results[case] = run_case(case, 2, out)
    results["resume"] = run_resume(2, out)
    if torch.distributed.get_rank() == 0:
        torch.save(results, out / "results.pt")
    shut_down_process_group()  # rank 1 ends with rank 0, and neither leaves it to atexit


def _fit_with_ddp_spawn(out: Path) -> tuple[L.LightningModule, dict[str, torch.Tensor]]:
    module = PerturbationModule(BioMLP(hidden_sizes=(32,), seed=0),
                                NodePerturbation(num_directions=2, seed=1))  # fmt: skip
    before = parameters(module)
    callbacks = [SaveFingerprint(out / "spawn.pt"), ShutDownProcessGroup()]
    fit = trainer(2, out, strategy="ddp_spawn", max_steps=4, callbacks=callbacks)
    fit.fit(module, DigitsDataModule(batch_size=32, seed=0))
    return module, before


def run_spawn(out: Path) -> dict[str, Any]:
    """``ddp_spawn`` pickles the module (a Dale BioMLP), the rule and the data module into 2
    fresh processes; what rank 0 saved (whether they agree, its parameters) and this caller's
    module before and after the fit. Run before any ``ddp`` fit, from the launching process
    only, with the environment restored after it (the launcher sets its rendezvous there)."""
    from torch.multiprocessing.spawn import ProcessExitedException

    environ = dict(os.environ)
    try:
        try:
            module, before = _fit_with_ddp_spawn(out)
        except ProcessExitedException as err:
            # A process that aborts at exit *after* training finished (its fingerprint is
            # saved) is torch's Gloo shutdown, not this package: one fresh try. An abort of
            # ours would come back on the second try, and any other failure is not retried.
            if err.signal_name != "SIGABRT" or not (out / "spawn.pt").exists():
                raise
            (out / "spawn.pt").unlink()
            module, before = _fit_with_ddp_spawn(out)
    finally:
        os.environ.clear()
        os.environ.update(environ)
    processes = torch.load(out / "spawn.pt", weights_only=False)
    return {"before": before, "after": parameters(module), "processes": processes}


if __name__ == "__main__":
    if "LOCAL_RANK" not in os.environ:  # rank 1 inherits it from this launching process
        os.nice(10)  # a background job of the suite: its processes yield to the tests
    main(Path(sys.argv[1]))
