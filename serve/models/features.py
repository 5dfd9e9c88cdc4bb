"""Fraud features: one function, used by training and by live scoring (no skew).

An order's *raw facts* (``RAW_SCHEMA``) come from the simulation's history
(``simulation.order_facts``) when training and from PostgreSQL when an order is
placed (``cluster.adapters.order_ports.FraudAdapter``); both go through
``fraud_features`` (polars expressions) and ``matrix`` to the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

HOME = "BR"
LOCAL_OFFSET_H = -3
RAW_SCHEMA: dict[str, Any] = {
    "total": pl.Int64,  # centavos
    "units": pl.Int64,
    "max_units_one_sku": pl.Int64,
    "n_lines": pl.Int64,
    "country": pl.Utf8,  # destination
    "account_age_s": pl.Int64,
    "orders_last_hour": pl.Int64,  # the account's other orders in the hour before
    "tokens_30d": pl.Int64,  # distinct payment tokens on its orders of the last 30 days
    "hour": pl.Int64,  # UTC hour of the order
    "express": pl.Int64,  # 1 when shipped express
    "resale_units": pl.Int64,  # units of resale-friendly categories (rules.RESALE_CATEGORIES)
}
_local = (pl.col("hour") + LOCAL_OFFSET_H) % 24
FEATURES: dict[str, pl.Expr] = {
    "log_total": (pl.col("total").cast(pl.Float64) / 100 + 1).log(),
    "units": pl.col("units").cast(pl.Float64),
    "max_units_one_sku": pl.col("max_units_one_sku").cast(pl.Float64),
    "n_lines": pl.col("n_lines").cast(pl.Float64),
    "log_unit_price": (
        pl.col("total").cast(pl.Float64) / 100 / pl.col("units").clip(lower_bound=1) + 1
    ).log(),
    "abroad": (pl.col("country").str.to_uppercase() != HOME).cast(pl.Float64),
    "log_account_age_h": (pl.col("account_age_s").clip(lower_bound=0) / 3600 + 1).log(),
    "orders_last_hour": pl.col("orders_last_hour").cast(pl.Float64),
    "tokens_30d": pl.col("tokens_30d").cast(pl.Float64),
    "odd_hour": _local.is_between(1, 5).cast(pl.Float64),
    "express": pl.col("express").cast(pl.Float64),
    "resale_share": (
        pl.col("resale_units").cast(pl.Float64) / pl.col("units").clip(lower_bound=1)
    ).clip(upper_bound=1.0),
}
NAMES = tuple(FEATURES)


def facts_frame(rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Raw facts (one mapping per order, as the live adapter sends them) as a frame."""
    return pl.DataFrame([{k: row[k] for k in RAW_SCHEMA} for row in rows], schema=RAW_SCHEMA)


def fraud_features(raw: pl.DataFrame) -> pl.DataFrame:
    """The model's input columns, in order, from raw facts (training and live)."""
    return raw.select(**{name: expr for name, expr in FEATURES.items()})


def matrix(features: pl.DataFrame) -> np.ndarray:
    """The float32 matrix the ONNX model takes."""
    return features.select(NAMES).to_numpy().astype(np.float32)


def live_matrix(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Live scoring's path: raw facts of a batch of orders -> model input."""
    return matrix(fraud_features(facts_frame(rows)))
