"""Rule-based fraud screening: the port the checkout saga calls, and its fallback.

A score from 0 to 100 is the sum of the rules that fire; ``review`` from
``fraud_review_score`` (default 50), ``block`` from ``fraud_block_score``
(default 80). The rules, each with its points:

- order total over R$ 5,000 (+25), over R$ 20,000 (+50 instead)
- more than 10 units of one SKU (+20)
- more than 30 units in all (+15)
- shipping outside Brazil (+30)
- account younger than one hour (+15)
- more than 3 orders by the account in the last hour (+25)

The ONNX model of a later issue replaces the score; these rules stay as the
fallback when the model is slow or down.
"""

from __future__ import annotations

from dataclasses import dataclass

# Categories whose goods resell easily (the fraud model's ``resale_share`` feature:
# training's simulation plants fraud in them, the live adapter counts their units).
RESALE_CATEGORIES = ("electronics", "beauty", "shoes")


@dataclass(frozen=True)
class FraudFacts:
    total: int
    max_units_one_sku: int
    units: int
    country: str
    account_age_s: int
    orders_last_hour: int


@dataclass(frozen=True)
class Screening:
    score: int
    decision: str  # pass | review | block
    reasons: tuple[str, ...]


def screen(facts: FraudFacts, review_at: int = 50, block_at: int = 80) -> Screening:
    rules = [
        (facts.total > 2_000_000, 50, "total-over-20000"),
        (500_000 < facts.total <= 2_000_000, 25, "total-over-5000"),
        (facts.max_units_one_sku > 10, 20, "many-units-of-one-sku"),
        (facts.units > 30, 15, "many-units"),
        (facts.country.upper() != "BR", 30, "ships-abroad"),
        (facts.account_age_s < 3600, 15, "new-account"),
        (facts.orders_last_hour > 3, 25, "order-burst"),
    ]
    fired = [(points, name) for hit, points, name in rules if hit]
    score = min(100, sum(points for points, _ in fired))
    decision = "block" if score >= block_at else "review" if score >= review_at else "pass"
    return Screening(score, decision, tuple(name for _, name in fired))
