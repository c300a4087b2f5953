"""Activity charts: requests and mean tokens/s per model in time buckets, cold starts kept with their
bucket and model."""

from __future__ import annotations

import time

from components.activity_charts import axis_label, bucket_size, series


def test_requests_and_speed_per_model_per_bucket() -> None:
    rows = [
        {"ts": 1000.0, "model": "a", "tokens_per_s": 10.0},
        {"ts": 1005.0, "model": "a", "tokens_per_s": 20.0, "load_ms": 2300},
        {"ts": 1065.0, "model": "b", "tokens_per_s": None},
        {"ts": 1130.0, "model": "a", "tokens_per_s": 30.0},
    ]
    s = series(rows, width=60)
    assert s.buckets == [960.0, 1020.0, 1080.0]
    assert s.requests == {"a": [2, 0, 1], "b": [0, 1, 0]}
    assert s.speed == {"a": [15.0, None, 30.0]}  # b never reported a speed
    assert s.cold == [(960.0, "a", 2300.0)]


def test_bucket_width_grows_with_the_time_covered() -> None:
    assert bucket_size(5 * 60) == 10
    assert bucket_size(3 * 3600) == 300
    assert bucket_size(30 * 86400) == 86400
    assert series([]).buckets == []


def test_axis_labels_tell_buckets_apart() -> None:
    t = time.mktime((2026, 5, 4, 13, 7, 30, 0, 0, -1))
    assert axis_label(t, 10) == "13:07:30"
    assert axis_label(t, 300) == "13:07"
    assert axis_label(t, 86400) == "05-04"
