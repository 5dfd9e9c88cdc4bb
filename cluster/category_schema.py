"""Per-category attribute schemas for products, and the check product admin runs.

The schemas are data (``category_schemas.json`` beside this module), not a
table: the categories are the seed's fixed set, a schema change is a code
review, and every replica checks the same file without a read. Each category
lists the attributes a product of it may carry, each with a ``type``
(``string``, ``integer``, ``number``, ``boolean``) and optional ``enum``,
``min``/``max`` (numbers), ``max_length`` and ``pattern`` (strings).

Every attribute is optional: a product is created before its details are
known, and the seed does not give every product every attribute. What is
refused: a category with no schema, a key the category does not list, a value
of the wrong type (``true`` is not an integer, ``12.0`` is not an integer,
``"12"`` is not a number) and a value outside its enum, range or pattern.
``check`` returns every problem at once, as ``(field, message)`` pairs in the
API's problem+json ``errors`` shape, so one 422 tells the operator everything.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

SCHEMAS_FILE = "category_schemas.json"
TYPES = ("string", "integer", "number", "boolean")


@dataclass(frozen=True)
class Attribute:
    """One attribute a category allows."""

    type: str
    enum: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    max_length: int | None = None
    pattern: str | None = None

    def describe(self) -> dict[str, Any]:
        """The attribute as the schema route shows it (unset constraints left out)."""
        out: dict[str, Any] = {"type": self.type}
        for key in ("enum", "min", "max", "max_length", "pattern"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if key == "enum" else value
        return out

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed here (None: it is)."""
        if self.type == "boolean":
            if not isinstance(value, bool):
                return "must be true or false"
        elif self.type == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                return "must be an integer"
        elif self.type == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return "must be a number"
        elif not isinstance(value, str):
            return "must be a string"
        if self.enum is not None and value not in self.enum:
            return "must be one of: " + ", ".join(str(v) for v in self.enum)
        if self.min is not None and value < self.min:
            return f"must be at least {self.min:g}"
        if self.max is not None and value > self.max:
            return f"must be at most {self.max:g}"
        if self.max_length is not None and len(value) > self.max_length:
            return f"must be at most {self.max_length} characters"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return f"must match {self.pattern}"
        return None


def _attribute(category: str, name: str, raw: Mapping[str, Any]) -> Attribute:
    kind = raw.get("type")
    if kind not in TYPES:
        raise ValueError(f"{category}.{name}: type must be one of {TYPES}")
    unknown = set(raw) - {"type", "enum", "min", "max", "max_length", "pattern"}
    if unknown:
        raise ValueError(f"{category}.{name}: unknown keys {sorted(unknown)}")
    enum = raw.get("enum")
    attribute = Attribute(
        type=kind,
        enum=tuple(enum) if enum is not None else None,
        min=raw.get("min"),
        max=raw.get("max"),
        max_length=raw.get("max_length"),
        pattern=raw.get("pattern"),
    )
    for value in attribute.enum or ():
        if attribute.problem(value) is not None:
            raise ValueError(f"{category}.{name}: enum value {value!r} breaks its own type")
    if attribute.pattern is not None:
        re.compile(attribute.pattern)
    return attribute


def parse(raw: Mapping[str, Any]) -> dict[str, dict[str, Attribute]]:
    """Schemas from their JSON form (keys starting with ``_`` are comments)."""
    return {
        category: {name: _attribute(category, name, spec) for name, spec in fields.items()}
        for category, fields in raw.items()
        if not category.startswith("_")
    }


@functools.cache
def schemas() -> dict[str, dict[str, Attribute]]:
    """The shipped schemas, read and checked once per process."""
    text = resources.files(__package__).joinpath(SCHEMAS_FILE).read_text("utf-8")
    return parse(json.loads(text))


def categories() -> list[str]:
    return sorted(schemas())


def describe(category: str) -> dict[str, Any] | None:
    """The category's schema as the API shows it (None: no such category)."""
    fields = schemas().get(category)
    if fields is None:
        return None
    return {
        "category": category,
        "attributes": {name: attr.describe() for name, attr in sorted(fields.items())},
    }


def check(
    category: str,
    attributes: Mapping[str, Any],
    *,
    where: str = "body.attributes",
    known: Mapping[str, Mapping[str, Attribute]] | None = None,
) -> list[dict[str, str]]:
    """Every way ``attributes`` break ``category``'s schema (empty: they conform)."""
    table = schemas() if known is None else known
    fields = table.get(category)
    if fields is None:
        return [
            {
                "field": "body.category",
                "message": "no attribute schema for this category; one of: "
                + ", ".join(sorted(table)),
            }
        ]
    errors = []
    for name, value in attributes.items():
        attribute = fields.get(name)
        if attribute is None:
            message = f"not an attribute of {category}; allowed: " + ", ".join(sorted(fields))
        else:
            message = attribute.problem(value) or ""
        if message:
            errors.append({"field": f"{where}.{name}", "message": message})
    return errors
