"""Finding the user's app from ``module:attribute`` (for ``kiq run`` and the pytest plugin)."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from kiq.app import Kiq
from kiq.errors import ConfigError

__all__ = ["load_app"]

#: Attribute names tried, in order, when only a module is given.
_CONVENTIONAL = ("app", "kiq", "create_app", "make_app")


def _import(name: str) -> ModuleType:
    if not name or any(not part.isidentifier() for part in name.split(".")):
        raise ConfigError(f"{name!r} is not a module path (expected e.g. myproject.jobs or myproject.jobs:app)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules in the current directory import
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(f"no module named {name!r} (looked in the current directory and sys.path)") from None
        raise ConfigError(f"importing {name!r} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"importing {name!r} failed: {type(exc).__name__}: {exc}") from exc


def _resolve(value: object, where: str) -> Kiq:
    if isinstance(value, Kiq):
        return value
    if callable(value):
        try:
            made = value()
        except Exception as exc:
            raise ConfigError(f"calling {where}() failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(made, Kiq):
            return made
        raise ConfigError(f"{where}() returned {type(made).__name__}, not a kiq.Kiq")
    raise ConfigError(f"{where} is a {type(value).__name__}, not a kiq.Kiq (or a function returning one)")


def load_app(target: str) -> Kiq:
    """The :class:`Kiq` named by ``module:attribute`` (an app, or a function
    returning one), or by ``module`` alone: its ``app``, ``kiq``,
    ``create_app`` or ``make_app``, else its only Kiq. Raises
    :class:`~kiq.errors.ConfigError` saying what is wrong."""
    name, _, attr = target.partition(":")
    module = _import(name)
    if attr:
        value: object = module
        for part in attr.split("."):
            if not hasattr(value, part):
                raise ConfigError(f"module {name!r} has no attribute {attr!r}")
            value = getattr(value, part)
        return _resolve(value, target)
    for conventional in _CONVENTIONAL:
        if hasattr(module, conventional):
            return _resolve(getattr(module, conventional), f"{name}:{conventional}")
    apps = [v for v in vars(module).values() if isinstance(v, Kiq)]
    if len(apps) == 1:
        return apps[0]
    found = "several" if apps else "no"
    raise ConfigError(f"module {name!r} has {found} kiq.Kiq objects; name one as {name}:<attribute>")
