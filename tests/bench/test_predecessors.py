"""The order and the split behind ``bench/predecessors.py``: each target's latencies by the one before."""

from __future__ import annotations

from bench.predecessors import by_before, orders


def test_each_round_sends_every_target_once_in_an_order_the_seed_repeats() -> None:
    names = ["direct", "router", "proxy", "main"]
    rounds = orders(names, 50, seed=7)
    assert all(sorted(r) == sorted(names) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # shuffled afresh, not one order repeated
    assert rounds == orders(names, 50, seed=7)
    assert rounds != orders(names, 50, seed=8)


def test_a_latency_counts_for_the_target_that_went_just_before_it_across_rounds_too() -> None:
    sent = [("a", 1.0), ("b", 2.0), ("a", 3.0), ("a", 4.0), ("b", 5.0)]
    split = by_before(sent)
    assert split[("b", "a")] == [2.0, 5.0]
    assert split[("a", "b")] == [3.0]
    assert split[("a", "a")] == [4.0]  # a round that ends where the next begins
    assert split[("all", "a")] == [1.0, 3.0, 4.0]  # the first request had nothing before it
    assert split[("all", "b")] == [2.0, 5.0]
    assert ("b", "b") not in split
