"""One feature function for training and live scoring: the same order gives the same features."""

import numpy as np
import polars as pl
import pytest

from actors.fraud.rules import RESALE_CATEGORIES
from cluster.adapters.order_ports import FraudAdapter
from serve.models.features import NAMES, RAW_SCHEMA, fraud_features, live_matrix, matrix
from serve.models.simulation import simulate


@pytest.fixture(scope="module")
def orders():
    return simulate(seed=3, n_users=300, n_products=120).orders


def test_training_and_live_paths_give_identical_features(orders):
    batch = matrix(fraud_features(orders))  # the training path: the whole history at once
    for i in (0, 7, orders.height // 2, orders.height - 1):
        row = orders.row(i, named=True)
        live = live_matrix([{k: row[k] for k in RAW_SCHEMA}])  # what FraudScorer does
        np.testing.assert_array_equal(live[0], batch[i])
    assert batch.shape[1] == len(NAMES) and batch.dtype == np.float32


def test_features_react_to_the_signals():
    base = {
        "total": 10_000,
        "units": 1,
        "max_units_one_sku": 1,
        "n_lines": 1,
        "country": "BR",
        "account_age_s": 86_400 * 30,
        "orders_last_hour": 0,
        "tokens_30d": 1,
        "hour": 15,
        "express": 0,
        "resale_units": 0,
    }
    f = lambda **kw: dict(zip(NAMES, live_matrix([{**base, **kw}])[0], strict=True))  # noqa: E731
    assert f()["abroad"] == 0 and f(country="us")["abroad"] == 1
    assert f(hour=6)["odd_hour"] == 1 and f(hour=15)["odd_hour"] == 0  # 03:00 local (UTC-3)
    assert f(account_age_s=60)["log_account_age_h"] < f()["log_account_age_h"]
    assert f()["express"] == 0 and f(express=1)["express"] == 1
    assert f()["resale_share"] == 0 and f(units=4, resale_units=1)["resale_share"] == 0.25


class _Conn:
    def __init__(self, created_s, hour, tokens, resale=0):
        self.created_s, self.hour, self.tokens, self.resale = created_s, hour, tokens, resale
        self.args = ()

    async def fetchrow(self, sql, *args):
        self.args = args
        return {
            "created": self.created_s,
            "hour": self.hour,
            "tokens": self.tokens,
            "resale": self.resale,
        }


class _Pool:
    """An asyncpg-shaped pool answering fixed rows (the adapter's queries are not under test)."""

    def __init__(self, conn):
        self.conn = conn

    def acquire(self):
        pool = self

        class _Ctx:
            async def __aenter__(self):
                return pool.conn

            async def __aexit__(self, *exc):
                return False

        return _Ctx()


async def test_the_live_adapter_sends_the_raw_facts_the_features_expect():
    now_s = 1_764_000_000
    pool = _Pool(_Conn(now_s - 120, 2, 3, resale=5))

    async def open_pool():
        return pool

    adapter = FraudAdapter(open_pool, lambda: now_s * 1000, 50, 80)
    raw = await adapter.facts("o1", "u1", 123_456, (2, 5), "AR", ("BOO-1", "ELE-2"), "express")
    # The lines and the resale categories go to the one query that counts resale units.
    assert pool.conn.args == ("u1", "o1", ["BOO-1", "ELE-2"], [2, 5], list(RESALE_CATEGORIES))
    assert set(raw) == set(RAW_SCHEMA)
    assert raw == {
        "total": 123_456,
        "units": 7,
        "max_units_one_sku": 5,
        "n_lines": 2,
        "country": "AR",
        "account_age_s": 120,
        "orders_last_hour": 2,
        "tokens_30d": 3,
        "hour": now_s // 3600 % 24,
        "express": 1,
        "resale_units": 5,
    }
    frame = pl.DataFrame([raw], schema=RAW_SCHEMA)
    np.testing.assert_array_equal(live_matrix([raw]), matrix(fraud_features(frame)))
