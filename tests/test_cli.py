import sys
from pathlib import Path

import pytest
from lightning.pytorch.core import LightningDataModule

from bioplausible_lightning import BackpropModule, BioMLP, NodePerturbation, PerturbationModule
from bioplausible_lightning.cli import DEFAULT_CONFIG, BioCLI, run_cli
from bioplausible_lightning.module import DEFAULT_LR, ClassifierModule, rule_config

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false"]  # fmt: skip


def test_fit_without_arguments_uses_the_packaged_digits_default(tmp_path):
    cli = run_cli(["fit", f"--trainer.default_root_dir={tmp_path}", *QUICK])
    assert isinstance(cli.model, PerturbationModule)
    assert isinstance(cli.model.model, BioMLP)
    assert isinstance(cli.model.rule, NodePerturbation)
    # test_after_fit evaluated the test split
    assert 0.0 <= float(cli.trainer.callback_metrics["test/acc"]) <= 1.0
    assert list(tmp_path.rglob("*.ckpt")), "the default ModelCheckpoint wrote nothing"
    assert list(tmp_path.rglob("config.yaml")), "LightningCLI saved no config"


def test_example_config_and_backprop_switch(tmp_path):
    cli = run_cli(["fit", "--config", str(ROOT / "examples" / "digits.yaml"),
                   "--model", "BackpropModule", f"--trainer.default_root_dir={tmp_path}",
                   "--test_after_fit=false", *QUICK])  # fmt: skip
    assert isinstance(cli.model, BackpropModule)
    assert "test/acc" not in cli.trainer.callback_metrics
    assert float(cli.trainer.callback_metrics["val/acc"]) > 0.5


def test_validate_subcommand_and_overrides(tmp_path):
    cli = run_cli(["validate", f"--trainer.default_root_dir={tmp_path}",
                   "--model.rule.init_args.sigma=0.05", "--data.init_args.batch_size=128",
                   "--trainer.enable_progress_bar=false"])  # fmt: skip
    assert cli.model.rule.sigma == 0.05
    assert cli.datamodule.batch_size == 128


def test_bad_config_value_names_parameter_and_value(tmp_path):
    with pytest.raises(ValueError, match=r"sigma=-1.0 is invalid: it must be a finite number > 0"):
        run_cli(["fit", f"--trainer.default_root_dir={tmp_path}",
                 "--model.rule.init_args.sigma=-1", *QUICK])  # fmt: skip


def test_console_script_help_runs(monkeypatch, capsys):
    """The installed ``bioplausible-lightning`` entry point, called as the console script
    calls it (in-process: a subprocess would spend its time importing torch again; CI runs
    the script itself in the README's first command)."""
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts")
                 if e.name == "bioplausible-lightning"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["bioplausible-lightning", "fit", "--help"])
    with pytest.raises(SystemExit) as done:
        script.load()()
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and "--test_after_fit" in out


def test_hebbian_rule_from_the_cli_on_the_default_config(tmp_path):
    from bioplausible_lightning import CompetitiveHebbian, HebbianPerturbation

    cli = run_cli(["fit", "--model.rule", "bioplausible_lightning.HebbianPerturbation",
                   f"--trainer.default_root_dir={tmp_path}", "--test_after_fit=false",
                   *QUICK])  # fmt: skip
    assert isinstance(cli.model.rule, HebbianPerturbation)
    assert isinstance(cli.model.rule.hebbian, CompetitiveHebbian)
    assert cli.model.rule.hebbian.steps > 0  # the hidden layer learned
    assert float(cli.trainer.callback_metrics["val/acc"]) > 0.3  # chance is 0.10


def test_hebbian_example_config_builds_the_plain_model_and_the_papers_rule(tmp_path):
    from torch import nn

    from bioplausible_lightning import HebbianPerturbation, SoftWinnerTakeAll

    cli = run_cli(["fit", "--config", str(ROOT / "examples" / "digits_hebbian.yaml"),
                   f"--trainer.default_root_dir={tmp_path}", "--test_after_fit=false",
                   *QUICK, "--trainer.max_steps=3"])  # what it builds, not how well  # fmt: skip
    assert cli.trainer.global_step == 3
    assert isinstance(cli.model.rule, HebbianPerturbation)
    assert cli.model.rule.readout.replicate_at == "first_target"
    layers = [m for m in cli.model.model.modules() if isinstance(m, nn.Linear)]
    assert len(layers) == 2 and all(type(m) is nn.Linear for m in layers)
    assert any(isinstance(m, SoftWinnerTakeAll) for m in cli.model.model.modules())


def test_packaged_config_and_python_defaults_are_one_source_of_truth():
    cli = BioCLI(ClassifierModule, LightningDataModule, subclass_mode_model=True,
                 subclass_mode_data=True, run=False, args=[],
                 parser_kwargs={"default_config_files": [DEFAULT_CONFIG]})  # fmt: skip
    python = PerturbationModule(BioMLP())
    assert rule_config(cli.model.rule) == rule_config(python.rule)
    cli_lr = cli.model.configure_optimizers().param_groups[0]["lr"]
    assert cli_lr == python.configure_optimizers().param_groups[0]["lr"] == DEFAULT_LR
