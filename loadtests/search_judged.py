"""The judged set: share of queries whose expected product is in the top 3.

    .venv/bin/python -m loadtests.search_judged            # in-process index, demo catalog
    .venv/bin/python -m loadtests.search_judged --url http://127.0.0.1:8000   # the running API

Queries and expected SKUs are in loadtests/search_judged.json (committed,
over the deterministic demo catalog). Prints each miss and the hit rate;
exits 1 below the set's target.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from cluster.seed import demo_products
from serve.search.index import Doc, Filters, SearchIndex

JUDGED = Path(__file__).with_name("search_judged.json")
TOP = 3


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(JUDGED.read_text())
    return data


def demo_index() -> SearchIndex:
    index = SearchIndex()
    index.build(
        Doc(p["sku"], p["name"], p["description"], p["category"], p["price_minor"], p["attributes"])
        for p in demo_products()
    )
    return index


def top_in_process(index: SearchIndex, q: str) -> list[str]:
    result = index.search(index.parse(q), Filters(), "relevance", TOP, facets=False)
    return [index.skus[s] for s in result.slots]


def top_over_http(client: httpx.Client, q: str) -> list[str]:
    reply = client.get("/v1/products", params={"q": q, "limit": TOP})
    reply.raise_for_status()
    return [item["sku"] for item in reply.json()["items"]]


def evaluate(top: Any) -> tuple[float, list[tuple[str, str, list[str]]]]:
    data = load()
    misses = []
    for case in data["queries"]:
        found = top(case["q"])
        if case["sku"] not in found:
            misses.append((case["q"], case["sku"], found))
    total = len(data["queries"])
    return (total - len(misses)) / total, misses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="ask a running API instead of an in-process index")
    args = parser.parse_args()
    if args.url:
        with httpx.Client(base_url=args.url, timeout=10) as client:
            rate, misses = evaluate(lambda q: top_over_http(client, q))
    else:
        index = demo_index()
        rate, misses = evaluate(lambda q: top_in_process(index, q))
    for q, sku, found in misses:
        print(f"miss: {q!r} expected {sku}, top {TOP}: {found}")
    target = load()["target"]
    print(f"judged set: {rate:.1%} in the top {TOP} (target {target:.0%}), {len(misses)} misses")
    return 0 if rate >= target else 1


if __name__ == "__main__":
    sys.exit(main())
