"""The replica's full-text index over its in-memory catalog (no I/O, no Ray).

Why in-process: warm reads never wait on PostgreSQL, the catalog is already
held per replica, and pgserver has neither ``pg_trgm`` nor ``unaccent``
(measurements in docs/DECISIONS.md, "Search").

Text pipeline (same for documents and queries): lower case, accents removed
(NFKD), split on anything not a letter or digit, then the English and the
Portuguese Snowball stemmers one after the other, so "cafés", "cafe" and
"café" are one term and so are "camisetas" and "camiseta". Fields are
weighted (name 3, category 2, attributes 1.5, Portuguese glossary 1.5,
description 1); a term's weight in a document saturates like BM25's and is
multiplied by its inverse document frequency.

A query word matches its own stem, or, when the catalog does not hold that
word, the words within 1 edit (3 to 5 letters) or 2 edits (6 or more) of it
(a SymSpell delete table over the surface words); the last word, unless the
query ends in a space, also matches as a prefix. Every word must match
(AND); stop words are dropped; a quoted phrase must appear as written
(after normalisation) in the name, description or glossary text.

Per-document values live in numpy arrays indexed by a slot per SKU, so
filters, facets and sorts are array operations: a search over 100,000
products stays in single-digit milliseconds (loadtests/search_engines.py).
Updates are in place: ``upsert`` replaces a product's postings, ``remove``
clears its slot.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import Stemmer

from serve.search.glossary import GLOSSARY

SORTS = ("relevance", "price_asc", "price_desc", "newest", "rating", "popularity")
# Price bands in minor units: [lo, hi] inclusive, so min_price=lo&max_price=hi lists the band.
PRICE_BANDS = ((0, 4999), (5000, 9999), (10000, 24999), (25000, 49999), (50000, 99999))
PRICE_TOP = 100000
FACET_MAX_VALUES = 40  # attribute keys with more distinct values (isbn, author) get no facet
PREFIX_EXPANSIONS = 64
STOP_WORDS = frozenset(
    "a an and as at by for in of on or the to with "
    "o os as um uma uns umas de da do das dos e em no na nos nas para por com sem ao".split()
)
FIELD_WEIGHTS = {"name": 3.0, "category": 2.0, "attributes": 1.5, "glossary": 1.5, "text": 1.0}
_SPLIT = re.compile(r"[^a-z0-9]+")
_EN = Stemmer.Stemmer("english")
_PT = Stemmer.Stemmer("portuguese")
_STEMS: dict[str, str] = {}


def fold(text: str) -> str:
    """Lower case without accents: "Açaí Café" -> "acai cafe"."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    return [w for w in _SPLIT.split(fold(text)) if w]


def stem(word: str) -> str:
    hit = _STEMS.get(word)
    if hit is None:
        if len(_STEMS) > 200_000:
            _STEMS.clear()
        hit = _STEMS[word] = _PT.stemWord(_EN.stemWord(word))
    return hit


def edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance, or ``limit + 1`` once it exceeds ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


def max_edits(word: str) -> int:
    return 0 if len(word) < 3 else 1 if len(word) <= 5 else 2


def _deletes(word: str, depth: int) -> set[str]:
    out = {word}
    frontier = {word}
    for _ in range(depth):
        frontier = {w[:i] + w[i + 1 :] for w in frontier for i in range(len(w))}
        out |= frontier
    return out


def _glossary_keys() -> list[tuple[str, str]]:
    return [(" " + " ".join(words(k)) + " ", v) for k, v in GLOSSARY.items()]


_GLOSSARY = _glossary_keys()


@functools.lru_cache(maxsize=1024)
def _category_names(category: str) -> tuple[str, ...]:
    """A category's folded slug and its glossary words: what suggest completes it from.
    Cached: without it, folding the slug and scanning the glossary for every category
    was ~70% of a suggest call."""
    folded = " ".join(words(category))
    gloss = " ".join(v for k, v in _GLOSSARY if k == f" {folded} ")
    return (folded, *(" ".join(words(g)) for g in gloss.split()))


