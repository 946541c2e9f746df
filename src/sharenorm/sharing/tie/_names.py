"""Dotted names: resolve ``"decoder.weight"`` to (module, attribute), with helpful errors."""

from __future__ import annotations

import difflib

from torch import nn
from torch.nn.utils import parametrize

from sharenorm.sharing.tie._link import links_of


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _module_paths(model: nn.Module) -> dict[int, str]:
    """id(module) -> its first path in ``model`` ('' for the model itself)."""
    paths: dict[int, str] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(m), path)
    return paths


def _unknown_name(model: nn.Module, name: str, role: str) -> ValueError:
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in model.named_buffers(remove_duplicate=False)]
    for path, m in model.named_modules(remove_duplicate=False):
        names += [_join(path, n) for n in links_of(m)]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    if close:
        hint = f"; did you mean {', '.join(map(repr, close))}?"
    else:
        shown = ", ".join(map(repr, names[:8])) + (", ..." if len(names) > 8 else "")
        hint = f"; the model has {shown or 'no parameters'}"
    return ValueError(f"{role} {name!r} is not a parameter or buffer of the model{hint}")


def resolve(model: nn.Module, name: str, role: str = "name") -> tuple[nn.Module, str]:
    """The (module, attribute) that the dotted ``name`` refers to, with a helpful error."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"{role} must be a dotted name such as 'decoder.weight', got {name!r}")
    mpath, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(mpath)
    except AttributeError:
        raise _unknown_name(model, name, role) from None
    stored = module._parameters.get(attr) is not None or module._buffers.get(attr) is not None
    if stored or attr in links_of(module):
        return module, attr
    if parametrize.is_parametrized(module, attr):
        if role == "target":
            raise ValueError(
                f"target {name!r} is parametrized ({type(module).__name__}, e.g. by weight_norm) "
                f"and is computed by its parametrization; tie it as the source instead, or call "
                f"torch.nn.utils.parametrize.remove_parametrizations(module, {attr!r}) first"
            )
        return module, attr
    if attr in module._modules:
        raise ValueError(
            f"{role} {name!r} is a module, not a tensor; name one of its parameters, e.g. "
            f"'{name}.weight'"
        )
    raise _unknown_name(model, name, role)


def _in_state_dict(module: nn.Module, name: str) -> bool:
    """Whether ``module``'s tensor ``name`` is a state_dict entry of its own (not derived)."""
    if module._parameters.get(name) is not None:
        return True
    return module._buffers.get(name) is not None and name not in module._non_persistent_buffers_set
