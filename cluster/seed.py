"""The demo catalog: a deterministic set of believable products and the one-shot seeder.

``demo_products`` builds the same catalog on every call and every machine (a
fixed-seed ``random.Random``, never global randomness or the clock), so SKUs,
prices and stock are stable across runs and environments. ``seed_catalog``
loads it into ``products`` and ``inventory`` once, and only into an empty
catalog.

The words it is made of (brands, nouns, openers, book titles, names) are data,
in ``seed_words.json`` beside this module; the code here only combines them.
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

SEED = 20_240_611
_SEED_LOCK = 0x4A60_0002
IMAGE_BASE = "https://img.agora.example/products"
CURRENCY = "BRL"
OUT_OF_STOCK_RATE = 0.05
MAX_STOCK = 500
_NAME_ATTEMPTS = 12
WORDS_FILE = "seed_words.json"


@dataclass(frozen=True)
class _Item:
    """A product type: its noun, price band in whole reais, and category-specific traits."""

    noun: str
    lo: int
    hi: int
    traits: tuple[str, ...] = ()


_Attributes = Callable[[random.Random, str, _Item], dict[str, Any]]


@dataclass(frozen=True)
class _Category:
    slug: str
    prefix: str
    brands: tuple[str, ...]
    adjectives: tuple[str, ...]
    items: tuple[_Item, ...]
    variants: tuple[str, ...]
    attributes: _Attributes
    openers: tuple[str, ...]
    details: tuple[str, ...]
    colour_in_name: bool = False


def _electronics(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "colour": rng.choice(_words().colours[:5]),
        "warranty_months": rng.choice((3, 6, 12, 12, 12, 24)),
    }


def _clothing(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "colour": rng.choice(_words().colours),
        "size": rng.choice(("PP", "P", "M", "M", "G", "G", "GG")),
        "material": rng.choice(item.traits),
    }


def _shoes(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "colour": rng.choice(_words().colours),
        "size": rng.randint(34, 45),
        "gender": rng.choice(("women", "men", "unisex")),
    }


def _home_kitchen(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "colour": rng.choice(_words().colours),
        "material": rng.choice(item.traits),
        "warranty_months": rng.choice((3, 6, 12, 12, 24)),
    }


def _sports(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "colour": rng.choice(_words().colours),
        "sport": item.traits[0],
        "level": rng.choice(("beginner", "intermediate", "advanced")),
    }


def _toys(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "age_range": rng.choice(item.traits),
        "batteries_required": rng.random() < 0.3,
    }


def _beauty(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "skin_type": rng.choice(("all", "all", "dry", "oily", "combination", "sensitive")),
        "vegan": rng.random() < 0.45,
        "cruelty_free": rng.random() < 0.8,
    }


def _grocery(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "organic": rng.random() < 0.35,
        "origin": rng.choice(
            (
                "Minas Gerais",
                "Bahia",
                "Pará",
                "São Paulo",
                "Paraná",
                "Rio Grande do Sul",
                "Espírito Santo",
            )
        ),
        "shelf_life_days": rng.choice((90, 180, 270, 365, 540)),
    }


def _garden(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "material": rng.choice(item.traits),
        "colour": rng.choice(("green", "black", "terracotta", "grey", "natural")),
        "outdoor": True,
    }


def _automotive(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "compatibility": rng.choice(("universal", "universal", "hatchback", "sedan", "SUV")),
        "warranty_months": rng.choice((3, 6, 12, 12)),
    }


def _pets(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    species = rng.choice(item.traits)
    stages = ("junior", "adult", "adult", "senior", "all ages")
    return {
        "brand": brand,
        "species": species,
        "life_stage": rng.choice(stages) if species in ("dog", "cat") else "all ages",
    }


def _no_attributes(_rng: random.Random, _brand: str, _item: _Item) -> dict[str, Any]:
    return {}


_BUILDERS: dict[str, _Attributes] = {
    "none": _no_attributes,
    "electronics": _electronics,
    "clothing": _clothing,
    "shoes": _shoes,
    "home_kitchen": _home_kitchen,
    "sports": _sports,
    "toys": _toys,
    "beauty": _beauty,
    "grocery": _grocery,
    "garden": _garden,
    "automotive": _automotive,
    "pets": _pets,
}


@dataclass(frozen=True)
class _Words:
    """The contents of ``seed_words.json``."""

    colours: tuple[str, ...]
    species_plural: dict[str, str]
    categories: tuple[_Category, ...]
    books: dict[str, Any]


def _category(raw: dict[str, Any]) -> _Category:
    return _Category(
        slug=raw["slug"],
        prefix=raw["prefix"],
        brands=tuple(raw["brands"]),
        adjectives=tuple(raw["adjectives"]),
        items=tuple(
            _Item(i["noun"], i["lo"], i["hi"], tuple(i.get("traits", ()))) for i in raw["items"]
        ),
        variants=tuple(raw["variants"]),
        attributes=_BUILDERS[raw["attributes"]],
        openers=tuple(raw["openers"]),
        details=tuple(raw["details"]),
        colour_in_name=raw.get("colour_in_name", False),
    )


@functools.cache
def _words() -> _Words:
    """The seed's word lists, read once from the package data file."""
    raw = json.loads(resources.files(__package__).joinpath(WORDS_FILE).read_text("utf-8"))
    return _Words(
        colours=tuple(raw["colours"]),
        species_plural=raw["species_plural"],
        categories=tuple(_category(c) for c in raw["categories"]),
        books=raw["books"],
    )


