"""Load the tensors of a foreign PyTorch checkpoint without running code from it.

Checkpoints written by mmengine / mmcv carry more than tensors: the message hub's
``HistoryBuffer`` objects, numpy arrays and scalars, config dicts. ``torch.load(weights_only=True)``
refuses them, and ``weights_only=False`` would run whatever the pickle names. This module's
unpickler resolves only:

- the handful of torch functions and types that rebuild tensors (``torch._utils._rebuild_*``,
  storage types, dtypes, ``torch.Size``) and plain containers (``collections.OrderedDict``, ...);
- known mmengine / mmcv / numpy classes and functions, mapped to :class:`Inert` placeholders
  that only record their arguments: their own code never runs, their values are not needed
  (the weights are tensors; the config is text).

Every other global (``os.system``, ``builtins.eval``, a model class, ...) is refused with
:class:`UnsafePickleError` before anything is called, so a malicious payload never executes.
The module itself is passed to ``torch.load`` as ``pickle_module``: torch keeps its own zip /
storage handling and asks this module's :class:`Unpickler` for every other global.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

from ..errors import UserError

__all__ = ["Inert", "UnsafePickleError", "Unpickler", "load", "loads", "safe_load", "ALLOWED_TORCH", "INERT_GLOBALS"]

# torch.load reads these from the pickle module it is given
Pickler = pickle.Pickler
dump = pickle.dump
dumps = pickle.dumps
__version__ = getattr(pickle, "__version__", "")


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global that is neither a tensor part, a container nor a known inert class."""


class Inert:
    """Stand-in for a foreign object (mmengine HistoryBuffer, numpy array, ...): records what the
    pickle gave it and does nothing else."""

    _qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.state = None
        self.items: list = []

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items.append((key, value))

    def append(self, value):
        self.items.append(value)

    def extend(self, values):
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<inert {self._qualname}>"


_INERT_CACHE: dict[str, type] = {}


def _inert(qualname: str) -> type:
    cls = _INERT_CACHE.get(qualname)
    if cls is None:
        cls = type("Inert_" + qualname.replace(".", "_"), (Inert,), {"_qualname": qualname})
        _INERT_CACHE[qualname] = cls
    return cls


#: globals resolved to the real torch / stdlib object: tensor rebuilding and plain containers only
ALLOWED_TORCH = {
    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"), ("torch.nn.parameter", "Parameter"), ("torch", "device"),
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
    ("builtins", "slice"), ("builtins", "complex"), ("builtins", "bytearray"),
}
_TORCH_DTYPES = {"float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
                 "complex64", "complex128"}

#: foreign globals mapped to inert placeholders (module, name); numpy under both module names (1.x, 2.x)
INERT_GLOBALS = {
    ("mmengine.logging.history_buffer", "HistoryBuffer"),
    ("mmengine.config.config", "ConfigDict"), ("mmengine.config.config", "Config"),
    ("mmengine.logging.message_hub", "MessageHub"),
    ("mmcv.utils.config", "ConfigDict"), ("mmcv.utils.config", "Config"),
    ("mmcv.runner.log_buffer", "LogBuffer"),
    ("addict.addict", "Dict"),
    ("_codecs", "encode"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}
for _np in ("numpy.core.multiarray", "numpy._core.multiarray"):
    INERT_GLOBALS |= {(_np, "_reconstruct"), (_np, "scalar")}
_NUMPY_DTYPE_CLASSES = ("numpy.dtypes",)  # numpy 2: numpy.dtypes.Float64DType and friends
_NUMPY_SCALARS = {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool_", "bool"}


def _inert_getattr(obj, name):
    """``getattr`` as pickles use it for methods (mmengine's HistoryBuffer stores ``HistoryBuffer.min``):
    allowed on placeholders only, and it returns another placeholder, never a real attribute."""
    if (isinstance(obj, type) and issubclass(obj, Inert)) or isinstance(obj, Inert):
        return _inert(f"{obj._qualname}.{name}")
    raise UnsafePickleError(f"getattr({type(obj).__name__}, {name!r})")


_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _resolve(module: str, name: str):
    module = _PY2_MODULES.get(module, module)  # protocol-2 pickles name the Python 2 modules
    if (module, name) == ("builtins", "getattr"):
        return _inert_getattr
    if (module, name) in ALLOWED_TORCH:
        import collections

        import torch
        import torch._utils  # noqa: F401

        if module == "collections":
            return collections.OrderedDict
        if module == "builtins":
            import builtins

            return getattr(builtins, name)
        if module == "torch.nn.parameter":
            return torch.nn.Parameter
        obj = torch
        for part in module.split(".")[1:] + [name]:
            obj = getattr(obj, part)
        return obj
    if module == "torch" and (name in _TORCH_DTYPES or name.endswith("Storage")):
        import torch

        return getattr(torch, name)
    if (module, name) in INERT_GLOBALS:
        return _inert(f"{module}.{name}")
    if module in _NUMPY_DTYPE_CLASSES and name.endswith("DType"):
        return _inert(f"{module}.{name}")
    if module == "numpy" and name in _NUMPY_SCALARS:
        return _inert(f"{module}.{name}")
    return None


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals listed in this module."""

    def find_class(self, module: str, name: str):
        obj = _resolve(module, name)
        if obj is None:
            raise UnsafePickleError(f"{module}.{name}")
        return obj


def load(file, **kwargs):
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs):
    import io

    return Unpickler(io.BytesIO(data), **kwargs).load()


def safe_load(path: str | Path):
    """Load a foreign checkpoint with :class:`Unpickler`; bad files raise :class:`UserError`."""
    import sys

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=sys.modules[__name__])
    except UnsafePickleError as e:
        raise UserError(f"{path}: refused: the file asks to run or build '{e}', which is neither a tensor, a "
                        f"plain container nor a known mmengine/numpy object; nothing from it was executed "
                        f"(only load files you trust with other tools)") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError,
            AttributeError, IndexError, KeyError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: cannot read checkpoint (corrupt, truncated or not a PyTorch file: {msg[:160]})") from e
