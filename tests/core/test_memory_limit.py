"""The memory limit syntax: per device, plain bytes, and errors a user can act on."""

from __future__ import annotations

import pytest

from llamaman.core.memory_limit import format_size, parse_memory_limit, parse_size

GiB = 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cpu=48GiB,gpu0=22GiB,gpu1=22GiB", {"cpu": 48 * GiB, "gpu0": 22 * GiB, "gpu1": 22 * GiB}),
        ("1048576", {"cpu": 1048576}),
        ("cpu=1.5GB", {"cpu": 1_500_000_000}),
        (" GPU0 = 512MiB , cpu=2g ", {"gpu0": 512 * 1024**2, "cpu": 2_000_000_000}),
        ("", {}),
        (None, {}),
    ],
)
def test_limits_parse_per_device(text: str | None, expected: dict[str, int]) -> None:
    assert parse_memory_limit(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("cpu=lots", "'lots' is not a size"),
        ("cpu=12XB", "unknown unit 'XB'"),
        ("tpu0=1GiB", "unknown device 'tpu0'"),
        ("cpu=1GiB,cpu=2GiB", "named twice"),
    ],
)
def test_bad_limits_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_memory_limit(text)


def test_sizes_read_both_ways() -> None:
    assert parse_size("22GiB") == 22 * GiB
    assert format_size(22 * GiB) == "22.0 GiB"
    assert format_size(300 * 1024**2) == "300.0 MiB"
