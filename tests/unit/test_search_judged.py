"""The committed judged set: the expected product in the top 3 for >= 90% of the queries."""

from __future__ import annotations

from loadtests.search_judged import demo_index, evaluate, load, top_in_process


def test_judged_set_meets_its_target():
    data = load()
    assert len(data["queries"]) >= 30
    kinds = " ".join(case["kind"] for case in data["queries"])
    for kind in ("typo", "accent", "plural", "pt", "en"):
        assert kind in kinds
    index = demo_index()
    rate, misses = evaluate(lambda q: top_in_process(index, q))
    assert rate >= data["target"], misses


def test_judged_set_can_fail():
    """A ranking that ignores the query misses almost every judged product."""
    index = demo_index()
    rate, _ = evaluate(lambda q: top_in_process(index, "black"))
    assert rate < 0.2
