"""The demo catalog is deterministic, well-formed and spread over the categories."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

from cluster.seed import categories, demo_products

KEYS = {
    "sku",
    "name",
    "description",
    "category",
    "price_minor",
    "currency",
    "attributes",
    "images",
    "stock",
}


@pytest.fixture(scope="module")
def catalog() -> list[dict[str, Any]]:
    return demo_products()


def test_same_catalog_on_every_call(catalog: list[dict[str, Any]]) -> None:
    assert demo_products() == catalog


def test_count_is_respected_and_shorter_catalogs_are_prefixes(
    catalog: list[dict[str, Any]],
) -> None:
    assert len(catalog) == 2400
    assert demo_products(0) == []
    assert demo_products(37) == catalog[:37]


def test_categories_are_many_and_evenly_filled(catalog: list[dict[str, Any]]) -> None:
    per_category = Counter(p["category"] for p in catalog)
    assert len(per_category) >= 10
    assert set(per_category) == set(categories())
    assert min(per_category.values()) >= 100
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", slug) for slug in per_category)


def test_skus_are_unique_and_prefixed(catalog: list[dict[str, Any]]) -> None:
    skus = [p["sku"] for p in catalog]
    assert len(set(skus)) == len(skus)
    assert all(re.fullmatch(r"[A-Z]{3}-\d{6}", sku) for sku in skus)
    for category in categories():
        prefixes = {p["sku"][:3] for p in catalog if p["category"] == category}
        assert len(prefixes) == 1


def test_names_are_mostly_unique(catalog: list[dict[str, Any]]) -> None:
    assert len({p["name"] for p in catalog}) >= 0.95 * len(catalog)


def test_every_product_is_well_formed(catalog: list[dict[str, Any]]) -> None:
    for product in catalog:
        assert set(product) == KEYS
        assert product["name"].strip()
        assert product["description"].strip()
        assert product["currency"] == "BRL"
        price = product["price_minor"]
        assert isinstance(price, int) and not isinstance(price, bool) and price > 0
        assert 1 <= len(product["images"]) <= 3
        assert all(
            image.startswith(f"https://img.agora.example/products/{product['sku']}/")
            and image.endswith(".jpg")
            for image in product["images"]
        )
        key = "publisher" if product["category"] == "books" else "brand"
        assert product["attributes"][key]


def test_prices_look_like_shelf_prices(catalog: list[dict[str, Any]]) -> None:
    endings = Counter(p["price_minor"] % 100 for p in catalog)
    assert set(endings) <= {0, 90}


def test_some_products_are_out_of_stock(catalog: list[dict[str, Any]]) -> None:
    stock = [p["stock"] for p in catalog]
    assert all(isinstance(s, int) and 0 <= s <= 500 for s in stock)
    out = stock.count(0)
    assert 0 < out < 0.1 * len(stock)


def test_word_lists_are_package_data_and_every_category_has_its_builder() -> None:
    import json
    import tomllib
    from pathlib import Path

    from cluster import seed

    root = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert seed.WORDS_FILE in declared["package-data"]["cluster"]
    words = json.loads((root / "cluster" / seed.WORDS_FILE).read_text("utf-8"))
    assert [c["slug"] for c in words["categories"]] == categories()
    assert {c["attributes"] for c in words["categories"]} <= set(seed._BUILDERS)
