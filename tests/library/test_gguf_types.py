"""gguf's type tables without the gguf package: the same objects as the package's, and float32
values read as the shortest decimal, as numpy prints them."""

from __future__ import annotations

import random
import struct
import subprocess
import sys

import numpy as np

from llamaman.library.gguf_types import GGUFValueType, float32_value


def test_float32_values_read_as_numpy_prints_them() -> None:
    rng = random.Random(7)
    values = [1e-5, 1e-6, 0.1, 0.5, 1.0, 10000.0, 1e16, 3.4028234663852886e38, 1.1754943508222875e-38, -2.5]
    # Any bit pattern but NaN and infinity: exponents across the whole range, subnormals included.
    while len(values) < 20_000:
        (value,) = struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))
        if value == value and abs(value) != float("inf"):
            values.append(value)
    for value in values:
        f32 = struct.unpack("<f", struct.pack("<f", value))[0]
        assert float32_value(f32) == float(str(np.float32(f32))), value


def test_nan_and_infinity_pass_through() -> None:
    assert float32_value(float("inf")) == float("inf")
    nan = float32_value(float("nan"))
    assert nan != nan


def test_the_value_types_are_the_gguf_packages() -> None:
    import gguf

    assert GGUFValueType is gguf.GGUFValueType
    assert GGUFValueType.FLOAT32 == 6


def test_a_later_import_of_the_whole_package_shares_the_tables() -> None:
    code = (
        "import sys\n"
        "from llamaman.library import gguf_types\n"
        "assert 'gguf' not in sys.modules and 'numpy' not in sys.modules\n"
        "import gguf\n"
        "assert gguf.GGUFValueType is gguf_types.GGUFValueType\n"
        "assert gguf.GGML_QUANT_SIZES is gguf_types.GGML_QUANT_SIZES\n"
        "assert gguf.GGUFWriter is not None\n"
        "assert gguf.constants is sys.modules['gguf.constants']\n"
        "assert gguf.constants.GGUFValueType is gguf_types.GGUFValueType\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
