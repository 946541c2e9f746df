"""``save`` / ``load``: safetensors checkpoints that store each tensor once and remember ties.

A standard safetensors file (readable by any safetensors reader): each stored tensor once, under
its ``named_parameters()`` name; the metadata holds the tie manifest (``sharenorm.ties``: one
``{"target", "source", "transform", "how"}`` per name derived from a stored tensor) and a
SHA-256 of every tensor (``sharenorm.sha256``). ``load`` re-creates the manifest's ties, then
loads; files of ``safetensors.torch.save_model`` load too. Writes are atomic (a temporary file
moved over ``path``). Format details: docs/design/tying.md, "Checkpoints".
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from sharenorm._checks import check_module, not_a_regular_file
from sharenorm.sharing.tie import TRANSFORMS, apply_transform, iter_links, resolve, tie, ties
from sharenorm.sharing.tie._api import _links_of, _plan, _simulate
from sharenorm.sharing.tie._inspect import _same_storage, _view_transform
from sharenorm.sharing.tie._names import _in_state_dict, _join, _module_paths
from sharenorm.sharing.tie._state_dict import _mismatch
from sharenorm.sharing.tie._transforms import transformed_shape

__all__ = ["save", "load"]

MANIFEST_KEY = "sharenorm.ties"
DIGEST_KEY = "sharenorm.sha256"
FORMAT_KEY = "sharenorm.format"
FORMAT_VERSION = "1"
_HOWS = ("tie", "identity", "storage")
_SHOWN = 8  # problems of one kind listed in an error message; the rest are counted or elided


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _stored_and_manifest(
    model: nn.Module,
) -> tuple[dict[str, Tensor], list[dict[str, Any]], list[str]]:
    """The tensors to store (each storage once), the manifest of names derived from them, and
    the ties the file cannot record (``"target ← source"``: their targets are stored as
    values)."""
    state = model.state_dict()
    manifest: list[dict[str, Any]] = []
    derived: set[str] = set()
    unrecorded: list[str] = []
    # 1. Declared ties: the target key is T(source), never stored.
    # Every name of a reused target module (its second name is a view of the source too).
    for target, source, transform, link in iter_links(model):
        if source is None or target not in state or not _in_state_dict(link.module, link.name):
            # A source outside the model, or derived state (parametrized, pruned,
            # non-persistent): the target is stored as its value; a model built with the
            # tie ignores it on load (the source's module loads what it is computed from).
            if target in state:
                unrecorded.append(f"{target} ← {source or link.hint}")
            continue
        manifest.append({"target": target, "source": source, "transform": transform, "how": "tie"})
        derived.add(target)
    # 2. Plain sharing among what is left: the same tensor or its transpose is stored once;
    #    another overlapping view is stored as its own copy (safetensors refuses shared memory).
    stored: dict[str, Tensor] = {}
    for key, t in state.items():
        if key in derived:
            continue
        if not isinstance(t, Tensor):
            raise ValueError(
                f"cannot save {key!r}: it is a {type(t).__name__} (a module's get_extra_state), "
                f"and safetensors stores only tensors (its metadata is str -> str); return a "
                f"tensor from get_extra_state, or save this model with "
                f"torch.save(model.state_dict(), path)"
            )
        if t.device.type == "meta":
            raise ValueError(
                f"cannot save {key!r}: it is on the meta device (no values); materialise the "
                f"model first, e.g. model.to_empty(device='cpu') and re-initialise or load it"
            )
        if is_dtensor(t):
            raise ValueError(
                f"cannot save {key!r}: it is a DTensor, this rank's shard of a model sharded by "
                f"FSDP2 (fully_shard) or tensor parallelism. Gather the whole tensors on every "
                f"rank, torch.distributed.checkpoint.state_dict.get_model_state_dict(model, "
                f"options=StateDictOptions(full_state_dict=True)), load them into an unsharded "
                f"copy of the model and sharenorm.save that on one rank; or save the shards "
                f"with torch.distributed.checkpoint"
            )
        for skey, s in stored.items():
            if _same_storage(t, s):
                how = _view_transform(s, t)
                if how is not False:
                    manifest.append(
                        {"target": key, "source": skey, "transform": how, "how": "storage"}
                    )
                    break
        else:
            stored[key] = t
    for key, t in stored.items():
        # Contiguous, and a private copy if it still overlaps another stored tensor.
        overlaps = any(_same_storage(t, s) for k, s in stored.items() if k != key)
        stored[key] = t.detach().clone() if overlaps else t.detach().contiguous()
    # Name the sharing kind precisely where torch's identity sharing is the cause.
    params = dict(model.named_parameters(remove_duplicate=False))
    for entry in manifest:
        a, b = params.get(entry["target"]), params.get(entry["source"])
        if entry["how"] == "storage" and a is not None and a is b:
            entry["how"] = "identity"
    return stored, manifest, unrecorded


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (a shard of a distributed tensor; only where
    torch.distributed.tensor is loaded: nothing else makes one)."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and isinstance(t, dtensor.DTensor)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch's wrappers: ``torch.compile``'s (``_orig_mod``),
    ``DistributedDataParallel``'s and ``DataParallel``'s (``module``). A wrapper's
    ``state_dict`` prefixes every name (``_orig_mod.``, ``module.``), so a checkpoint of it
    would not load into the plain model, nor the plain model's into it.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2)
        >>> unwrap(torch.nn.DataParallel(net)) is net
        True
    """
    # torch.compile's class, only where torch._dynamo is loaded: importing it costs ~1 s
    dynamo = sys.modules.get("torch._dynamo.eval_frame")
    while True:
        if dynamo is not None and isinstance(model, dynamo.OptimizedModule):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def save(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write ``model``'s tensors (each stored tensor once) and its tie manifest to ``path``.

    Args:
        model: the module to save; inside ``torch.compile``, DistributedDataParallel or
            DataParallel, the model they wrap (:func:`unwrap`: the names do not depend on
            the wrapper).
        path: the ``.safetensors`` file to write (replaced atomically if it exists).
        metadata: extra ``str → str`` entries for the file's metadata.

    Raises:
        ValueError: a meta tensor (nothing to save), a DTensor (a shard of an FSDP2 or
            tensor-parallel model: save the gathered full tensors), or non-string metadata.

    Example:
        >>> import os, tempfile, sharenorm as sn
        >>> ae = sn.TiedAutoencoder([784, 64])
        >>> path = os.path.join(tempfile.mkdtemp(), "ae.safetensors")
        >>> sn.save(ae, path)
        >>> fresh = sn.TiedAutoencoder([784, 64], tied=False)   # untied: load re-creates the tie
        >>> _ = sn.load(fresh, path)
        >>> sn.ties(fresh)[0].members
        (('decoder.0.weight', 'transpose', 'tie'),)
    """
    check_module(model, "sharenorm.save")
    stored, manifest, unrecorded = _stored_and_manifest(unwrap(model))
    if unrecorded:
        # Silent, a fresh model would load these as separate values and drift apart in training.
        warnings.warn(
            f"sharenorm.save: the file cannot record the tie(s) {', '.join(unrecorded)}: their "
            f"source is computed (a parametrization such as weight_norm, pruning, a "
            f"non-persistent buffer) or lies outside the model, so each target is stored as its "
            f"value. A model built with these ties loads the file as saved; into one without "
            f"them, call sharenorm.tie again after sharenorm.load",
            UserWarning, stacklevel=2,
        )
    meta = {"format": "pt"}
    if metadata:
        bad = {
            k: v for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)
        }
        if bad:
            raise ValueError(f"metadata keys and values must be str, got {bad!r}")
        meta.update(metadata)
    meta[FORMAT_KEY] = FORMAT_VERSION
    meta[MANIFEST_KEY] = json.dumps(manifest)
    meta[DIGEST_KEY] = _digest(stored)
    path = os.fspath(path)
    if os.path.exists(path) and (kind := not_a_regular_file(os.stat(path).st_mode)):
        # os.replace would put the file in place of a FIFO or a device, or fail on a folder
        example = os.path.join(path if kind == "a folder" else ".", "model.safetensors")
        raise ValueError(f"{path!r} is {kind}: pass the path of a file to write, e.g. "
                         f"{example!r}")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(stored, tmp, metadata=meta)
        # mkstemp creates the file 0600; give it the mode a plain open() would.
        if os.path.exists(path):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def _read(path: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    kind = not_a_regular_file(os.stat(path).st_mode)
    if kind is not None:  # never opened: a FIFO would block until someone writes to it
        raise ValueError(f"{path!r} is {kind}, not a checkpoint: pass the file sharenorm.save "
                         "wrote")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError / OSError on damaged files
        raise ValueError(
            f"{path!r} is not a readable safetensors file (corrupted or truncated?): {e}"
        ) from e
    return tensors, metadata


def _parse_manifest(path: str, metadata: dict[str, str], tensors: dict[str, Tensor]) -> list[dict]:
    raw = metadata.get(MANIFEST_KEY)
    if raw is None:
        return []
    try:
        manifest = json.loads(raw)
        if not isinstance(manifest, list):
            raise TypeError("not a list")
        for e in manifest:
            if (
                not isinstance(e, dict)
                or not isinstance(e.get("target"), str)
                or not isinstance(e.get("source"), str)
                or e.get("transform") not in TRANSFORMS
                or e.get("how") not in _HOWS
            ):
                raise TypeError(f"bad entry {e!r}")
    except (ValueError, TypeError, RecursionError) as err:  # RecursionError: nested too deep
        raise ValueError(f"{path!r} has a corrupted tie manifest ({MANIFEST_KEY}): {err}") from None
    for e in manifest:
        if e["source"] not in tensors:
            raise ValueError(
                f"{path!r}: the tie manifest derives {e['target']!r} from {e['source']!r}, which "
                f"the file does not contain (corrupted or hand-edited file)"
            )
        if e["target"] == e["source"]:
            raise ValueError(
                f"{path!r} has a corrupted tie manifest ({MANIFEST_KEY}): it ties "
                f"{e['target']!r} to itself (hand-edited file?)"
            )
        if e["transform"] is not None and tensors[e["source"]].dim() < 2:
            shape = tuple(tensors[e["source"]].shape)
            raise ValueError(
                f"{path!r} has a corrupted tie manifest ({MANIFEST_KEY}): it derives "
                f"{e['target']!r} as the {e['transform']} of {e['source']!r}, whose shape {shape} "
                f"has {len(shape)} dimension(s); a transpose needs 2 (hand-edited file?)"
            )
    return manifest


def _suggest(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return f" (model has {close[0]!r})" if close else ""


def load(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, assign: bool = False
) -> Any:
    """Load a checkpoint written by :func:`save` (or ``safetensors.torch.save_model``).

    The ties of the file's manifest are re-created in ``model`` first (with :func:`sharenorm.tie`;
    a model that already has them is left as is), then the values are loaded with
    ``model.load_state_dict``. Names the file leaves out because they share a stored tensor are
    filled from it.

    Args:
        model: a module of the checkpoint's architecture (tied or not); inside
            ``torch.compile``, DistributedDataParallel or DataParallel, the model they wrap.
        path: the file.
        strict: refuse missing and unexpected names (shapes are always checked). With
            ``strict=False`` a manifest tie whose target or source the model lacks is skipped
            (a present target still gets ``T(source)`` from the file), as for a partial load.
        assign: passed to ``load_state_dict`` (use it for a model built on the meta device).
            Names that hold one parameter by torch's means (``lm_head.weight =
            wte.weight``) still hold one afterwards (torch's ``assign=True`` alone would
            give each name a parameter of its own).

    Returns:
        ``load_state_dict``'s ``(missing_keys, unexpected_keys)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a corrupted or truncated file (unreadable header, checksum mismatch, bad
            manifest); a model of another architecture (missing/unexpected names, other shapes);
            a manifest tie that the model contradicts (tied differently, or shapes that cannot
            tie); two different values in the file for names that the model shares by torch's
            means (one ``nn.Parameter`` under two names; e.g. a checkpoint of an untied model);
            a model sharded by FSDP2 or tensor parallelism (load it before sharding); with
            ``assign=True``, an integer or bool value for a parameter that requires gradients.
        RuntimeError: the file stores two names the model ties (or the manifest ties) with
            values that differ (e.g. a checkpoint of an untied model), naming the tie.
            All raised before anything is changed: the model's ties and values stay as they were.

    Example:
        See :func:`save`.
    """
    check_module(model, "sharenorm.load")
    model = unwrap(model)
    state = model.state_dict()
    sharded = next((k for k, t in state.items() if isinstance(t, Tensor) and is_dtensor(t)),
                   None)
    if sharded is not None:
        raise ValueError(
            f"cannot load into {sharded!r}: it is a DTensor, this rank's shard of a model "
            f"sharded by FSDP2 (fully_shard) or tensor parallelism; sharenorm.load the model "
            f"before sharding it (every rank reads the file), or load the file's tensors with "
            f"torch.distributed.checkpoint.state_dict.set_model_state_dict(model, state, "
            f"options=StateDictOptions(full_state_dict=True))"
        )
    path = os.fspath(path)
    tensors, metadata = _read(path)
    digest = metadata.get(DIGEST_KEY)
    if digest is not None and digest != _digest(tensors):
        raise ValueError(
            f"{path!r} is corrupted: its tensors do not match the checksum stored in the file"
        )
    manifest = _parse_manifest(path, metadata, tensors)

    # 1. Check the whole manifest against the model before changing anything: each tie as
    #    tie() would check it, given the ties of the entries before it (a cycle, or a target
    #    tied twice, only shows in the sequence).
    names, known = list(state), set(state)
    errors: list[str] = []
    to_tie = []
    overlay: dict = {}
    for e in manifest:
        if len(errors) == _SHOWN:  # a hostile manifest of 10^5 entries: not 10^5 messages
            errors.append("and more entries of the manifest that do not match (not listed)")
            break
        target, source, transform = e["target"], e["source"], e["transform"]
        if target not in known or source not in known:
            if not strict:  # a partial load: step 2 still derives a present target's value
                continue
            missing = target if target not in known else source
            errors.append(
                f"the file ties {target!r} to {source!r}, but the model has no "
                f"{missing!r}{_suggest(missing, names)}"
            )
            continue
        tmod, tattr = resolve(model, target, "target")
        link = _links_of(tmod, overlay).get(tattr)
        if link is not None:
            smod, sattr = resolve(model, source, "source")
            if not (link.module is smod and link.name == sattr and link.transform == transform):
                if tattr in (overlay.get(id(tmod)) or {}):
                    errors.append(
                        f"the file ties {target!r} twice: to {link.hint} (transform="
                        f"{link.transform!r}) and to {transform or 'identity'}({source!r}) "
                        f"(corrupted or hand-edited file)"
                    )
                    continue
                errors.append(
                    f"the file ties {target!r} = {transform or 'identity'}({source!r}), but the "
                    f"model ties it to {link.hint} (transform={link.transform!r}); build the "
                    f"model the checkpoint came from, or sharenorm.untie({target!r}) first"
                )
            continue
        current, src = getattr(tmod, tattr), getattr(*resolve(model, source, "source"))
        if _same_storage(current, src) and (
            transform is None or _view_transform(src, current) == transform
        ):
            continue  # already shared by torch's means (one tensor, or a view of its storage)
        want = transformed_shape(tuple(tensors[source].shape), transform)
        if tuple(current.shape) != want:
            errors.append(
                f"the file ties {target!r} (model shape {tuple(current.shape)}) to "
                f"{transform or 'identity'}({source!r}) (file shape {want})"
            )
            continue
        try:
            _simulate(_plan(model, target, source, transform, overlay), overlay)
        except ValueError as err:
            errors.append(f"the file ties {target!r} = {transform or 'identity'}({source!r}): {err}")
            continue
        to_tie.append((target, source, transform))

    # 2. The full set of values: stored tensors plus every derived name.
    full = dict(tensors)
    conflicts: list[str] = []
    for e in manifest:
        full.setdefault(e["target"], apply_transform(full[e["source"]], e["transform"]))
    groups = ties(model)
    for group in groups:  # e.g. a save_model file: one name of each shared group kept
        present = [n for n in group.names if n in full]
        if present:
            # Names that share one tensor by torch's means (not sharenorm.tie, whose targets
            # load_state_dict checks, naming the tie) must hold one value in the file: with two
            # (e.g. a file of an untied model) one would silently win.
            ties_ = {n for n, _, how in group.members if how == "tie"}
            plain = [n for n in present if n not in ties_]
            first = (plain or present)[0]
            base = apply_transform(full[first], group.transform_of(first))  # the source's value
            for n in plain[1:]:
                problem = _mismatch(full[n], apply_transform(base, group.transform_of(n)))
                if not problem:
                    continue
                fix = f"give {n!r} its own tensor: sharenorm.untie(model, {n!r})"
                if resolve(model, n) == resolve(model, first):  # one module used twice
                    fix = "build the model with a module of its own at each place"
                conflicts.append(
                    f"the file holds different values for {first!r} and {n!r} ({problem}), "
                    f"which the model shares (one tensor); load it into a model without that "
                    f"sharing, or {fix}"
                )
            for n in group.names:
                if n in names:  # not a derived source (e.g. a parametrized weight)
                    full.setdefault(n, apply_transform(base, group.transform_of(n)))

    # 3. Architecture: names and shapes.
    expected = model.state_dict()  # a tie keeps the target's key, so these names stay valid
    missing = [k for k in expected if k not in full]
    unexpected = [k for k in full if k not in expected]
    shapes = [
        f"{k}: file {tuple(full[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected
        if k in full and tuple(full[k].shape) != tuple(expected[k].shape)
    ]
    if shapes:
        errors.append(
            "shapes differ: "
            + "; ".join(shapes[:_SHOWN])
            + (" ..." if len(shapes) > _SHOWN else "")
        )
    if strict and (missing or unexpected):
        if missing:
            errors.append(
                f"missing from the file: {missing[:_SHOWN]}"
                + (" ..." if len(missing) > _SHOWN else "")
            )
        if unexpected:
            errors.append(
                "not in the model: "
                + ", ".join(repr(k) + _suggest(k, list(expected)) for k in unexpected[:_SHOWN])
                + (" ..." if len(unexpected) > _SHOWN else "")
            )
    if errors:
        raise ValueError(
            f"checkpoint {path!r} does not match the model ({type(model).__name__}); is it a "
            f"checkpoint of another architecture? " + " | ".join(errors)
        )
    if conflicts:
        raise ValueError(
            f"checkpoint {path!r} cannot load into the model: " + " | ".join(conflicts)
        )
    # load_state_dict refuses values that contradict a tie only after copying the others:
    # check every tie (the model's and the manifest's) here, before anything changes.
    contradictions = _contradicted_ties(model, overlay, full)
    if contradictions:
        raise RuntimeError(
            f"Error(s) in loading {path!r} into {type(model).__name__} (nothing was loaded): "
            + " | ".join(contradictions)
        )

    if assign:
        # assign=True makes each value the parameter itself; torch refuses one that cannot
        # require gradients only after assigning the others (and after step 4's ties)
        integral = [
            f"{k!r} ({full[k].dtype})"
            for k, p in model.named_parameters(remove_duplicate=False)
            if p.requires_grad and k in full
            and not (full[k].is_floating_point() or full[k].is_complex())
        ]
        if integral:
            raise ValueError(
                f"checkpoint {path!r} cannot load with assign=True (nothing was loaded): it "
                f"holds {', '.join(integral[:_SHOWN])}{' ...' if len(integral) > _SHOWN else ''}"
                f" for parameters that require gradients, which an integer or bool tensor cannot "
                f"be; load without assign=True (the values are cast to the model's dtypes)"
            )
        # names holding one parameter or buffer object (torch's plain sharing)
        shared = [[g.source, *(n for n, _, how in g.members if how == "identity")]
                  for g in groups]

    # 4. Re-create the ties, then load.
    for target, source, transform in to_tie:
        tie(model, target, source, transform)
    if not strict:
        full = {k: v for k, v in full.items() if k in expected}
    result = model.load_state_dict(full, strict=strict, assign=assign)
    if assign:
        # torch's assign=True wraps each name's value in a new Parameter: names that held one
        # (an lm_head and its embedding) would become two, splitting on the next .to()
        for group in shared:
            first = getattr(*resolve(model, group[0]))
            for name in group[1:]:  # (a module used twice: already the one object)
                module, attr = resolve(model, name)
                if getattr(module, attr) is not first:
                    setattr(module, attr, first)
    return result


def _contradicted_ties(model: nn.Module, overlay: dict, full: dict[str, Tensor]) -> list[str]:
    """A message for each tie of ``model`` (with those of ``overlay`` made) whose target and
    source both have a value in ``full`` that differ (the check load_state_dict makes)."""
    paths = _module_paths(model)
    problems = []
    for mpath, m in model.named_modules(remove_duplicate=False):
        for name, link in _links_of(m, overlay).items():
            spath = paths.get(id(link.module))
            if spath is None or not _in_state_dict(link.module, link.name):
                continue  # checked against the source's value, or derived: as load_state_dict
            tkey, skey = _join(mpath, name), _join(spath, link.name)
            if tkey not in full or skey not in full:
                continue
            problem = _mismatch(full[tkey], apply_transform(full[skey], link.transform))
            if problem:
                problems.append(
                    f"'{tkey}' is tied to '{skey}' (transform={link.transform!r}) but the file "
                    f"holds different values for them ({problem}); load it into an untied "
                    f"model, or sharenorm.untie(model, '{tkey}') first"
                )
    return problems


def file_bytes(path: str | os.PathLike) -> int:
    """Size of a checkpoint on disk (for reports and benchmarks)."""
    return Path(path).stat().st_size
