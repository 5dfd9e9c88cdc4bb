"""Operator routes (role ``admin``): stock. No ``from __future__ import annotations``."""

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from serve.auth.principal import ADMIN, Admin
from serve.problems import Problem, actor_call
from serve.runtime import runtime
from serve.schemas import Sku

router = APIRouter(tags=["admin"])


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SetStock(Input):
    on_hand: Annotated[int, Field(ge=0, le=1_000_000_000)]


class AdjustStock(Input):
    delta: Annotated[int, Field(ge=-1_000_000_000, le=1_000_000_000)]
    reason: Annotated[str, Field(min_length=1, max_length=200)]


class Stock(BaseModel):
    sku: str
    on_hand: int
    reserved: int
    available: int


_STATUS = {"unknown-sku": 404, "below-reserved": 409, "invalid": 422}


async def _stock(call: Any) -> dict[str, Any]:
    reply = await actor_call(call, "Inventory")
    if not reply["ok"]:
        raise Problem(_STATUS.get(reply["code"], 422), reply["code"], reply["detail"])
    return {k: reply[k] for k in ("sku", "on_hand", "reserved", "available")}


def _shard(sku: str) -> Any:
    return runtime().directory.get("inventory", sku)


@router.get("/v1/admin/inventory/{sku}", response_model=Stock, openapi_extra=ADMIN)
async def get_stock(sku: Sku, _admin: Admin) -> Any:
    """On hand, reserved and available units of one SKU."""
    await runtime().ready()
    return await _stock(_shard(sku).get.remote(sku))


@router.put("/v1/admin/inventory/{sku}", response_model=Stock, openapi_extra=ADMIN)
async def set_stock(sku: Sku, body: SetStock, _admin: Admin) -> Any:
    """Set on-hand stock; refused (409) below what is reserved."""
    await runtime().ready()
    return await _stock(_shard(sku).set_on_hand.remote(sku, body.on_hand))


@router.post("/v1/admin/inventory/{sku}/adjust", response_model=Stock, openapi_extra=ADMIN)
async def adjust_stock(sku: Sku, body: AdjustStock, _admin: Admin) -> Any:
    """Add (positive delta) or remove stock with a reason; never below what is reserved."""
    await runtime().ready()
    return await _stock(_shard(sku).adjust.remote(sku, body.delta, body.reason))
