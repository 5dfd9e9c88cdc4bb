"""Input and output schemas of the HTTP API (inputs forbid unknown fields).

``Input`` is the one base of every request body: unknown fields are refused,
types are strict, and no string anywhere in it (nested values and mapping keys
included) may hold a C0 control character other than tab, newline and carriage
return, or a lone surrogate. PostgreSQL refuses NUL in text and jsonb, and a
value it refuses must be stopped here, not in a write-behind batch.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Sku = Annotated[str, Field(pattern=r"^[A-Z0-9][A-Z0-9-]{0,31}$", examples=["ELE-000123"])]


_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
UNSAFE_TEXT = "must not contain control characters (other than tab and newline)"


def safe_text(value: str) -> bool:
    """No C0 control character but tab, LF and CR, and no lone surrogate."""
    return _UNSAFE.search(value) is None


def _check_text(value: Any) -> Any:
    if isinstance(value, str):
        if not safe_text(value):
            raise ValueError(UNSAFE_TEXT)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _check_text(item)
    return value


class Input(BaseModel):
    """The base of every request body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        return _check_text(value)


class AddItem(Input):
    sku: Sku
    quantity: Annotated[int, Field(ge=1, le=999)] = 1


class SetQuantity(Input):
    quantity: Annotated[int, Field(ge=0, le=999)]


class Money(BaseModel):
    amount: int = Field(description="integer minor units (centavos)")
    currency: str = "BRL"


class ImageFile(BaseModel):
    url: str
    webp_url: str = Field(description="the same pixels as WebP")
    width: int
    height: int


class Thumbnail(ImageFile):
    size: int = Field(description="the longest side it was fitted into, px")


class ProductImage(ImageFile):
    """An uploaded image (``POST /v1/admin/products/{sku}/images``)."""

    id: str
    content_type: str
    thumbnails: list[Thumbnail]


class Product(BaseModel):
    sku: str
    name: str
    description: str
    category: str
    price: Money
    attributes: dict[str, Any]
    images: list[str | ProductImage] = Field(
        description="an uploaded image with its thumbnails, or the URL of an external one"
    )
    in_stock: bool


class ProductPage(BaseModel):
    items: list[Product]
    next_cursor: str | None
    facets: dict[str, dict[str, int]]


class ApplyCoupon(Input):
    code: Annotated[
        str, Field(pattern=r"^\s*[A-Za-z0-9_-]{1,64}\s*$", max_length=100, examples=["BEMVINDO10"])
    ]


class Discount(BaseModel):
    id: str = Field(description="the promotion id or coupon code")
    label: str
    amount: Money


class CartDiscount(Discount):
    kind: Literal["promotion", "coupon"]


class CartLine(BaseModel):
    sku: str
    name: str
    quantity: int
    unit_price: Money
    line_subtotal: Money = Field(description="unit_price × quantity")
    discounts: list[Discount] = Field(description="automatic promotions on this line")
    line_total: Money = Field(
        description="line_subtotal minus this line's promotions (a coupon is a cart discount)"
    )
    available: bool = Field(description="whether this quantity is in stock right now")


class CartCoupon(BaseModel):
    code: str
    applied: bool = Field(description="false when the stored code no longer applies")
    reason_code: str | None = Field(
        default=None, description="why it does not apply, e.g. coupon-expired"
    )
    reason: str | None = None


class Delivery(BaseModel):
    method: str
    state: str
    days: int = Field(description="estimated business days")


class CartView(BaseModel):
    cart_token: str | None = Field(
        default=None, description="anonymous carts: send it back as X-Cart-Token"
    )
    lines: list[CartLine]
    subtotal: Money = Field(description="sum of line subtotals, before any discount")
    discounts: list[CartDiscount] = Field(
        description="every discount applied: promotions (summed over lines) and the coupon"
    )
    discount_total: Money = Field(description="the sum of discounts")
    coupon: CartCoupon | None = Field(default=None, description="the coupon this cart holds")
    shipping: Money | None = Field(
        description="null unless GET /v1/cart is asked with shipping_method and state"
    )
    delivery: Delivery | None = None
    tax: Money = Field(description="tax on top of prices (0 with the default, tax-inclusive table)")
    total: Money = Field(description="subtotal - discount_total + shipping + tax")


def money(amount: int, currency: str = "BRL") -> dict[str, Any]:
    return {"amount": amount, "currency": currency}
