"""Safe loading of VQ-GAN weights: a taming / PyTorch-Lightning `last.ckpt` or a bare state-dict file.

Nothing in the file is executed and neither taming nor pytorch_lightning is needed:

1. `torch.load(weights_only=True)` (plain tensors and containers).
2. If that refuses a global (Lightning 1.x keys its `callbacks` dict by callback *classes*), the file is read again
   with a restricted unpickler: globals on torch's weights-only allow-list resolve normally, any other `torch.*`
   global is refused (`UnsafeCheckpointError`), and every other global becomes an inert placeholder class that
   imports nothing and runs nothing (calling it, building it or filling it only creates an empty object).

Only the `state_dict` entry is used. The model's keys must all be present with the model's shapes
(`CheckpointMismatchError` names the file and key otherwise); extra entries such as `loss.*` are logged and
ignored. Unreadable or truncated files raise `CheckpointReadError` (one line, naming the file).
"""
import collections
import logging
import os
import pickle
import types
from typing import Dict, List, Tuple

import torch

from ..compat import CheckpointReadError, UnsafeCheckpointError

logger = logging.getLogger(__name__)

__all__ = ["CheckpointMismatchError", "CheckpointReadError", "UnsafeCheckpointError", "read_state_dict",
           "load_weights"]


class CheckpointMismatchError(ValueError):
    """The checkpoint's weights do not fit the model (missing key, other shape, not a tensor)."""


class _Inert:
    """Stand-in for a class or function named in a checkpoint; every pickle operation on it is a no-op."""

    _global_name = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def __repr__(self):
        return f"<placeholder for {self._global_name}>"


def _placeholder(module: str, name: str) -> type:
    return type(name.rpartition(".")[2] or "Placeholder", (_Inert,),
                {"__module__": f"placeholder.{module}", "_global_name": f"{module}.{name}"})


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, name):
        super().__init__(name)
        self.name = name


def _allowed_globals() -> Dict[str, object]:
    from torch import _weights_only_unpickler as wou

    allowed = dict(wou._get_allowed_globals())
    allowed.update(wou._get_user_allowed_globals())  # e.g. biomedgpt.compat.SAFE_GLOBALS
    return {name: obj for name, obj in allowed.items() if "sparse" not in name.lower()}


def _restricted_pickle_module(replaced: List[str]) -> types.ModuleType:
    """A `pickle_module` for `torch.load` whose Unpickler only resolves allow-listed globals."""
    allowed = _allowed_globals()
    placeholders: Dict[str, type] = {}  # fresh classes for every load: nothing carries over between files

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            if module == "torch" or module.startswith("torch."):
                raise _RefusedGlobal(full)
            if full not in placeholders:
                placeholders[full] = _placeholder(module, name)
                replaced.append(full)
            return placeholders[full]

    module = types.ModuleType("biomedgpt_restricted_pickle")
    module.Unpickler = RestrictedUnpickler
    module.UnpicklingError = pickle.UnpicklingError
    module.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()
    return module


def _read(path: str) -> Tuple[object, List[str]]:
    """The unpickled checkpoint and the globals that were replaced by placeholders."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True), []
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CheckpointReadError(path, exc) from None
    except Exception as exc:
        raise CheckpointReadError(path, exc) from None
    replaced: List[str] = []
    try:
        # weights_only=False is required by torch when a pickle_module is given; the restricted module above is
        # what keeps this load from importing or calling anything outside torch's weights-only allow-list.
        obj = torch.load(path, map_location="cpu", weights_only=False,
                         pickle_module=_restricted_pickle_module(replaced))
    except _RefusedGlobal as exc:
        raise UnsafeCheckpointError(path, f"the global {exc.name}") from None
    except Exception as exc:
        raise CheckpointReadError(path, exc) from None
    return obj, replaced


def read_state_dict(path) -> Dict[str, object]:
    """The `state_dict` of a Lightning checkpoint (or the file's content if it is a bare state dict)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VQ-GAN checkpoint not found: {path}")
    obj, replaced = _read(path)
    if replaced:
        logger.info("%s: ignored %d non-tensor global(s) outside the weights (replaced by inert placeholders, "
                    "nothing was imported or run): %s", path, len(replaced), ", ".join(replaced))
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj) \
            and any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    keys = ", ".join(map(repr, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointMismatchError(f"{path}: neither a Lightning checkpoint with a 'state_dict' entry nor a bare "
                                  f"state dict (found {keys})")


def _shape(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _summarise(keys: List[str]) -> str:
    groups = collections.Counter(k.split(".", 1)[0] + (".*" if "." in k else "") for k in keys)
    return ", ".join(f"{group} ({count})" if count > 1 else group for group, count in groups.items())


def load_weights(model: torch.nn.Module, path) -> List[str]:
    """Copy exactly `model.state_dict()`'s keys from the checkpoint at `path`; return the ignored extra keys."""
    path = os.fspath(path)
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        more = f" (and {len(missing) - 1} more of the {len(expected)} expected keys)" if len(missing) > 1 else ""
        raise CheckpointMismatchError(f"{path}: key {missing[0]!r} is missing{more}")
    for key, reference in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointMismatchError(f"{path}: key {key!r} is not a tensor ({type(value).__name__})")
        if tuple(value.shape) != tuple(reference.shape):
            raise CheckpointMismatchError(f"{path}: key {key!r} has shape {_shape(value.shape)}, "
                                          f"expected {_shape(reference.shape)}")
        if reference.is_floating_point() and not value.is_floating_point():
            raise CheckpointMismatchError(f"{path}: key {key!r} has dtype {value.dtype}, expected a float tensor")
    extras = [key for key in state if key not in expected]
    if extras:
        logger.warning("%s: ignored %d state-dict entries the model does not use: %s",
                       path, len(extras), _summarise(extras))
    model.load_state_dict({key: state[key] for key in expected}, strict=True)
    return extras
