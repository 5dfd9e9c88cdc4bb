"""Input and output schemas of the HTTP API (inputs forbid unknown fields)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Sku = Annotated[str, Field(pattern=r"^[A-Z0-9][A-Z0-9-]{0,31}$", examples=["ELE-000123"])]


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AddItem(Input):
    sku: Sku
    quantity: Annotated[int, Field(ge=1, le=999)] = 1


class SetQuantity(Input):
    quantity: Annotated[int, Field(ge=0, le=999)]


class Money(BaseModel):
    amount: int = Field(description="integer minor units (centavos)")
    currency: str = "BRL"


class Product(BaseModel):
    sku: str
    name: str
    description: str
    category: str
    price: Money
    attributes: dict[str, Any]
    images: list[str]
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