def _price_minor(rng: random.Random, lo: int, hi: int) -> int:
    """A shelf price in centavos within [lo, hi] reais, ending in ,90 or ,00."""
    reais = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    step = 1 if reais < 100 else 10 if reais < 1000 else 100
    whole = min(max(round(reais / step) * step, lo), hi)
    return whole * 100 - 10 if rng.random() < 0.7 else whole * 100


def _with_article(word: str) -> str:
    vowel_sound = word[:1] in ("a", "e", "i", "o", "u") and not word.startswith(
        ("uni", "use", "eu")
    )
    return f"{'an' if vowel_sound else 'a'} {word}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _isbn13(rng: random.Random) -> str:
    digits = [9, 7, 8, 6, 5] + [rng.randint(0, 9) for _ in range(7)]
    total = sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits))
    digits.append((10 - total % 10) % 10)
    return "".join(map(str, digits))


def _book(rng: random.Random, item: _Item) -> tuple[str, str, dict[str, Any]]:
    words = _words().books
    genre = item.traits[0]
    if genre in ("fiction", "mystery", "fantasy"):
        title = (
            f"{rng.choice(words['fiction_openings'])} {rng.choice(words['fiction_nouns'])}"
            f"{rng.choice(words['fiction_suffixes'])}"
        )
    else:
        topic = words["topics"][genre]
        title = rng.choice(topic["patterns"]).format(topic=rng.choice(topic["topics"]))
        title += rng.choice(words["editions"])
    languages: dict[str, str] = words["languages"]
    language = rng.choices(tuple(languages), weights=(6, 3, 1))[0]
    attributes: dict[str, Any] = {
        "author": f"{rng.choice(words['first_names'])} {rng.choice(words['last_names'])}",
        "publisher": rng.choice(words["publishers"]),
        "pages": rng.randint(120, 880),
        "language": language,
        "format": rng.choice(("paperback", "paperback", "hardcover")),
        "isbn": _isbn13(rng),
        "genre": genre,
    }
    sentences = [f"{words['genre_blurbs'][genre]} by {attributes['author']}."]
    extras = [
        f"{attributes['pages']} pages, published by {attributes['publisher']}.",
        f"This {attributes['format']} edition is in {languages[language]}.",
        "A favourite with book clubs and a perfect gift for curious readers.",
    ]
    sentences += rng.sample(extras, rng.randint(0, 2))
    return _sentence(title), " ".join(sentences), attributes


