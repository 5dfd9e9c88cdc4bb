"""Input and output schemas of the HTTP API (inputs forbid unknown fields)."""

from __future__ import annotations

from typing import Annotated, Any

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


class CartLine(BaseModel):
    sku: str
    name: str
    quantity: int
    unit_price: Money
    line_total: Money
    available: bool = Field(description="whether this quantity is in stock right now")


class CartView(BaseModel):
    cart_token: str | None = Field(
        default=None, description="anonymous carts: send it back as X-Cart-Token"
    )
    lines: list[CartLine]
    subtotal: Money
    discounts: list[dict[str, Any]]
    shipping: Money | None
    total: Money


def money(amount: int, currency: str = "BRL") -> dict[str, Any]:
    return {"amount": amount, "currency": currency}
