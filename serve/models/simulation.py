"""A deterministic shopper simulation over the demo catalog: the models' training data.

``simulate(seed)`` returns polars tables (``products``, ``users``, ``events``,
``orders``) with the structure real shop logs have:

- popularity: Zipf-like within each category (exponent ``ZIPF_S``), so a few
  items take most views;
- shoppers: a home country (mostly Brazil), an account age, and category
  affinities drawn from a sparse Dirichlet (most shoppers like 2-3 categories);
- co-purchase: every product has ``COMPLEMENTS`` complements (two in its own
  category, one in a paired category); a session's next view follows a
  complement of the last item half of the time;
- seasonality: hour-of-day (evening peak, quiet nights) and weekday weights
  (busier Mondays and Sundays) for legitimate sessions;
- baskets: views -> cart adds (each viewed item with ``CART_RATE``) -> an order
  (``ORDER_RATE`` of sessions with a cart), 1-3 units per line (some bulk buyers);
- planted fraud, from real-world signals: brand-new accounts placing high-value
  orders, shipping to a country other than the account's, bursts of attempts
  within an hour, a new payment token per attempt, drop addresses shared
  across accounts, resale-friendly categories (electronics, beauty, shoes),
  large quantities of one SKU, express shipping and odd local hours; a third
  of the fraud comes from taken-over old accounts, and some legitimate
  shoppers look risky (new accounts buying at once, buyers abroad, bulk
  orders, quick follow-up orders), so the classes overlap as they do in real data.

Everything comes from one ``numpy`` generator seeded with ``seed``: the same
seed gives the same tables, row for row. Times are UNIX seconds; the
simulated period is ``DAYS`` days ending at ``END_S``; local time is UTC-3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from actors.fraud.rules import RESALE_CATEGORIES
from cluster.seed import categories, demo_products

SEED = 7
END_S = 1_764_547_200  # 2025-12-01T00:00:00Z
DAYS = 90
LOCAL_OFFSET_H = -3
ZIPF_S = 1.1
COMPLEMENTS = 3
CART_RATE = 0.35
ORDER_RATE = 0.6
FOLLOW_COMPLEMENT = 0.5
HOME = "BR"
ABROAD = ("US", "AR", "PT", "CN", "NG", "RU", "MX", "DE")
RESALE = RESALE_CATEGORIES
# Local hour-of-day weights (0..23) of legitimate sessions: quiet nights, evening peak.
HOUR_WEIGHTS = np.array(
    [3, 2, 1, 1, 1, 1, 2, 4, 6, 7, 8, 8, 9, 8, 7, 7, 8, 9, 11, 13, 14, 13, 10, 6], dtype=float
)
WEEKDAY_WEIGHTS = np.array([1.2, 1.0, 1.0, 1.0, 1.05, 0.9, 1.15])  # Monday first


@dataclass(frozen=True)
class Simulation:
    products: pl.DataFrame  # sku, category, price
    users: pl.DataFrame  # user_id, created_s, country
    events: pl.DataFrame  # user_id, session, ts, kind (view|cart|purchase), sku
    orders: pl.DataFrame  # one row per order: raw facts + is_fraud (see ``order_facts``)


def _pick(rng: np.random.Generator, cdf: np.ndarray) -> int:
    """One index drawn with the probabilities whose cumulative sum is ``cdf``."""
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))


_HOUR_CDF = np.cumsum(HOUR_WEIGHTS)
_DAY0 = END_S // 86_400 - DAYS
_DAY_CDF = np.cumsum([WEEKDAY_WEIGHTS[(_DAY0 + d + 3) % 7] for d in range(DAYS)])


def _basket_quantity(rng: np.random.Generator) -> int:
    """Units of one SKU in a legitimate basket: mostly 1, sometimes a few (consumables, gifts)."""
    r = rng.random()
    if r < 0.70:
        return 1
    if r < 0.87:
        return 2
    if r < 0.94:
        return 3
    return int(rng.integers(4, 7))


def _local_time(rng: np.random.Generator, start_s: int, end_s: int) -> int:
    """A timestamp in [start, end) following the weekday and hour-of-day weights."""
    for _ in range(20):
        day = _pick(rng, _DAY_CDF)
        hour_utc = (_pick(rng, _HOUR_CDF) - LOCAL_OFFSET_H) % 24
        ts = (_DAY0 + day) * 86_400 + hour_utc * 3600 + int(rng.integers(3600))
        if start_s <= ts < end_s:
            return ts
    return int(rng.integers(start_s, end_s))


class _Catalog:
    def __init__(self, rng: np.random.Generator, n_products: int) -> None:
        rows = demo_products(n_products)
        self.skus = [p["sku"] for p in rows]
        self.cats = categories()
        self.category = np.array([self.cats.index(p["category"]) for p in rows])
        self.price = np.array([int(p["price_minor"]) for p in rows], dtype=np.int64)
        self.by_cat: list[np.ndarray] = []
        self.cat_p: list[np.ndarray] = []
        self.cat_cdf: list[np.ndarray] = []
        for c in range(len(self.cats)):
            members = np.flatnonzero(self.category == c)
            rng.shuffle(members)  # popularity rank, independent of the seed's order
            weights = 1.0 / np.arange(1, len(members) + 1) ** ZIPF_S
            self.by_cat.append(members)
            self.cat_p.append(weights / weights.sum())
            self.cat_cdf.append(np.cumsum(weights))
        n = len(rows)
        self.complements = np.zeros((n, COMPLEMENTS), dtype=np.int64)
        for i in range(n):
            c = int(self.category[i])
            paired = (c + 1) % len(self.cats)
            same = rng.choice(self.by_cat[c], size=2, p=self.cat_p[c])
            other = rng.choice(self.by_cat[paired], size=1, p=self.cat_p[paired])
            self.complements[i] = np.concatenate([same, other])

    def popular_in(self, rng: np.random.Generator, c: int) -> int:
        return int(self.by_cat[c][_pick(rng, self.cat_cdf[c])])


def simulate(seed: int = SEED, n_users: int = 6000, n_products: int = 2400) -> Simulation:
    """Users, sessions (views, carts, orders) and planted fraud; deterministic by ``seed``."""
    rng = np.random.default_rng(seed)
    cat = _Catalog(rng, n_products)
    start_s = END_S - DAYS * 86_400
    users: list[dict[str, Any]] = []
    events: list[tuple[str, int, int, str, int]] = []
    orders: list[dict[str, Any]] = []
    session_no = 0
    drop_addresses = [f"drop-{i}" for i in range(25)]
    resale = [cat.cats.index(c) for c in RESALE]

    def order(uid: str, ts: int, lines: dict[int, int], country: str, **kw: Any) -> dict[str, Any]:
        items = list(lines)
        return {
            "resale_units": sum(q for i, q in lines.items() if int(cat.category[i]) in resale),
            "order_id": f"o{len(orders):06d}",
            "user_id": uid,
            "ts": ts,
            "skus": [cat.skus[i] for i in items],
            "quantities": [lines[i] for i in items],
            "total": int(sum(int(cat.price[i]) * q for i, q in lines.items())),
            "country": country,
            **kw,
        }

    for u in range(n_users):
        uid = f"u{u:05d}"
        country = HOME if rng.random() < 0.97 else str(rng.choice(ABROAD))
        # Account ages: long tail; 15% sign up inside the period and buy soon after.
        fresh = rng.random() < 0.15
        if fresh:
            created = int(rng.integers(start_s, END_S - 86_400))
        else:
            created = int(start_s - rng.exponential(400) * 86_400)
        users.append({"user_id": uid, "created_s": created, "country": country})
        affinity = np.cumsum(rng.dirichlet(np.full(len(cat.cats), 0.25)))
        token = f"pm_{uid}_0"
        address = f"addr-{uid}"
        bulk = rng.random() < 0.03
        n_sessions = 1 + int(rng.poisson(4))
        times = sorted(_local_time(rng, max(start_s, created), END_S) for _ in range(n_sessions))
        if fresh:
            times[0] = created + int(rng.integers(10, 3600))  # signs up at checkout
        for ts in times:
            session_no += 1
            c = _pick(rng, affinity)
            viewed: list[int] = [cat.popular_in(rng, c)]
            for _ in range(int(rng.integers(1, 8))):
                if rng.random() < FOLLOW_COMPLEMENT:
                    viewed.append(int(cat.complements[viewed[-1]][int(rng.integers(COMPLEMENTS))]))
                else:
                    c = _pick(rng, affinity)
                    viewed.append(cat.popular_in(rng, c))
            for k, i in enumerate(viewed):
                events.append((uid, session_no, ts + 20 * k, "view", i))
            carted = [i for i in dict.fromkeys(viewed) if rng.random() < CART_RATE]
            for k, i in enumerate(carted):
                events.append((uid, session_no, ts + 200 + 10 * k, "cart", i))
            if not carted or rng.random() >= ORDER_RATE:
                continue
            lines: dict[int, int] = {
                i: (int(rng.integers(8, 21)) if bulk else _basket_quantity(rng)) for i in carted
            }
            for i in lines:
                events.append((uid, session_no, ts + 400, "purchase", i))
            abroad = country != HOME and rng.random() < 0.8
            orders.append(
                order(
                    uid,
                    ts + 400,
                    lines,
                    country if abroad else HOME,
                    shipping_method="express" if rng.random() < 0.2 else "standard",
                    token=token if rng.random() < 0.95 else f"pm_{uid}_{int(rng.integers(1, 3))}",
                    address=address,
                    is_fraud=0,
                )
            )
            # Follow-up orders: the shopper forgot something (legitimate bursts).
            if rng.random() < 0.15:
                later = ts + 400
                for _ in range(1 + int(rng.integers(4))):
                    later += int(rng.integers(120, 1200))
                    item = int(rng.choice(viewed))
                    events.append((uid, session_no, later, "purchase", item))
                    orders.append(
                        order(
                            uid,
                            later,
                            {item: 1},
                            HOME,
                            shipping_method="standard",
                            token=token,
                            address=address,
                            is_fraud=0,
                        )
                    )

    # Planted fraud: 3% of accounts, each a burst of attempts.
    for f in range(int(n_users * 0.03)):
        uid = f"f{f:04d}"
        takeover = rng.random() < 0.3
        first = _local_time(rng, start_s, END_S)
        if rng.random() < 0.5:  # odd local hours (01:00-05:00)
            first = first - first % 86_400 + int(rng.integers(4, 9)) * 3600
        created = (
            int(start_s - rng.exponential(300) * 86_400)
            if takeover
            else first - int(rng.integers(60, 6 * 3600))
        )
        users.append({"user_id": uid, "created_s": created, "country": HOME})
        ship = str(rng.choice(ABROAD)) if rng.random() < 0.55 else HOME
        address = str(rng.choice(drop_addresses))
        for attempt in range(1 + int(rng.poisson(1.5))):
            ts = first + attempt * int(rng.integers(60, 900))
            session_no += 1
            # Mostly resale-friendly goods; a fifth elsewhere (the model must not trust
            # a non-resale basket blindly).
            c = int(rng.choice(resale)) if rng.random() < 0.8 else int(rng.integers(len(cat.cats)))
            members = cat.by_cat[c]
            pricey = members[np.argsort(-cat.price[members])][: max(5, len(members) // 5)]
            lines = {}
            for _ in range(1 + int(rng.poisson(0.8))):
                i = int(rng.choice(pricey))
                lines[i] = (
                    int(rng.integers(5, 41)) if rng.random() < 0.4 else int(rng.integers(1, 4))
                )
            for i in lines:
                events.append((uid, session_no, ts - 30, "view", i))
                events.append((uid, session_no, ts - 10, "cart", i))
            orders.append(
                order(
                    uid,
                    ts,
                    lines,
                    ship,
                    shipping_method="express" if rng.random() < 0.7 else "standard",
                    token=f"pm_{uid}_{attempt}",
                    address=address,
                    is_fraud=1,
                )
            )

    products = pl.DataFrame(
        {
            "sku": cat.skus,
            "category": [cat.cats[c] for c in cat.category],
            "price": cat.price,
        }
    )
    ev = pl.DataFrame(events, schema=["user_id", "session", "ts", "kind", "item"], orient="row")
    ev = ev.with_columns(sku=pl.Series(cat.skus).gather(ev["item"]))
    people = pl.DataFrame(users).rename({"country": "home_country"})
    raw = pl.DataFrame(orders).join(people, on="user_id").sort("ts", "order_id")
    return Simulation(products, pl.DataFrame(users), ev.drop("item"), order_facts(raw))


def order_facts(orders: pl.DataFrame) -> pl.DataFrame:
    """The raw fraud facts of every order, from the order history alone.

    The same facts the live adapter reads from PostgreSQL for an order being
    placed: the order's total, units and lines, destination country, the
    account's age, the account's other orders in the hour before it, the
    distinct payment tokens on its orders of the 30 days before it, express
    shipping, and the units of resale-friendly categories (counted per order
    from its lines' categories, as the live adapter does from ``products``).
    """
    by_user: dict[str, list[tuple[int, str]]] = {}
    last_hour: list[int] = []
    tokens: list[int] = []
    for uid, ts, token in orders.select("user_id", "ts", "token").iter_rows():
        prior = by_user.setdefault(uid, [])
        last_hour.append(sum(1 for t, _ in prior if ts - t < 3600))
        tokens.append(len({k for t, k in prior if ts - t < 30 * 86_400}))
        prior.append((ts, token))
    return orders.with_columns(
        units=pl.col("quantities").list.sum().cast(pl.Int64),
        max_units_one_sku=pl.col("quantities").list.max().cast(pl.Int64),
        n_lines=pl.col("quantities").list.len().cast(pl.Int64),
        account_age_s=(pl.col("ts") - pl.col("created_s")).clip(lower_bound=0),
        orders_last_hour=pl.Series(last_hour, dtype=pl.Int64),
        tokens_30d=pl.Series(tokens, dtype=pl.Int64),
        hour=((pl.col("ts") // 3600) % 24).cast(pl.Int64),
        express=(pl.col("shipping_method") == "express").cast(pl.Int64),
        resale_units=pl.col("resale_units").cast(pl.Int64),
    )
