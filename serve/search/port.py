"""The search port: what the catalog and its routes need of a search engine.

``serve.search.index.SearchIndex`` (in process, per replica) is the one
implementation. A search server (Typesense, Meilisearch, OpenSearch) would be
a second one behind these same methods, chosen by a URL setting; none is
built: docs/DECISIONS.md, "Search server behind the port", says why and what
such an adapter must keep.

The contract, which tests/unit/test_search_index.py holds the in-process
engine to and an adapter would have to pass too:

* writes come from ``serve.catalog_state``, which re-reads a product on each
  of its ``product.*`` events and calls ``upsert``/``remove``/``set_signals``,
  and re-reads units sold on order events and calls ``set_popularity``
  (idempotent: each carries the whole current state); ``build`` loads a
  full catalog; ``version`` moves on every write, so response caches keyed on
  it are never stale;
* ``parse`` turns ``q`` into a ``Query`` (empty when it holds no searchable
  word); ``search`` answers one page after a keyset cursor ``(key, sku)`` in
  one of ``SORTS``, with ``Result.skus`` in order, ``Result.keys`` (each SKU's
  primary sort key, for the next cursor) and disjunctive facets whose counts
  equal what choosing that value lists;
* ``suggest`` gives at most ``limit`` completions ``{text, kind, sku?}``;
* ``rating_of`` is the review average and count the engine sorts by.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from serve.search.index import Doc, Filters, Query, Result


@runtime_checkable
class SearchEngine(Protocol):
    version: int

    def __len__(self) -> int: ...

    def __contains__(self, sku: object) -> bool: ...

    def build(self, docs: Iterable[Doc]) -> None: ...

    def upsert(self, doc: Doc) -> None: ...

    def remove(self, sku: str) -> bool: ...

    def set_signals(
        self, sku: str, *, rating: float, rating_count: int, popularity: float | None = None
    ) -> None: ...

    def set_popularity(self, sku: str, popularity: float) -> bool: ...

    def parse(self, q: str) -> Query: ...

    def search(
        self,
        query: Query | None,
        filters: Filters,
        sort: str,
        limit: int,
        after: tuple[float, str] | None = None,
        facets: bool = True,
    ) -> Result: ...

    def suggest(self, q: str, limit: int = 10) -> list[dict[str, str]]: ...

    def rating_of(self, sku: str) -> tuple[float, int]: ...

    def stats(self) -> dict[str, int]: ...
