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
import importlib.util
import struct
import sys
from types import ModuleType
from typing import TYPE_CHECKING

_NAME = "gguf.constants"


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
