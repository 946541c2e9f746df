"""Real models from third-party libraries for the tests, built with random weights (nothing
is downloaded).

timm imports torchvision at import time, though its models use none of it (only its
isinstance checks for FrozenBatchNorm2d and its data pipeline do), and torchvision has no
build for this CPU torch: where torchvision is missing, timm is imported with placeholder
``torchvision`` modules, which are removed again right after.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

import pytest


class _Placeholder(type):
    """A class whose every attribute is another placeholder class (``InterpolationMode.BILINEAR``
    at import time)."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


@contextlib.contextmanager
def _placeholder_torchvision():
    finder = _PlaceholderFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]


def import_timm():
    """timm, or a pytest skip when it is not installed."""
    if "timm" in sys.modules:
        return sys.modules["timm"]
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (make setup installs it)")
    if importlib.util.find_spec("torchvision") is not None:
        import timm
    else:
        with _placeholder_torchvision():
            import timm
    return timm
