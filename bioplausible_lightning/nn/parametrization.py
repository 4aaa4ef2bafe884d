"""Whole-object pickling of modules under ``torch.nn.utils.parametrize``.

``register_parametrization`` turns a layer into an instance of a class made on the fly
(``ParametrizedLinear``, a subclass of ``nn.Linear`` holding the ``weight`` property), which
pickle cannot name, and that class's ``__getstate__`` raises on purpose: torch supports
such modules through ``state_dict()`` only (``copy.deepcopy`` works, ``pickle``,
``torch.save(module)`` and ``strategy="ddp_spawn"`` do not).  torch offers no hook for
this, so the package gives each parametrised module's own dynamic class a
``__reduce_ex__`` (:func:`make_picklable`) that records the original class and the names
of the parametrised tensors; unpickling rebuilds the dynamic class and its properties the
way ``register_parametrization`` does, then restores the module's ``__dict__`` as it was
(the ``parametrizations`` ``ModuleDict``, the originals, the parametrisation modules and
their buffers travel as ordinary state).  Nothing is recomputed: the originals come back
bit for bit, and shared tensors stay shared within one pickle.

Every parametrisation this package registers goes through :func:`register_parametrization`
(:func:`~bioplausible_lightning.dale_`, :func:`~bioplausible_lightning.lebesgue_`), and the
Lightning modules call :func:`make_picklable` on their model before they are pickled, so a
parametrisation registered by hand with torch's function is covered there too.  A
parametrisation module itself must be picklable (ours are: plain modules with buffers).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.utils import parametrize

#: Marks a dynamic class that has been given :func:`_reduce_parametrized`.
_MARK = "_bioplausible_picklable"


def register_parametrization(
    module: nn.Module, tensor_name: str, parametrization: nn.Module, *, unsafe: bool = False
) -> nn.Module:
    """``torch.nn.utils.parametrize.register_parametrization``, leaving ``module`` picklable."""
    parametrize.register_parametrization(module, tensor_name, parametrization, unsafe=unsafe)
    _make_class_picklable(module)
    return module


def make_picklable(model: nn.Module) -> nn.Module:
    """Let every parametrised submodule of ``model`` (itself included) be pickled whole; in
    place, idempotent; returns ``model``.

    After it, ``pickle.dumps(model)`` / ``torch.save(model)`` work and the loaded copy is
    the same parametrised model (same classes as far as ``isinstance`` and
    ``parametrize.type_before_parametrizations`` tell, same originals bit for bit).
    """
    for module in model.modules():
        if parametrize.is_parametrized(module):
            _make_class_picklable(module)
    return model


def _make_class_picklable(module: nn.Module) -> None:
    # the dynamic class is made per module by register_parametrization, so setting an
    # attribute on it touches this module only
    cls = type(module)
    if not cls.__dict__.get(_MARK, False):
        cls.__reduce_ex__ = _reduce_parametrized  # type: ignore[method-assign]
        setattr(cls, _MARK, True)


def _reduce_parametrized(self: nn.Module, protocol: int) -> tuple[Any, ...]:
    base = type(self).__bases__[0]  # what torch's type_before_parametrizations returns
    names = tuple(self.parametrizations.keys())
    # the original class's own state (nn.Module's __getstate__: the __dict__, less the
    # compiled call), not the dynamic class's, which refuses
    state = base.__getstate__(self)
    return _rebuild_parametrized, (base, names), state


def _rebuild_parametrized(base: type[nn.Module], names: tuple[str, ...]) -> nn.Module:
    """An empty ``base`` instance with ``register_parametrization``'s dynamic class and one
    property per parametrised tensor; pickle then restores its ``__dict__``."""
    module = base.__new__(base)
    parametrize._inject_new_class(module)  # the same class torch itself would make
    for name in names:
        parametrize._inject_property(module, name)
    _make_class_picklable(module)
    return module


__all__ = ["make_picklable", "register_parametrization"]
