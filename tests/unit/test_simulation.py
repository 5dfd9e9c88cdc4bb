"""The shopper simulation: deterministic by seed, with the structure and fraud it promises."""

import polars as pl
import pytest

from serve.models.simulation import HOME, simulate


@pytest.fixture(scope="module")
def sim():
    return simulate(seed=11, n_users=600, n_products=240)


def test_the_same_seed_gives_the_same_tables(sim):
    again = simulate(seed=11, n_users=600, n_products=240)
    assert again.orders.equals(sim.orders)
    assert again.events.equals(sim.events)
    other = simulate(seed=12, n_users=600, n_products=240)
    assert not other.orders.equals(sim.orders)


def test_popularity_is_skewed_and_sessions_have_baskets(sim):
    views = sim.events.filter(pl.col("kind") == "view").group_by("sku").len().sort("len")
    counts = views["len"].to_list()
    top_decile = sum(counts[-len(counts) // 10 :])
    assert top_decile > 0.3 * sum(counts)  # Zipf-like: a tenth of items take a third of views
    assert set(sim.events["kind"].unique()) == {"view", "cart", "purchase"}
    assert sim.orders["n_lines"].max() > 1


def test_planted_fraud_carries_the_real_world_signals(sim):
    o = sim.orders
    fraud, legit = o.filter(pl.col("is_fraud") == 1), o.filter(pl.col("is_fraud") == 0)
    assert 0.01 < fraud.height / o.height < 0.08
    abroad = lambda df: (df["country"] != HOME).mean()  # noqa: E731
    assert abroad(fraud) > 5 * abroad(legit)
    assert fraud["total"].median() > 3 * legit["total"].median()
    assert fraud["account_age_s"].median() < legit["account_age_s"].median() / 100
    assert fraud["tokens_30d"].mean() > legit["tokens_30d"].mean()
    assert fraud["address"].n_unique() < fraud["user_id"].n_unique()  # shared drop addresses
    assert fraud["express"].mean() > 3 * legit["express"].mean()
    share = lambda df: (df["resale_units"] / df["units"]).mean()  # noqa: E731
    assert share(fraud) > 2 * share(legit) and share(fraud) < 1  # mostly, not only, resale
    # The classes overlap: some legitimate orders are new accounts or go abroad.
    assert (legit["account_age_s"] < 3600).sum() > 0 and abroad(legit) > 0