def _product(
    rng: random.Random, category: _Category, number: int, seen: set[str]
) -> dict[str, Any]:
    sku = f"{category.prefix}-{number:06d}"
    name = description = ""
    attributes: dict[str, Any] = {}
    item = category.items[0]
    plural = _words().species_plural
    for _ in range(_NAME_ATTEMPTS):
        item = rng.choice(category.items)
        if category.slug == "books":
            name, description, attributes = _book(rng, item)
        else:
            brand = rng.choice(category.brands)
            adj = rng.choice(category.adjectives)
            attributes = category.attributes(rng, brand, item)
            name = f"{brand} {adj} {item.noun}"
            if category.colour_in_name:
                name += f" - {attributes['colour'].title()}"
            elif variant := rng.choice(category.variants):
                name += f" {variant}"
            fields = {
                **attributes,
                "name": name,
                "noun": item.noun,
                "adj": adj.lower(),
                "a_adj": _with_article(adj.lower()),
                "species_plural": plural.get(attributes.get("species", ""), "pets"),
            }
            sentences = [rng.choice(category.openers)]
            sentences += rng.sample(category.details, rng.randint(0, 2))
            description = " ".join(_sentence(s.format(**fields)) for s in sentences)
        if name not in seen:
            break
    seen.add(name)
    image_count = rng.randint(1, 3)
    stock = 0 if rng.random() < OUT_OF_STOCK_RATE else rng.randint(1, MAX_STOCK)
    return {
        "sku": sku,
        "name": name,
        "description": description,
        "category": category.slug,
        "price_minor": _price_minor(rng, item.lo, item.hi),
        "currency": CURRENCY,
        "attributes": attributes,
        "images": [f"{IMAGE_BASE}/{sku}/{n}.jpg" for n in range(1, image_count + 1)],
        "stock": stock,
    }


def categories() -> list[str]:
    """The category slugs of the demo catalog, in the order products cycle through them."""
    return [category.slug for category in _words().categories]


def demo_products(count: int = 2400) -> list[dict[str, Any]]:
    """The first ``count`` products of the demo catalog, identical on every call.

    Products cycle through the categories, so they spread evenly, and a shorter
    catalog is a prefix of a longer one.
    """
    rng = random.Random(SEED)
    kinds = _words().categories
    seen: set[str] = set()
    products = []
    for index in range(count):
        category = kinds[index % len(kinds)]
        products.append(_product(rng, category, index // len(kinds) + 1, seen))
    return products


async def seed_catalog(conn: asyncpg.Connection, count: int = 2400) -> int:
    """Load the first ``count`` demo products and their stock into an empty catalog.

    Returns how many products were inserted: 0 when ``products`` already has
    rows, including when a concurrent seeder got there first. Works whatever
    jsonb codec the connection has: the rows are copied into a text staging
    table and cast to jsonb on the server.
    """
    if count <= 0 or await conn.fetchval("SELECT EXISTS (SELECT 1 FROM products)"):
        return 0
    products = demo_products(count)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SEED_LOCK)
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM products)"):
            return 0
        await conn.execute(
            "CREATE TEMP TABLE seed_products ("
            " sku text, name text, description text, category text,"
            " price_minor bigint, currency text, attributes text, images text"
            ") ON COMMIT DROP"
        )
        await conn.copy_records_to_table(
            "seed_products",
            records=[
                (
                    p["sku"],
                    p["name"],
                    p["description"],
                    p["category"],
                    p["price_minor"],
                    p["currency"],
                    json.dumps(p["attributes"], ensure_ascii=False),
                    json.dumps(p["images"]),
                )
                for p in products
            ],
        )
        await conn.execute(
            "INSERT INTO products"
            " (sku, name, description, category, price_minor, currency, attributes, images)"
            " SELECT sku, name, description, category, price_minor, currency,"
            " attributes::jsonb, images::jsonb FROM seed_products"
        )
        await conn.copy_records_to_table(
            "inventory",
            records=[(p["sku"], p["stock"]) for p in products],
            columns=("sku", "on_hand"),
        )
    return len(products)
