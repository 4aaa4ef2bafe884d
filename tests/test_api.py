import importlib
import pkgutil

import bioplausible_lightning as bl


def _modules():
    for info in pkgutil.walk_packages(bl.__path__, "bioplausible_lightning."):
        yield importlib.import_module(info.name)


INTERNAL = {"check_interval", "check_pattern", "check_types", "logger_step", "TRAINER_INTERVAL",
            "default_forward", "evaluation_mode", "preserved_rng", "save_histogram_figure",
            "type_names"}  # fmt: skip


def test_every_exported_name_exists_and_helpers_are_not_exported():
    for module in [bl, *_modules()]:
        exported = getattr(module, "__all__", [])
        assert len(exported) == len(set(exported)), module.__name__
        for name in exported:
            assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name!r}"
            assert not name.startswith("_"), f"{module.__name__}: {name}"
        # the monitors' and metrics' internal helpers are importable, not exported
        assert INTERNAL.isdisjoint(exported), module.__name__


def test_deprecated_dale_classes_stay_importable_but_unlisted():
    from bioplausible_lightning import DaleConv2d, DaleLinear, nn

    assert nn.DaleLinear is DaleLinear and nn.DaleConv2d is DaleConv2d
    assert {"DaleLinear", "DaleConv2d"}.isdisjoint(bl.__all__)
    assert {"dale_", "DaleExp"} <= set(bl.__all__)
