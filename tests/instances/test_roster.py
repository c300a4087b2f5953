"""The supervisor's roster: its lists, kept between requests, follow every instance added or removed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from llamaman.instances.roster import Roster


def instance(iid: str, model: str, created: float) -> Any:
    return SimpleNamespace(id=iid, record=SimpleNamespace(model_path=model, created_at=created))


def add(roster: Roster, m: Any) -> None:
    roster.instances[m.id] = m
    roster._changed()


def test_the_lists_are_oldest_first_and_follow_each_instance_added_or_removed() -> None:
    roster = Roster()
    late_a, b, early_a = (
        instance("1", "a.gguf", 30.0),
        instance("2", "b.gguf", 20.0),
        instance("3", "a.gguf", 10.0),
    )
    for m in (late_a, b):
        add(roster, m)
    assert roster.of_model("a.gguf") == (late_a,)
    assert roster.of_model("c.gguf") == ()
    add(roster, early_a)
    assert roster.list() == [early_a, b, late_a]
    assert roster.of_model("a.gguf") == (early_a, late_a)
    del roster.instances["1"]
    roster._changed()
    assert roster.of_model("a.gguf") == (early_a,) and roster.list() == [early_a, b]


def test_a_caller_may_change_its_list_without_changing_the_roster() -> None:
    roster = Roster()
    add(roster, instance("1", "a.gguf", 1.0))
    mine = roster.list()
    mine.clear()  # as a caller that removes instances while it walks the list
    assert [m.id for m in roster.list()] == ["1"]
