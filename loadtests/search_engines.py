"""Search engine candidates measured on the same catalogs and queries (docs/DECISIONS.md, "Search").

    .venv/bin/python -m loadtests.search_engines [--sizes 2400,100000] [--pg]
    PYTHONPATH=/tmp/tantivy-bench .venv/bin/python -m loadtests.search_engines   # + tantivy

Candidates: the in-process index (serve/search/index.py), tantivy (PyPI,
measured only when importable: it is not a dependency) and, with ``--pg``,
PostgreSQL full-text search in a throwaway embedded pgserver (text folded in
Python, since pgserver has no ``unaccent``; no ``pg_trgm``, so no typo
tolerance). Per engine and catalog size: build time, query latency p50/p95
over the judged queries plus plain ones (one client, warm), and on the demo
catalog the judged-set hit rate (expected SKU in the top 3). Latencies are
also printed as a ratio to the in-process index measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from cluster.seed import demo_products
from loadtests.search_judged import load
from serve.search.index import _GLOSSARY, Doc, Filters, SearchIndex, fold, words

PLAIN = ["black", "wireless", "shoes", "coffee", "dog", "premium", "set", "kit", "book", "red"]
TOP = 3


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _glossary(p: dict[str, Any]) -> str:
    probe = f" {' '.join(words(p['name']))} {' '.join(words(p['category']))} "
    return " ".join(v for k, v in _GLOSSARY if k in probe)


def _time(search: Callable[[str], list[str]], queries: list[str], rounds: int) -> list[float]:
    for q in queries:
        search(q)  # warm
    samples = []
    for _ in range(rounds):
        for q in queries:
            t = time.perf_counter()
            search(q)
            samples.append((time.perf_counter() - t) * 1000)
    return samples


def own(products: list[dict[str, Any]]) -> tuple[float, Callable[[str], list[str]]]:
    t = time.perf_counter()
    index = SearchIndex(capacity=len(products))
    index.build(
        Doc(p["sku"], p["name"], p["description"], p["category"], p["price_minor"], p["attributes"])
        for p in products
    )
    built = time.perf_counter() - t

    def search(q: str) -> list[str]:
        r = index.search(index.parse(q), Filters(), "relevance", TOP)  # with facets, as served
        return [index.skus[s] for s in r.slots]

    return built, search


def tantivy_engine(products: list[dict[str, Any]]) -> tuple[float, Callable[[str], list[str]]]:
    import tantivy

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("sku", stored=True, tokenizer_name="raw")
    for name in ("name", "category", "attrs", "glossary", "description"):
        builder.add_text_field(name, tokenizer_name="en_stem")
    schema = builder.build()
    t = time.perf_counter()
    index = tantivy.Index(schema)
    writer = index.writer(heap_size=50_000_000, num_threads=1)
    for p in products:
        attrs = " ".join(str(v) for v in p["attributes"].values() if not isinstance(v, bool))
        writer.add_document(
            tantivy.Document(
                sku=p["sku"],
                name=fold(p["name"]),
                category=p["category"],
                attrs=fold(attrs),
                glossary=fold(_glossary(p)),
                description=fold(p["description"]),
            )
        )
    writer.commit()
    index.reload()
    built = time.perf_counter() - t
    searcher = index.searcher()
    fields = ["name", "category", "attrs", "glossary", "description"]
    boosts = {"name": 3.0, "category": 2.0, "attrs": 1.5, "glossary": 1.5, "description": 1.0}
    fuzzy = {f: (True, 1, True) for f in fields}

    def search(q: str) -> list[str]:
        text = " ".join(w for w in words(q) if len(w) > 2) or "zzzz"
        query = index.parse_query(text, fields, boosts, fuzzy, conjunction_by_default=True)
        hits = searcher.search(query, TOP).hits
        return [searcher.doc(address)["sku"][0] for _score, address in hits]

    return built, search


def pg_engine(products: list[dict[str, Any]], queries: list[str], rounds: int) -> dict[str, Any]:
    import asyncpg
    import pgserver

    with tempfile.TemporaryDirectory() as data:
        server = pgserver.get_server(data, cleanup_mode="stop")
        try:
            return asyncio.run(_pg(asyncpg, server.get_uri(), products, queries, rounds))
        finally:
            server.cleanup()


async def _pg(
    asyncpg: Any, uri: str, products: list[dict[str, Any]], queries: list[str], rounds: int
) -> dict[str, Any]:
    conn = await asyncpg.connect(uri)
    await conn.execute(
        "CREATE TABLE p (sku text PRIMARY KEY, name text, category text, attrs text,"
        " glossary text, description text, doc tsvector)"
    )
    t = time.perf_counter()
    await conn.copy_records_to_table(
        "p",
        records=[
            (
                p["sku"],
                fold(p["name"]),
                p["category"],
                fold(" ".join(str(v) for v in p["attributes"].values())),
                fold(_glossary(p)),
                fold(p["description"]),
            )
            for p in products
        ],
        columns=("sku", "name", "category", "attrs", "glossary", "description"),
    )
    await conn.execute(
        "UPDATE p SET doc = setweight(to_tsvector('english', name), 'A')"
        " || setweight(to_tsvector('english', category), 'B')"
        " || setweight(to_tsvector('portuguese', glossary), 'B')"
        " || setweight(to_tsvector('english', attrs), 'C')"
        " || setweight(to_tsvector('english', description), 'D')"
    )
    await conn.execute("CREATE INDEX p_doc ON p USING gin (doc)")
    await conn.execute("ANALYZE p")
    built = time.perf_counter() - t
    sql = (
        "SELECT sku FROM p, websearch_to_tsquery('english', $1) en,"
        " websearch_to_tsquery('portuguese', $1) pt"
        " WHERE doc @@ (en || pt) ORDER BY ts_rank(doc, en || pt) DESC, sku LIMIT 3"
    )

    async def search(q: str) -> list[str]:
        return [r["sku"] for r in await conn.fetch(sql, fold(q))]

    samples = []
    for q in queries:
        await search(q)
    for _ in range(rounds):
        for q in queries:
            t = time.perf_counter()
            await search(q)
            samples.append((time.perf_counter() - t) * 1000)
    judged = load()["queries"]
    hits = 0
    if len(products) <= 2400:
        for case in judged:
            hits += case["sku"] in await search(case["q"])
    await conn.close()
    return {"built": built, "samples": samples, "judged": hits / len(judged)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2400,100000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pg", action="store_true", help="also measure PostgreSQL FTS")
    args = parser.parse_args()
    judged = load()["queries"]
    queries = [c["q"] for c in judged] + PLAIN
    engines: list[tuple[str, Callable[..., Any]]] = [("in-process", own)]
    try:
        import tantivy  # noqa: F401

        engines.append(("tantivy", tantivy_engine))
    except ImportError:
        print("tantivy not importable: skipped (PYTHONPATH=/tmp/tantivy-bench to include it)")
    for size in (int(s) for s in args.sizes.split(",")):
        products = demo_products(size)
        baseline = None
        print(f"\n== {size:,} products, {len(queries)} queries x {args.rounds} rounds, one client")
        rows: list[tuple[str, float, list[float], float | None]] = []
        for name, make in engines:
            built, search = make(products)
            samples = _time(search, queries, args.rounds)
            rate = None
            if size <= 2400:
                rate = sum(c["sku"] in search(c["q"]) for c in judged) / len(judged)
            rows.append((name, built, samples, rate))
        if args.pg:
            found = pg_engine(products, queries, args.rounds)
            rows.append(
                (
                    "postgres-fts",
                    found["built"],
                    found["samples"],
                    found["judged"] if size <= 2400 else None,
                )
            )
        for name, built, samples, rate in rows:
            p50, p95 = statistics.median(samples), _pct(samples, 0.95)
            baseline = baseline or p95
            judged_text = f"{rate:.0%}" if rate is not None else "n/a"
            print(
                f"{name:13} build {built:6.2f} s  p50 {p50:6.2f} ms  p95 {p95:6.2f} ms"
                f"  (p95 x{p95 / baseline:.2f} of in-process)  judged top-3 {judged_text}"
            )


if __name__ == "__main__":
    main()
