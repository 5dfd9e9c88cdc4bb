"""Edge validation: text PostgreSQL refuses and times no date type can show stop at the edge."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import Field, ValidationError

from actors.pricing.engine import MAX_TIME, Rejected, validate_coupon, validate_promotion
from serve.schemas import Input, safe_text

NOW = 1_700_000_000
PROMOTION = {
    "id": "books-10",
    "kind": "percentage",
    "target": "category",
    "target_value": "books",
    "value": 1_000,
    "starts_at": NOW,
    "ends_at": NOW + 86_400,
}
COUPON = {"code": "WELCOME", "kind": "fixed", "value": 500, "starts_at": NOW, "ends_at": NOW + 1}


class Address(Input):
    line1: Annotated[str, Field(max_length=200)]


class Profile(Input):
    name: str | None = None
    preferences: dict[str, str | int | bool] | None = None
    address: Address | None = None
    tags: list[str] = []


@pytest.mark.parametrize(
    "text", ["\x00", "a\x00b", "\x01", "\x1b[31m", "\x0b", "\x7f\x00", "\ud800"], ids=repr
)
def test_input_refuses_control_characters_everywhere(text):
    for data in (
        {"name": text},
        {"preferences": {"k": text}},
        {"preferences": {text: "v"}},
        {"address": {"line1": text}},
        {"tags": ["ok", text]},
    ):
        with pytest.raises(ValidationError):
            Profile.model_validate(data)


@pytest.mark.parametrize("text", ["Rua A, 1", "tab\there", "two\nlines\r\n", "São Paulo ☕"])
def test_input_keeps_ordinary_text(text):
    assert Profile.model_validate({"name": text, "tags": [text]}).name == text
    assert safe_text(text)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("label", "10%\x00 off"),
        ("target_value", "bo\x00oks"),
        ("ends_at", MAX_TIME + 1),
        ("ends_at", 10**20),
        ("starts_at", MAX_TIME + 1),
    ],
)
def test_promotions_refuse_unsafe_text_and_times_past_year_9999(field, value):
    result = validate_promotion({**PROMOTION, field: value})
    assert isinstance(result, Rejected) and field in {e.field for e in result.errors}
    if field != "label" and field != "target_value":
        coupon = validate_coupon({**COUPON, field: value})
        assert isinstance(coupon, Rejected) and field in {e.field for e in coupon.errors}


def test_the_last_second_of_year_9999_is_a_valid_end():
    assert not isinstance(validate_promotion({**PROMOTION, "ends_at": MAX_TIME}), Rejected)