@dataclass(frozen=True)
class Doc:
    """What the index needs of a product."""

    sku: str
    name: str
    description: str
    category: str
    price_minor: int
    attributes: Mapping[str, Any]
    created: float = 0.0  # epoch seconds
    rating: float = 0.0  # average stars, 0 when unrated
    rating_count: int = 0
    popularity: float = 0.0  # units sold recently


@dataclass
class Query:
    """A parsed ``q``: word groups (each a {stem: weight} of alternatives) and phrases."""

    groups: list[dict[str, float]] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)
    text: str = ""  # the folded words, for the exact-name bonus
    empty: bool = True  # no searchable word at all


@dataclass
class Filters:
    category: str | None = None
    min_price: int | None = None
    max_price: int | None = None
    attributes: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class Result:
    slots: list[int]
    keys: list[float]  # the sort's primary key of each slot (for the cursor)
    facets: dict[str, dict[str, int]]
    total: int
    skus: list[str] = field(default_factory=list)  # the page in order: what callers use


def attribute_value(value: Any) -> str | None:
    """An attribute value as a filter/facet string, or None if it is not a scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        text = str(value).strip().lower()
        return text[:80] if text else None
    return None


class SearchIndex:
    def __init__(self, capacity: int = 1024) -> None:
        self.skus: list[str] = []
        self.slot_of: dict[str, int] = {}
        self.free: list[int] = []
        self.docs: list[Doc | None] = []
        self.texts: list[str] = []  # " folded name description glossary " for phrases
        self.names: list[str] = []  # folded name
        self.doc_terms: list[dict[str, float]] = []
        self.doc_surface: list[set[str]] = []
        self.doc_attrs: list[list[tuple[str, str]]] = []
        self.postings: dict[str, dict[int, float]] = {}
        self.surface: dict[str, int] = {}  # word -> number of documents holding it
        self.surface_stem: dict[str, str] = {}
        self.deletes: dict[str, set[str]] = {}
        self.attr_postings: dict[tuple[str, str], set[int]] = {}
        self.categories: list[str] = []
        self.category_code: dict[str, int] = {}
        self.live = 0
        self.version = 0
        self._sorted_surface: list[str] | None = None
        self._sku_rank: np.ndarray | None = None
        self._sorted_skus: list[str] | None = None
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._attr_arrays: dict[tuple[str, str], np.ndarray] = {}
        self._facet_cache: tuple[int, list[tuple[str, list[str]]]] | None = None
        self._alloc(capacity)

    # --- storage -------------------------------------------------------------------

    def _alloc(self, capacity: int) -> None:
        self.alive = np.zeros(capacity, dtype=bool)
        self.price = np.zeros(capacity, dtype=np.int64)
        self.created = np.zeros(capacity, dtype=np.float64)
        self.rating = np.zeros(capacity, dtype=np.float64)
        self.rating_count = np.zeros(capacity, dtype=np.int64)
        self.popularity = np.zeros(capacity, dtype=np.float64)
        self.cat = np.full(capacity, -1, dtype=np.int32)

    def _grow(self) -> None:
        old = len(self.alive)
        arrays = ("alive", "price", "created", "rating", "rating_count", "popularity", "cat")
        for name in arrays:
            current = getattr(self, name)
            bigger = np.full(old * 2, -1 if name == "cat" else 0, dtype=current.dtype)
            bigger[:old] = current
            setattr(self, name, bigger)

    def __len__(self) -> int:
        return self.live

    def __contains__(self, sku: object) -> bool:
        return sku in self.slot_of

    # --- writing -------------------------------------------------------------------

    def build(self, docs: Iterable[Doc]) -> None:
        for doc in docs:
            self.upsert(doc)

    def upsert(self, doc: Doc) -> None:
        """Add or replace a product (its text, price, category and signals)."""
        slot = self.slot_of.get(doc.sku)
        if slot is None:
            slot = self._new_slot(doc.sku)
        else:
            self._unindex(slot)
        self._index(slot, doc)
        self.version += 1

    def remove(self, sku: str) -> bool:
        slot = self.slot_of.pop(sku, None)
        if slot is None:
            return False
        self._unindex(slot)
        self.docs[slot] = None
        self.skus[slot] = ""
        self.free.append(slot)
        self._sku_rank = self._sorted_skus = None
        self.version += 1
        return True

    def set_signals(
        self, sku: str, *, rating: float, rating_count: int, popularity: float | None = None
    ) -> None:
        slot = self.slot_of.get(sku)
        if slot is None:
            return
        self.rating[slot] = rating
        self.rating_count[slot] = rating_count
        if popularity is not None:
            self.popularity[slot] = popularity
        self.version += 1

    def set_popularity(self, sku: str, popularity: float) -> bool:
        """Units sold of an indexed product; whether it changed (only a change moves
        ``version``, so a repeated value keeps response caches)."""
        slot = self.slot_of.get(sku)
        if slot is None or self.popularity[slot] == popularity:
            return False
        self.popularity[slot] = popularity
        self.version += 1
        return True

    def rating_of(self, sku: str) -> tuple[float, int]:
        """(average stars, count of visible reviews) as indexed; (0.0, 0) if not indexed."""
        slot = self.slot_of.get(sku)
        if slot is None:
            return 0.0, 0
        return float(self.rating[slot]), int(self.rating_count[slot])

    def _new_slot(self, sku: str) -> int:
        if self.free:
            slot = self.free.pop()
            self.skus[slot] = sku
        else:
            slot = len(self.skus)
            if slot >= len(self.alive):
                self._grow()
            self.skus.append(sku)
            self.docs.append(None)
            self.texts.append("")
            self.names.append("")
            self.doc_terms.append({})
            self.doc_surface.append(set())
            self.doc_attrs.append([])
        self.slot_of[sku] = slot
        self._sku_rank = self._sorted_skus = None
        return slot

    def _index(self, slot: int, doc: Doc) -> None:
        attrs: list[tuple[str, str]] = []
        attr_words: list[str] = []
        for key, value in (doc.attributes or {}).items():
            text = attribute_value(value)
            if text is None:
                continue
            attrs.append((str(key).lower(), text))
            if not isinstance(value, bool):
                attr_words += words(text)
        name = " ".join(words(doc.name))
        probe = f" {name} {' '.join(words(doc.category))} | {' '.join(attr_words)} "
        glossary = " ".join(v for k, v in _GLOSSARY if k in probe)
        fields = {
            "name": words(doc.name),
            "category": words(doc.category),
            "attributes": attr_words,
            "glossary": words(glossary),
            "text": words(doc.description),
        }
        terms: dict[str, float] = {}
        surface: set[str] = set()
        for field_name, field_words in fields.items():
            weight = FIELD_WEIGHTS[field_name]
            for word in field_words:
                term = stem(word)
                terms[term] = terms.get(term, 0.0) + weight
                surface.add(word)
        for term, raw in terms.items():
            self.postings.setdefault(term, {})[slot] = raw * 2.2 / (raw + 1.2)
            self._arrays.pop(term, None)
        for word in surface:
            count = self.surface.get(word, 0)
            if count == 0:
                self._add_surface(word)
            self.surface[word] = count + 1
        for pair in attrs:
            self.attr_postings.setdefault(pair, set()).add(slot)
            self._attr_arrays.pop(pair, None)
        code = self.category_code.get(doc.category)
        if code is None:
            code = self.category_code[doc.category] = len(self.categories)
            self.categories.append(doc.category)
        self.docs[slot] = doc
        self.texts[slot] = " " + " ".join(words(f"{doc.name} {doc.description} {glossary}")) + " "
        self.names[slot] = name
        self.doc_terms[slot] = terms
        self.doc_surface[slot] = surface
        self.doc_attrs[slot] = attrs
        self.alive[slot] = True
        self.live += 1
        self.price[slot] = doc.price_minor
        self.created[slot] = doc.created
        self.rating[slot] = doc.rating
        self.rating_count[slot] = doc.rating_count
        self.popularity[slot] = doc.popularity
        self.cat[slot] = code

    def _unindex(self, slot: int) -> None:
        if not self.alive[slot]:
            return
        for term in self.doc_terms[slot]:
            posting = self.postings.get(term)
            if posting is not None:
                posting.pop(slot, None)
                if not posting:
                    del self.postings[term]
            self._arrays.pop(term, None)
        for word in self.doc_surface[slot]:
            count = self.surface.get(word, 0) - 1
            if count <= 0:
                self.surface.pop(word, None)
                self._sorted_surface = None
            else:
                self.surface[word] = count
        for pair in self.doc_attrs[slot]:
            holders = self.attr_postings.get(pair)
            if holders is not None:
                holders.discard(slot)
                if not holders:
                    del self.attr_postings[pair]
            self._attr_arrays.pop(pair, None)
        self.doc_terms[slot] = {}
        self.doc_surface[slot] = set()
        self.doc_attrs[slot] = []
        self.alive[slot] = False
        self.cat[slot] = -1
        self.live -= 1

    def _add_surface(self, word: str) -> None:
        self.surface_stem[word] = stem(word)
        self._sorted_surface = None
        depth = max_edits(word)
        if depth:
            for variant in _deletes(word, depth):
                self.deletes.setdefault(variant, set()).add(word)

    # --- reading helpers -----------------------------------------------------------

    def _term(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        hit = self._arrays.get(term)
        if hit is None:
            posting = self.postings.get(term, {})
            ids = np.fromiter(posting.keys(), dtype=np.int64, count=len(posting))
            weights = np.fromiter(posting.values(), dtype=np.float64, count=len(posting))
            hit = self._arrays[term] = (ids, weights)
        return hit

    def _attr(self, pair: tuple[str, str]) -> np.ndarray:
        hit = self._attr_arrays.get(pair)
        if hit is None:
            holders = self.attr_postings.get(pair, set())
            hit = np.fromiter(holders, dtype=np.int64, count=len(holders))
            self._attr_arrays[pair] = hit
        return hit

    def _ranks(self) -> tuple[np.ndarray, list[str]]:
        if self._sku_rank is None or self._sorted_skus is None:
            live = [(sku, slot) for sku, slot in self.slot_of.items()]
            live.sort()
            rank = np.full(len(self.alive), len(live), dtype=np.int64)
            for position, (_sku, slot) in enumerate(live):
                rank[slot] = position
            self._sku_rank, self._sorted_skus = rank, [sku for sku, _ in live]
        return self._sku_rank, self._sorted_skus

    def _prefixed(self, word: str) -> list[str]:
        if self._sorted_surface is None:
            self._sorted_surface = sorted(self.surface)
        ordered = self._sorted_surface
        start = bisect.bisect_left(ordered, word)
        out = []
        for candidate in ordered[start:]:
            if not candidate.startswith(word):
                break
            out.append(candidate)
        if len(out) > PREFIX_EXPANSIONS:
            out.sort(key=lambda w: -self.surface.get(w, 0))
            out = out[:PREFIX_EXPANSIONS]
        return out

    def similar_words(self, word: str) -> list[tuple[str, int]]:
        """Catalog words within ``max_edits(word)`` edits of ``word``, with their distance."""
        depth = max_edits(word)
        if not depth:
            return []
        seen: set[str] = set()
        out = []
        for variant in _deletes(word, depth):
            for candidate in self.deletes.get(variant, ()):
                if candidate in seen or candidate not in self.surface:
                    continue
                seen.add(candidate)
                distance = edit_distance(word, candidate, depth)
                if distance <= depth:
                    out.append((candidate, distance))
        return out

    # --- queries -------------------------------------------------------------------

    def parse(self, q: str) -> Query:
        """Words, typo and prefix alternatives and quoted phrases of a query string."""
        phrases = [" ".join(words(p)) for p in re.findall(r'"([^"]*)"', q)]
        phrases = [p for p in phrases if p]
        all_words = words(q.replace('"', " "))
        kept = [w for w in all_words if w not in STOP_WORDS] or all_words
        query = Query(phrases=phrases, text=" ".join(all_words), empty=not kept)
        open_end = bool(q) and not q[-1].isspace() and not q.endswith('"')
        for index, word in enumerate(kept):
            alternatives: dict[str, float] = {}
            term = stem(word)
            if term in self.postings:
                # A stem hit from a word the catalog never spells (a prefix being typed) is weak.
                alternatives[term] = 1.0 if word in self.surface else 0.6
            elif word not in self.surface:
                for candidate, distance in self.similar_words(word):
                    target = self.surface_stem[candidate]
                    weight = 1.0 - 0.3 * distance
                    if alternatives.get(target, 0.0) < weight:
                        alternatives[target] = weight
            if open_end and index == len(kept) - 1 and len(word) >= 2:
                prefixed = self._prefixed(word)
                if prefixed and word not in self.surface:
                    alternatives.clear()  # being typed: completions, not stem look-alikes
                for candidate in prefixed:
                    target = self.surface_stem[candidate]
                    alternatives.setdefault(target, 0.8)
            query.groups.append(alternatives)
        return query

    def _text_scores(self, query: Query) -> tuple[np.ndarray, np.ndarray]:
        """(score, matched) over every slot."""
        size = len(self.alive)
        if query.empty:  # only punctuation or query syntax: nothing matches
            return np.zeros(size, dtype=np.float64), np.zeros(size, dtype=bool)
        total = np.zeros(size, dtype=np.float64)
        matched = self.alive.copy()
        live = max(self.live, 1)
        for alternatives in query.groups:
            group = np.zeros(size, dtype=np.float64)
            for term, weight in alternatives.items():
                ids, values = self._term(term)
                if not len(ids):
                    continue
                idf = math.log(1.0 + (live - len(ids) + 0.5) / (len(ids) + 0.5))
                group[ids] = np.maximum(group[ids], values * (idf * weight))
            matched &= group > 0
            total += group
        if query.phrases or query.text:
            candidates = np.nonzero(matched)[0]
            if query.phrases:
                for slot in candidates:
                    text = self.texts[slot]
                    if not all(f" {p} " in text for p in query.phrases):
                        matched[slot] = False
                candidates = np.nonzero(matched)[0]
            if query.text and len(candidates) <= 5000:
                needle = query.text
                for slot in candidates:
                    if needle in self.names[slot]:
                        total[slot] *= 1.5
        return total, matched

    def _filter_masks(self, filters: Filters) -> dict[str, np.ndarray]:
        """One mask per filter dimension (category, price, attr.<key>)."""
        masks: dict[str, np.ndarray] = {}
        if filters.category is not None:
            code = self.category_code.get(filters.category, -2)
            masks["category"] = self.cat == code
        if filters.min_price is not None or filters.max_price is not None:
            mask = np.ones(len(self.alive), dtype=bool)
            if filters.min_price is not None:
                mask &= self.price >= filters.min_price
            if filters.max_price is not None:
                mask &= self.price <= filters.max_price
            masks["price"] = mask
        for key, values in filters.attributes.items():
            mask = np.zeros(len(self.alive), dtype=bool)
            for value in values:
                mask[self._attr((key, value))] = True
            masks[f"attr.{key}"] = mask
        return masks

    def search(
        self,
        query: Query | None,
        filters: Filters,
        sort: str,
        limit: int,
        after: tuple[float, str] | None = None,
        facets: bool = True,
    ) -> Result:
        """One page of matching slots in ``sort`` order after the cursor, and the facets."""
        if query is None:
            score = np.zeros(len(self.alive), dtype=np.float64)
            base = self.alive.copy()
        else:
            score, base = self._text_scores(query)
        masks = self._filter_masks(filters)
        final = base.copy()
        for mask in masks.values():
            final &= mask
        facet_counts = self._facets(base, masks) if facets else {}
        primary = self._primary(sort, score)
        rank, sorted_skus = self._ranks()
        if after is not None:
            key, sku = after
            threshold = bisect.bisect_right(sorted_skus, sku)
            final &= (primary > key) | ((primary == key) & (rank >= threshold))
        selected = np.nonzero(final)[0]
        total = len(selected)
        if total > limit:
            # Only the first ``limit`` in order are needed: partial sort on the primary key.
            keys = primary[selected]
            if total > 4 * limit:
                cut = np.partition(keys, limit)[limit]
                selected = selected[keys <= cut]
        order = np.lexsort((rank[selected], primary[selected]))
        page = selected[order][:limit]
        return Result(
            slots=[int(s) for s in page],
            keys=[float(primary[s]) for s in page],
            facets=facet_counts,
            total=total,
            skus=[self.skus[s] for s in page],
        )

    def _primary(self, sort: str, score: np.ndarray) -> np.ndarray:
        if sort == "price_asc":
            return self.price.astype(np.float64)
        if sort == "price_desc":
            return -self.price.astype(np.float64)
        if sort == "newest":
            return -self.created
        if sort == "rating":
            return -self.rating
        if sort == "popularity":
            return -self.popularity
        return -score

    def _facets(self, base: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, dict[str, int]]:
        """Counts per value of each dimension, with every filter but that dimension's own.

        So a count is exactly how many products the list returns when that one
        value replaces the dimension's filter.
        """

        def without(dimension: str) -> np.ndarray:
            mask = base.copy()
            for name, other in masks.items():
                if name != dimension:
                    mask &= other
            return mask

        out: dict[str, dict[str, int]] = {}
        in_category = without("category")
        counts = np.bincount(self.cat[in_category], minlength=len(self.categories))
        out["category"] = {self.categories[code]: int(n) for code, n in enumerate(counts) if n}
        in_price = without("price")
        prices = self.price[in_price]
        bands: dict[str, int] = {}
        for lo, hi in PRICE_BANDS:
            n = int(np.count_nonzero((prices >= lo) & (prices <= hi)))
            if n:
                bands[f"{lo}-{hi}"] = n
        n = int(np.count_nonzero(prices >= PRICE_TOP))
        if n:
            bands[f"{PRICE_TOP}-"] = n
        out["price"] = bands
        for key, values in self._facet_values():
            mask = without(f"attr.{key}")
            counted = {}
            for value in sorted(values):
                n = int(np.count_nonzero(mask[self._attr((key, value))]))
                if n:
                    counted[value] = n
            if counted:
                out[f"attr.{key}"] = counted
        return out

    def _facet_values(self) -> list[tuple[str, list[str]]]:
        """Attribute keys with few enough distinct values to facet on (cached per version)."""
        if self._facet_cache is None or self._facet_cache[0] != self.version:
            values_of: dict[str, list[str]] = {}
            for key, value in self.attr_postings:
                values_of.setdefault(key, []).append(value)
            facetable = [
                (key, sorted(values))
                for key, values in sorted(values_of.items())
                if len(values) <= FACET_MAX_VALUES
            ]
            self._facet_cache = (self.version, facetable)
        return self._facet_cache[1]

    # --- suggest -------------------------------------------------------------------

    def suggest(self, q: str, limit: int = 10) -> list[dict[str, str]]:
        """Completions: categories, then product names, for a prefix that may hold typos."""
        query = self.parse(q)
        if query.empty:
            return []
        out: list[dict[str, str]] = []
        typed = query.text
        for category in self.categories:
            names = _category_names(category)
            if any(n.startswith(typed) for n in names) or (
                len(query.groups) == 1 and any(stem(n) in query.groups[0] for n in names if n)
            ):
                if np.count_nonzero(self.cat == self.category_code[category]):
                    out.append({"text": category, "kind": "category"})
        result = self.search(query, Filters(), "relevance", limit * 3, facets=False)
        seen: set[str] = set()
        for slot in result.slots:
            doc = self.docs[slot]
            if doc is None or doc.name in seen:
                continue
            seen.add(doc.name)
            out.append({"text": doc.name, "kind": "product", "sku": doc.sku})
            if len(out) >= limit:
                break
        return out[:limit]

    def stats(self) -> dict[str, int]:
        return {
            "documents": self.live,
            "terms": len(self.postings),
            "words": len(self.surface),
            "version": self.version,
        }
