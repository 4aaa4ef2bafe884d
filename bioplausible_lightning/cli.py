"""``bioplausible-lightning`` console script: LightningCLI with the digits run as default.

``bioplausible-lightning fit`` with no arguments trains the packaged default
(``configs/digits.yaml``); every value can be overridden from the command line or another
``--config`` file, as with any LightningCLI.  After ``fit`` the test split is evaluated
(``--test_after_fit false`` to skip).
"""

from __future__ import annotations

from importlib.resources import files

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.core import LightningDataModule

from .module import ClassifierModule

DEFAULT_CONFIG = str(files("bioplausible_lightning") / "configs" / "digits.yaml")
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class BioCLI(LightningCLI):
    """LightningCLI whose model is any :class:`ClassifierModule` and data any DataModule."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, evaluate the test split with the trained weights.",
        )

    def after_fit(self) -> None:
        if self._get(self.config, "test_after_fit") and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)


def run_cli(args: list[str] | None = None) -> BioCLI:
    """Build and run the CLI; ``args`` for programmatic use and tests (default: ``sys.argv``)."""
    return BioCLI(
        ClassifierModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={cmd: {"default_config_files": [DEFAULT_CONFIG]} for cmd in SUBCOMMANDS},
        args=args,
    )


def main() -> None:
    """Entry point of the ``bioplausible-lightning`` console script."""
    run_cli()


if __name__ == "__main__":
    main()
