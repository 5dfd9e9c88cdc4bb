"""Per-category attribute schemas: the shipped file, the check, and the seed conforming."""

from __future__ import annotations

from collections import Counter

import pytest

from cluster import category_schema
from cluster.category_schema import check, describe, parse, schemas
from cluster.seed import categories, demo_products
from serve.problems import Problem
from serve.routers.admin_products import _conform


def test_every_seed_category_has_a_schema_and_nothing_else_does():
    assert sorted(categories()) == category_schema.categories()


def test_the_generated_catalog_conforms_to_its_schemas():
    broken = Counter()
    for product in demo_products(24_000):  # 2,000 a category: every branch of the builders
        for error in check(product["category"], product["attributes"]):
            broken[(product["category"], error["field"], error["message"])] += 1
    assert not broken, broken.most_common(5)


def test_every_schema_attribute_is_used_by_the_seed():
    used = {(p["category"], k) for p in demo_products(2_400) for k in p["attributes"]}
    declared = {(c, k) for c, fields in schemas().items() for k in fields}
    # Some enum values are there for operators only, but no attribute is unused.
    assert declared == used


@pytest.mark.parametrize(
    ("category", "attributes", "field", "fragment"),
    [
        ("sports", {"waterproof": True}, "body.attributes.waterproof", "not an attribute"),
        ("sports", {"level": "expert"}, "body.attributes.level", "one of"),
        ("sports", {"brand": 7}, "body.attributes.brand", "string"),
        ("sports", {"brand": "x" * 61}, "body.attributes.brand", "at most 60"),
        ("shoes", {"size": True}, "body.attributes.size", "integer"),
        ("shoes", {"size": 41.0}, "body.attributes.size", "integer"),
        ("shoes", {"size": "41"}, "body.attributes.size", "integer"),
        ("shoes", {"size": 99}, "body.attributes.size", "at most 50"),
        ("shoes", {"size": 3}, "body.attributes.size", "at least 16"),
        ("beauty", {"vegan": "yes"}, "body.attributes.vegan", "true or false"),
        ("beauty", {"vegan": 1}, "body.attributes.vegan", "true or false"),
        ("books", {"isbn": "123"}, "body.attributes.isbn", "must match"),
        ("toys", {"age_range": "3 years"}, "body.attributes.age_range", "must match"),
        ("no-such", {}, "body.category", "no attribute schema"),
    ],
)
def test_bad_attributes_name_the_field(category, attributes, field, fragment):
    errors = check(category, attributes)
    assert len(errors) == 1
    assert errors[0]["field"] == field
    assert fragment in errors[0]["message"]


def test_every_problem_is_reported_at_once_and_good_values_pass():
    errors = check("shoes", {"size": 99, "gender": "x", "colour": "red", "heel": 1})
    assert sorted(e["field"] for e in errors) == [
        "body.attributes.gender",
        "body.attributes.heel",
        "body.attributes.size",
    ]
    assert check("shoes", {"size": 42, "gender": "unisex", "brand": "Trilha"}) == []
    assert check("books", {"isbn": "9786512345678", "pages": 300, "language": "pt-BR"}) == []
    assert check("sports", {}) == []


def test_number_type_and_custom_schemas():
    table = parse({"_doc": "ignored", "x": {"w": {"type": "number", "min": 0.5}}})
    assert check("x", {"w": 1}, known=table) == []
    assert check("x", {"w": 0.75}, known=table) == []
    assert check("x", {"w": True}, known=table)[0]["message"] == "must be a number"
    assert check("x", {"w": 0.1}, known=table)[0]["message"] == "must be at least 0.5"
    assert check("x", {"v": 1}, known=table, where="patch")[0]["field"] == "patch.v"


@pytest.mark.parametrize(
    "raw",
    [
        {"c": {"a": {"type": "date"}}},
        {"c": {"a": {"type": "string", "maxlen": 3}}},
        {"c": {"a": {"type": "integer", "enum": [1, "two"]}}},
        {"c": {"a": {"type": "string", "pattern": "("}}},
    ],
)
def test_a_broken_schema_file_fails_loudly(raw):
    with pytest.raises(Exception):  # ValueError or re.error
        parse(raw)


def test_describe_shows_constraints_for_the_admin_route():
    shown = describe("shoes")
    assert shown is not None
    assert shown["category"] == "shoes"
    assert shown["attributes"]["size"] == {"type": "integer", "min": 16, "max": 50}
    assert shown["attributes"]["gender"]["enum"] == ["women", "men", "unisex"]
    assert describe("no-such") is None


def test_admin_route_check_raises_one_problem_with_every_field():
    _conform("shoes", {"size": 40}, "body.attributes")  # fits: no error
    with pytest.raises(Problem) as caught:
        _conform("shoes", {"size": "40", "heel": 3}, "body.attributes")
    assert caught.value.status == 422 and caught.value.kind == "validation"
    fields = sorted(e["field"] for e in caught.value.extra["errors"])
    assert fields == ["body.attributes.heel", "body.attributes.size"]
