"""The gguf package's type tables, without the rest of the package.

``import gguf.constants`` runs ``gguf/__init__.py`` first, which imports its reader, writer and
quantisation code and numpy with them: about 12 MB of resident memory for a process that only reads
GGUF headers. ``gguf/constants.py`` itself needs nothing but the standard library, so it is loaded
here on its own, under its own name: a later ``import gguf`` (the test models are written with its
writer) finds it already loaded and uses these very objects.

The value types, the quantisation block sizes and the file types stay the gguf package's, so a new
quantisation type arrives with a gguf update and never needs a table of our own.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import struct
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import TYPE_CHECKING

_NAME = "gguf.constants"


class _BindOnPackageImport(importlib.abc.MetaPathFinder):
    """Once, when the gguf package is imported after its tables were loaded alone: binds them as
    its ``constants`` attribute. Python sets that attribute only when it loads the submodule itself,
    so without this ``gguf.constants`` would be missing from the package."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != "gguf":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = spec.loader if spec is not None else None
        if loader is not None:
            run = loader.exec_module

            def exec_module(module: ModuleType) -> None:
                run(module)
                if _NAME in sys.modules:
                    module.__dict__["constants"] = sys.modules[_NAME]

            loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _load() -> ModuleType:
    loaded = sys.modules.get(_NAME)
    if loaded is not None:
        return loaded
    package = importlib.util.find_spec("gguf")  # finds the package without running its __init__
    folder = list(package.submodule_search_locations or []) if package is not None else []
    spec = importlib.util.spec_from_file_location(_NAME, f"{folder[0]}/constants.py") if folder else None
    if spec is None or spec.loader is None:
        return importlib.import_module(_NAME)  # an unusual install: the whole package, as before
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[_NAME]
        return importlib.import_module(_NAME)
    sys.meta_path.insert(0, _BindOnPackageImport())
    return module


if TYPE_CHECKING:
    from gguf.constants import (
        GGML_QUANT_SIZES,
        GGUF_MAGIC,
        GGMLQuantizationType,
        GGUFValueType,
        LlamaFileType,
    )
else:
    _constants = _load()
    GGML_QUANT_SIZES = _constants.GGML_QUANT_SIZES
    GGUF_MAGIC = _constants.GGUF_MAGIC
    GGMLQuantizationType = _constants.GGMLQuantizationType
    GGUFValueType = _constants.GGUFValueType
    LlamaFileType = _constants.LlamaFileType

__all__ = [
    "GGML_QUANT_SIZES",
    "GGUF_MAGIC",
    "GGMLQuantizationType",
    "GGUFValueType",
    "LlamaFileType",
    "float32_value",
]

_F32 = struct.Struct("<f")


def float32_value(value: float) -> float:
    """A float32 read from a file as the shortest decimal that names it: 1e-05, not 9.99999974e-06.

    The first precision whose rounding reads back as the same float32 is the shortest such decimal,
    and rounding picks the nearest one, as a shortest-repr printer for float32 does."""
    if value != value or value in (float("inf"), float("-inf")):
        return value
    bits = _F32.pack(value)
    for digits in range(1, 10):  # 9 significant digits always identify a float32
        short = float(f"{value:.{digits}g}")
        try:
            if _F32.pack(short) == bits:
                return short
        except OverflowError:  # rounded past float32's largest value
            continue
    return value
