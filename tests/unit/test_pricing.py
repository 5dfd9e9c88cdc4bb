"""The pricing engine, table by table: promotions, coupons, shipping, tax, rounding, totals."""

import asyncio
import dataclasses
import random
from typing import Any

import pytest

from actors.pricing.engine import (
    AppliedDiscount,
    Coupon,
    Destination,
    Line,
    Promotion,
    Quote,
    Rejected,
    ShippingQuote,
    ShippingRate,
    TaxRule,
    allocate,
    pct,
    quote,
    validate_coupon,
    validate_promotion,
)

NOW = 1_700_000_000
DAY = 86_400
SP = Destination("BR", "SP", "01310-100")
BA = Destination("BR", "BA", "40010-000")
RJ = Destination("BR", "RJ", "20040-002")

RATES = (
    ShippingRate("standard", "SP", base=1_000, per_kg=200, free_over=20_000, days=3),
    ShippingRate("standard", "*", base=1_500, per_kg=300, free_over=None, days=7),
    ShippingRate("express", "*", base=3_000, per_kg=500, free_over=None, days=2),
)
TAX = (
    TaxRule("SP", "books", 0),
    TaxRule("SP", "*", 1_800),
    TaxRule("*", "food", 700),
    TaxRule("*", "*", 1_700),
)


def line(sku="A", category="books", unit_price=1_000, quantity=1, weight_g=0) -> Line:
    return Line(sku, category, unit_price, quantity, weight_g)


def promo(pid="P", kind="percentage", target="cart", **fields: Any) -> Promotion:
    window = {"starts_at": NOW - DAY, "ends_at": NOW + DAY}
    return Promotion(id=pid, kind=kind, target=target, **{**window, **fields})


def coupon(code="SAVE", kind="percentage", value=1_000, **fields: Any) -> Coupon:
    window = {"starts_at": NOW - DAY, "ends_at": NOW + DAY}
    return Coupon(code=code, kind=kind, value=value, **{**window, **fields})


def run(
    lines,
    promotions=(),
    coupon_code=None,
    coupons=(),
    user_id="u1",
    shipping_method=None,
    destination=None,
    rates=RATES,
    tax_rules=(),
    now=NOW,
) -> Quote | Rejected:
    return quote(
        lines,
        promotions,
        coupon_code,
        {c.code: c for c in coupons},
        user_id,
        shipping_method,
        destination,
        rates,
        tax_rules,
        now,
    )


def priced(*args: Any, **kwargs: Any) -> Quote:
    result = run(*args, **kwargs)
    assert isinstance(result, Quote), result
    return result


def rejection(*args: Any, **kwargs: Any) -> str:
    result = run(*args, **kwargs)
    assert isinstance(result, Rejected), result
    return result.code


def applied(q: Quote) -> list[list[tuple[str, int]]]:
    return [[(d.id, d.amount) for d in ql.discounts] for ql in q.lines]


PCT_CASES = [
    pytest.param(1, 5_000, 1, id="1-centavo-at-50pct-rounds-up"),
    pytest.param(5, 1_000, 1, id="5-at-10pct-half-rounds-up"),
    pytest.param(4, 1_000, 0, id="4-at-10pct-rounds-down"),
    pytest.param(15, 1_000, 2, id="15-at-10pct-half-rounds-up"),
    pytest.param(25, 1_000, 3, id="25-at-10pct-half-rounds-up"),
    pytest.param(1, 4_999, 0, id="just-under-half"),
    pytest.param(3, 3_333, 1, id="just-under-one"),
    pytest.param(0, 5_000, 0, id="zero-amount"),
    pytest.param(12_345, 0, 0, id="zero-rate"),
    pytest.param(12_345, 10_000, 12_345, id="hundred-percent-is-identity"),
    pytest.param(19_990, 1_800, 3_598, id="icms-18pct-exact"),
    pytest.param(999, 1_750, 175, id="17.5pct-of-999-is-174.825"),
]


@pytest.mark.parametrize(("amount", "bp", "expected"), PCT_CASES)
def test_pct_rounds_half_up(amount, bp, expected):
    assert pct(amount, bp) == expected


ALLOCATE_CASES = [
    pytest.param(100, [1_000, 2_000], [33, 67], id="largest-remainder-gets-the-centavo"),
    pytest.param(1, [500, 500], [1, 0], id="tie-goes-to-earlier-line"),
    pytest.param(2, [1, 1, 1], [1, 1, 0], id="three-way-tie"),
    pytest.param(300, [1_000, 0, 2_000], [100, 0, 200], id="exact-and-zero-weight"),
    pytest.param(0, [0, 0], [0, 0], id="nothing-over-nothing"),
    pytest.param(0, [], [], id="no-lines"),
]


@pytest.mark.parametrize(("amount", "weights", "expected"), ALLOCATE_CASES)
def test_allocate_splits_exactly(amount, weights, expected):
    assert allocate(amount, weights) == expected
    assert sum(expected) == amount


LINE_PROMOTION_CASES = [
    pytest.param([line(quantity=2)], [], [[]], [2_000], id="no-promotions"),
    pytest.param(
        [line("A", quantity=2), line("B")],
        [promo(target="sku", target_value="A", value=1_000)],
        [[("P", 200)], []],
        [1_800, 1_000],
        id="percentage-on-sku",
    ),
    pytest.param(
        [line("A", "books", quantity=3), line("B", "toys")],
        [promo(kind="fixed", target="category", target_value="books", value=150)],
        [[("P", 450)], []],
        [2_550, 1_000],
        id="fixed-per-unit-on-category",
    ),
    pytest.param(
        [line("A"), line("B", "toys")],
        [promo(value=5_000)],
        [[("P", 500)], [("P", 500)]],
        [500, 500],
        id="cart-target-matches-every-line",
    ),
    pytest.param(
        [line()],
        [promo(value=1_000, starts_at=NOW + 1)],
        [[]],
        [1_000],
        id="before-start-excluded",
    ),
    pytest.param(
        [line()],
        [promo(value=1_000, starts_at=NOW)],
        [[("P", 100)]],
        [900],
        id="at-start-included",
    ),
    pytest.param(
        [line()],
        [promo(value=1_000, ends_at=NOW)],
        [[]],
        [1_000],
        id="at-end-excluded",
    ),
    pytest.param(
        [line()],
        [promo(value=1_000, ends_at=NOW + 1)],
        [[("P", 100)]],
        [900],
        id="last-second-included",
    ),
    pytest.param(
        [line()],
        [promo("PCT10", value=1_000), promo("FIX300", kind="fixed", value=300)],
        [[("FIX300", 300)]],
        [700],
        id="best-non-stackable-wins",
    ),
    pytest.param(
        [line()],
        [promo("B", value=1_000, priority=1), promo("A", value=1_000, priority=5)],
        [[("A", 100)]],
        [900],
        id="equal-non-stackable-higher-priority-wins",
    ),
    pytest.param(
        [line()],
        [promo("B", value=1_000), promo("A", value=1_000)],
        [[("A", 100)]],
        [900],
        id="equal-non-stackable-same-priority-smaller-id-wins",
    ),
    pytest.param(
        [line()],
        [promo("BASE", value=1_000), promo("EXTRA", value=1_000, stackable=True)],
        [[("BASE", 100), ("EXTRA", 90)]],
        [810],
        id="stackable-adds-on-the-remaining-amount",
    ),
    pytest.param(
        [line()],
        [
            promo("FIX", kind="fixed", value=100, stackable=True, priority=1),
            promo("HALF", value=5_000, stackable=True, priority=2),
        ],
        [[("HALF", 500), ("FIX", 100)]],
        [400],
        id="stackables-in-priority-order-high-first",
    ),
    pytest.param(
        [line()],
        [
            promo("FIX", kind="fixed", value=100, stackable=True, priority=2),
            promo("HALF", value=5_000, stackable=True, priority=1),
        ],
        [[("FIX", 100), ("HALF", 450)]],
        [450],
        id="priority-order-changes-the-result",
    ),
    pytest.param(
        [line()],
        [promo(kind="fixed", value=1_500)],
        [[("P", 1_000)]],
        [0],
        id="fixed-capped-at-line-subtotal",
    ),
    pytest.param(
        [line()],
        [
            promo("BIG", value=8_000),
            promo("MORE", kind="fixed", value=500, stackable=True),
            promo("NONE-LEFT", value=1_000, stackable=True, priority=-1),
        ],
        [[("BIG", 800), ("MORE", 200)]],
        [0],
        id="stack-capped-and-zero-discounts-not-listed",
    ),
    pytest.param(
        [line(unit_price=1_000, quantity=2)],
        [promo(kind="buy_x_pay_y", buy=3, pay=2)],
        [[]],
        [2_000],
        id="buy3pay2-qty-2",
    ),
    pytest.param(
        [line(unit_price=1_000, quantity=3)],
        [promo(kind="buy_x_pay_y", buy=3, pay=2)],
        [[("P", 1_000)]],
        [2_000],
        id="buy3pay2-qty-3",
    ),
    pytest.param(
        [line(unit_price=1_000, quantity=5)],
        [promo(kind="buy_x_pay_y", buy=3, pay=2)],
        [[("P", 1_000)]],
        [4_000],
        id="buy3pay2-qty-5",
    ),
    pytest.param(
        [line(unit_price=1_000, quantity=6)],
        [promo(kind="buy_x_pay_y", buy=3, pay=2)],
        [[("P", 2_000)]],
        [4_000],
        id="buy3pay2-qty-6",
    ),
    pytest.param(
        [line("A", quantity=2), line("B", quantity=2)],
        [promo(kind="buy_x_pay_y", buy=3, pay=2)],
        [[], []],
        [2_000, 2_000],
        id="buy3pay2-never-pools-lines",
    ),
    pytest.param(
        [line(quantity=4)],
        [promo(kind="buy_x_pay_y", buy=4, pay=1)],
        [[("P", 3_000)]],
        [1_000],
        id="buy4pay1",
    ),
]


@pytest.mark.parametrize(("lines", "promotions", "discounts", "totals"), LINE_PROMOTION_CASES)
def test_line_promotions(lines, promotions, discounts, totals):
    q = priced(lines, promotions)
    assert applied(q) == discounts
    assert [ql.line_total for ql in q.lines] == totals
    assert q.discount_total == sum(ql.line_subtotal - ql.line_total for ql in q.lines)


TIERS = ((1, 200), (5, 500), (10, 1_000))


@pytest.mark.parametrize(
    ("tiers", "quantity", "discount"),
    [
        pytest.param(TIERS, 1, 20, id="1-unit-first-tier-2pct"),
        pytest.param(TIERS, 4, 80, id="4-units-still-first-tier"),
        pytest.param(TIERS, 5, 250, id="5-units-second-tier-5pct"),
        pytest.param(TIERS, 9, 450, id="9-units-still-second-tier"),
        pytest.param(TIERS, 10, 1_000, id="10-units-top-tier-10pct"),
        pytest.param(TIERS, 25, 2_500, id="25-units-top-tier"),
        pytest.param(((5, 500), (10, 1_000)), 4, 0, id="below-lowest-tier-nothing"),
    ],
)
def test_quantity_tiers_use_the_highest_tier_reached(tiers, quantity, discount):
    q = priced([line(quantity=quantity)], [promo(kind="tier", tiers=tiers)])
    assert sum(d.amount for d in q.lines[0].discounts) == discount


def test_promotion_labels_default_from_the_kind():
    q = priced(
        [line("A"), line("B", quantity=3), line("C", quantity=5), line("D")],
        [
            promo("pa", target="sku", target_value="A", value=1_250),
            promo("pb", kind="buy_x_pay_y", target="sku", target_value="B", buy=3, pay=2),
            promo("pc", kind="tier", target="sku", target_value="C", tiers=TIERS),
            promo("pd", kind="fixed", target="sku", target_value="D", value=150, label="Promo D"),
        ],
    )
    assert [ql.discounts[0].label for ql in q.lines] == [
        "12.5% off",
        "buy 3 pay 2",
        "quantity discount",
        "Promo D",
    ]


PROMOTED = [promo("P10", target="sku", target_value="A", value=1_000)]

COUPON_REJECTION_CASES = [
    pytest.param({"coupon_code": "NOPE"}, "coupon-unknown", id="unknown"),
    pytest.param({"coupon_code": ""}, "coupon-unknown", id="empty-code"),
    pytest.param({"coupons": [coupon(starts_at=NOW + 1)]}, "coupon-not-started", id="not-started"),
    pytest.param({"coupons": [coupon(ends_at=NOW)]}, "coupon-expired", id="expired-at-end"),
    pytest.param({"coupons": [coupon(ends_at=NOW - DAY + 1)]}, "coupon-expired", id="expired"),
    pytest.param(
        {"coupons": [coupon(max_uses_total=10, uses_total=10)]},
        "coupon-exhausted",
        id="exhausted",
    ),
    pytest.param(
        {"coupons": [coupon(max_uses_per_user=1, uses_by_user={"u1": 1})]},
        "coupon-user-limit",
        id="user-limit",
    ),
    pytest.param(
        {"coupons": [coupon(max_uses_per_user=1)], "user_id": None},
        "coupon-login-required",
        id="per-user-limit-needs-a-user",
    ),
    pytest.param(
        {"coupons": [coupon(min_subtotal=2_101, stackable=True)]},
        "coupon-min-subtotal",
        id="min-subtotal-counts-after-line-promotions",
    ),
    pytest.param(
        {"coupons": [coupon(stackable=False)]},
        "coupon-not-stackable",
        id="not-stackable-with-a-promotion",
    ),
    pytest.param(
        {"coupons": [coupon(ends_at=NOW, max_uses_total=1, uses_total=1)]},
        "coupon-expired",
        id="window-checked-before-usage",
    ),
]


@pytest.mark.parametrize(("overrides", "code"), COUPON_REJECTION_CASES)
def test_coupon_rejections(overrides, code):
    arguments = {"coupon_code": "SAVE", "coupons": [coupon()], **overrides}
    assert rejection([line("A", quantity=2), line("B", unit_price=300)], PROMOTED, **arguments) == (
        code
    )


COUPON_SUCCESS_CASES = [
    pytest.param([], coupon(value=1_000), "SAVE", 200, id="percentage"),
    pytest.param([], coupon(kind="fixed", value=500), "SAVE", 500, id="fixed-per-order"),
    pytest.param([], coupon(kind="fixed", value=5_000), "SAVE", 2_000, id="fixed-capped"),
    pytest.param(
        [promo(value=5_000)],
        coupon(kind="fixed", value=1_500, stackable=True),
        "SAVE",
        1_000,
        id="fixed-capped-at-remaining-after-promotions",
    ),
    pytest.param(
        [promo(value=5_000)],
        coupon(value=1_000, stackable=True),
        "SAVE",
        100,
        id="stackable-percentage-on-remaining",
    ),
    pytest.param(
        [promo(kind="buy_x_pay_y", buy=3, pay=2)],
        coupon(value=1_000),
        "SAVE",
        200,
        id="non-stackable-ok-when-promotion-took-nothing",
    ),
    pytest.param([], coupon(value=1_000), "  save ", 200, id="code-case-insensitive"),
    pytest.param(
        [],
        coupon(value=1_000, max_uses_per_user=1, uses_by_user={"someone-else": 1}),
        "SAVE",
        200,
        id="other-users-uses-do-not-count",
    ),
    pytest.param(
        [],
        coupon(value=1_000, max_uses_total=10, uses_total=9, min_subtotal=2_000),
        "SAVE",
        200,
        id="last-use-and-exact-min-subtotal",
    ),
]


@pytest.mark.parametrize(("promotions", "c", "code", "amount"), COUPON_SUCCESS_CASES)
def test_coupon_applies(promotions, c, code, amount):
    q = priced([line(quantity=2)], promotions, coupon_code=code, coupons=[c])
    assert q.coupon == "SAVE"
    assert q.discounts == (AppliedDiscount("SAVE", "coupon SAVE", amount),)
    assert q.discount_total == sum(ql.line_subtotal - ql.line_total for ql in q.lines) + amount
    assert sum(ql.coupon_share for ql in q.lines) == amount


def test_coupon_share_is_split_by_line_total_and_lowers_the_tax_base():
    q = priced(
        [line("A", "toys", 1_000), line("B", "toys", 2_000)],
        coupon_code="SAVE",
        coupons=[coupon(kind="fixed", value=100, label="Cem centavos")],
        destination=RJ,
        tax_rules=TAX,
    )
    assert [ql.coupon_share for ql in q.lines] == [33, 67]
    assert [ql.tax for ql in q.lines] == [pct(967, 1_700), pct(1_933, 1_700)]
    assert q.discounts == (AppliedDiscount("SAVE", "Cem centavos", 100),)
    assert q.total == 3_000 - 100 + q.tax


def test_no_coupon_code_means_no_coupon_checks():
    q = priced([line()], coupons=[coupon(ends_at=NOW)])
    assert q.coupon is None
    assert q.discounts == ()


SHIPPING_CASES = [
    pytest.param("standard", SP, [line(weight_g=1_500)], (1_400, 3), id="standard-regional-rate"),
    pytest.param("standard", BA, [line(weight_g=1_500)], (2_100, 7), id="standard-star-fallback"),
    pytest.param("express", SP, [line(weight_g=1_500)], (4_000, 2), id="express-star"),
    pytest.param(
        "standard",
        Destination("BR", " sp ", "x"),
        [line(weight_g=1_500)],
        (1_400, 3),
        id="state-normalised",
    ),
    pytest.param("standard", BA, [line(weight_g=0)], (1_500, 7), id="weightless-is-0-kg"),
    pytest.param("standard", BA, [line(weight_g=1)], (1_800, 7), id="1-g-rounds-up-to-1-kg"),
    pytest.param("standard", BA, [line(weight_g=1_000)], (1_800, 7), id="1000-g-is-1-kg"),
    pytest.param("standard", BA, [line(weight_g=1_001)], (2_100, 7), id="1001-g-rounds-to-2-kg"),
    pytest.param(
        "standard",
        BA,
        [line(weight_g=500, quantity=3), line("B", weight_g=400)],
        (2_100, 7),
        id="weight-is-per-unit-summed-over-lines",
    ),
    pytest.param(
        "standard",
        SP,
        [line(unit_price=20_000, weight_g=3_000)],
        (0, 3),
        id="free-at-threshold",
    ),
    pytest.param(
        "standard",
        SP,
        [line(unit_price=19_999, weight_g=3_000)],
        (1_600, 3),
        id="not-free-just-below-threshold",
    ),
    pytest.param(
        "standard",
        BA,
        [line(unit_price=1_000_000, weight_g=3_000)],
        (2_400, 7),
        id="no-threshold-never-free",
    ),
]


@pytest.mark.parametrize(("method", "destination", "lines", "expected"), SHIPPING_CASES)
def test_shipping(method, destination, lines, expected):
    q = priced(lines, shipping_method=method, destination=destination)
    assert q.shipping == ShippingQuote(method, *expected)
    assert q.total == q.subtotal + expected[0]


def test_free_shipping_threshold_counts_discounts_and_coupon():
    lines = [line(unit_price=22_000, weight_g=1_000)]
    ten_off = [promo(value=1_000)]
    assert priced(lines, ten_off, shipping_method="standard", destination=SP).shipping == (
        ShippingQuote("standard", 1_200, 3)
    )
    with_coupon = priced(
        lines,
        coupon_code="SAVE",
        coupons=[coupon(kind="fixed", value=2_001)],
        shipping_method="standard",
        destination=SP,
    )
    assert with_coupon.shipping == ShippingQuote("standard", 1_200, 3)
    assert priced(lines, shipping_method="standard", destination=SP).shipping == (
        ShippingQuote("standard", 0, 3)
    )


@pytest.mark.parametrize(
    ("method", "destination", "rates", "code"),
    [
        pytest.param("drone", SP, RATES, "shipping-method-unknown", id="unknown-method"),
        pytest.param("express", SP, RATES[:2], "shipping-method-unknown", id="method-not-offered"),
        pytest.param("standard", None, RATES, "shipping-destination-required", id="no-address"),
        pytest.param(
            "standard", BA, RATES[:1], "shipping-region-unavailable", id="region-not-served"
        ),
    ],
)
def test_shipping_rejections(method, destination, rates, code):
    assert rejection([line()], shipping_method=method, destination=destination, rates=rates) == code


def test_no_shipping_method_means_no_shipping():
    q = priced([line(weight_g=5_000)], destination=SP)
    assert q.shipping is None
    assert q.total == q.subtotal


TAX_CASES = [
    pytest.param(SP, "books", 0, id="region-and-category"),
    pytest.param(SP, "toys", 1_800, id="region-fallback"),
    pytest.param(RJ, "food", 700, id="any-region-category"),
    pytest.param(RJ, "toys", 1_700, id="any-any-fallback"),
    pytest.param(None, "toys", 1_700, id="no-destination-uses-star-rules"),
    pytest.param(None, "food", 700, id="no-destination-star-category"),
]


@pytest.mark.parametrize(("destination", "category", "rate_bp"), TAX_CASES)
def test_tax_rate_lookup(destination, category, rate_bp):
    q = priced(
        [line(category=category, unit_price=1_990, quantity=3)],
        destination=destination,
        tax_rules=TAX,
    )
    assert q.lines[0].tax_rate_bp == rate_bp
    assert q.tax == pct(5_970, rate_bp)


def test_no_tax_rules_means_no_tax():
    q = priced([line()], destination=SP)
    assert (q.tax, q.lines[0].tax_rate_bp) == (0, 0)


def test_tax_is_on_the_discounted_line_total_and_shipping_is_untaxed():
    q = priced(
        [line("A", "toys", 1_000, weight_g=2_000), line("B", "books", 5_000)],
        [promo(value=1_000)],
        shipping_method="standard",
        destination=SP,
        tax_rules=TAX,
    )
    assert [ql.tax for ql in q.lines] == [162, 0]
    assert q.shipping == ShippingQuote("standard", 1_400, 3)
    assert q.tax == 162
    assert q.total == 6_000 - 600 + 1_400 + 162


def test_full_checkout_quote():
    q = priced(
        [
            line("BOOK-1", "books", 4_990, quantity=3, weight_g=400),
            line("TOY-1", "toys", 12_990, quantity=1, weight_g=900),
        ],
        [
            promo(
                "B3P2", kind="buy_x_pay_y", target="category", target_value="books", buy=3, pay=2
            ),
            promo("TOYS5", target="category", target_value="toys", value=500, stackable=True),
        ],
        coupon_code="BEMVINDO",
        coupons=[coupon("BEMVINDO", value=1_000, stackable=True)],
        shipping_method="standard",
        destination=SP,
        tax_rules=TAX,
    )
    assert q.subtotal == 27_960
    assert applied(q) == [[("B3P2", 4_990)], [("TOYS5", 650)]]
    assert [ql.line_total for ql in q.lines] == [9_980, 12_340]
    assert q.discounts == (AppliedDiscount("BEMVINDO", "coupon BEMVINDO", 2_232),)
    assert [ql.coupon_share for ql in q.lines] == [998, 1_234]
    assert q.discount_total == 4_990 + 650 + 2_232
    assert q.shipping == ShippingQuote("standard", 0, 3)
    assert [ql.tax for ql in q.lines] == [0, 1_999]
    assert q.total == 27_960 - 7_872 + 0 + 1_999


TOTAL_FLOOR_CASES = [
    pytest.param([promo(kind="fixed", value=10**9)], None, [], id="huge-fixed-promotion"),
    pytest.param([promo(value=10_000)], None, [], id="hundred-percent-promotion"),
    pytest.param(
        [promo(value=9_000)],
        "SAVE",
        [coupon(kind="fixed", value=10**9, stackable=True)],
        id="huge-coupon-after-promotion",
    ),
    pytest.param([], "SAVE", [coupon(value=10_000)], id="hundred-percent-coupon"),
]


@pytest.mark.parametrize(("promotions", "code", "coupons"), TOTAL_FLOOR_CASES)
def test_total_never_negative(promotions, code, coupons):
    q = priced(
        [line(unit_price=1_999, quantity=2), line("B", "toys", 1)],
        promotions,
        coupon_code=code,
        coupons=coupons,
        tax_rules=TAX,
        destination=RJ,
    )
    assert q.discount_total == q.subtotal
    assert all(ql.line_total - ql.coupon_share == 0 for ql in q.lines)
    assert (q.tax, q.total) == (0, 0)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(line(quantity=0), id="zero-quantity"),
        pytest.param(line(unit_price=-1), id="negative-price"),
        pytest.param(line(weight_g=-1), id="negative-weight"),
    ],
)
def test_invalid_lines_are_rejected(bad):
    assert rejection([line("OK"), bad]) == "invalid-line"


def test_empty_cart_is_a_zero_quote():
    q = priced([], [promo(value=1_000)], coupon_code="SAVE", coupons=[coupon()])
    assert (q.subtotal, q.discount_total, q.tax, q.total, q.lines) == (0, 0, 0, 0, ())


def test_same_input_same_quote_whatever_the_promotion_order():
    lines = [line("A", quantity=6), line("B", "toys", 777, 4, 350)]
    promotions = [
        promo("X", value=1_500),
        promo("Y", kind="fixed", value=100),
        promo("Z", kind="buy_x_pay_y", buy=3, pay=2, stackable=True),
        promo("W", value=333, stackable=True),
        promo("V", value=333, stackable=True),
    ]
    arguments = {
        "coupon_code": "SAVE",
        "coupons": [coupon(stackable=True)],
        "shipping_method": "express",
        "destination": SP,
        "tax_rules": TAX,
    }
    first = priced(lines, promotions, **arguments)
    assert priced(lines, promotions, **arguments) == first
    assert priced(lines, list(reversed(promotions)), **arguments) == first


def _random_tiers(rng: random.Random) -> dict[int, int]:
    return {rng.randint(1, 12): rng.randint(1, 10_000) for _ in range(rng.randint(1, 3))}


def _random_promotion(rng: random.Random, i: int, skus: list[str]) -> Promotion:
    kind = rng.choice(["percentage", "fixed", "buy_x_pay_y", "tier"])
    target = rng.choice(["sku", "category", "cart"])
    target_value = {"sku": rng.choice(skus), "category": rng.choice(["books", "toys"])}.get(target)
    fields: dict[str, Any] = {
        "percentage": {"value": rng.randint(1, 10_000)},
        "fixed": {"value": rng.randint(1, 5_000)},
        "buy_x_pay_y": {"buy": (buy := rng.randint(2, 5)), "pay": rng.randint(1, buy - 1)},
        "tier": {"tiers": tuple(sorted(_random_tiers(rng).items()))},
    }[kind]
    start = NOW + rng.randint(-3, 1) * DAY
    return promo(
        f"P{i}",
        kind,
        target,
        target_value=target_value,
        starts_at=start,
        ends_at=start + rng.randint(1, 3) * DAY,
        stackable=rng.random() < 0.5,
        priority=rng.randint(-2, 2),
        **fields,
    )


def _all_ints(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, str) or value is None:
        return True
    if isinstance(value, tuple):
        return all(_all_ints(v) for v in value)
    return all(_all_ints(getattr(value, f.name)) for f in dataclasses.fields(value))


def test_invariants_hold_for_seeded_random_carts():
    rng = random.Random(20_240_601)
    quoted = 0
    for _ in range(500):
        skus = [f"S{i}" for i in range(rng.randint(0, 5))]
        lines = [
            line(
                sku,
                rng.choice(["books", "toys", "food"]),
                rng.randint(0, 50_000),
                rng.randint(1, 12),
                rng.randint(0, 3_000),
            )
            for sku in skus
        ]
        promotions = [_random_promotion(rng, i, skus or ["S0"]) for i in range(rng.randint(0, 6))]
        c = coupon(
            kind=rng.choice(["percentage", "fixed"]),
            value=rng.randint(1, 10_000),
            min_subtotal=rng.choice([0, 5_000]),
            stackable=rng.random() < 0.7,
        )
        result = run(
            lines,
            promotions,
            coupon_code=rng.choice([None, "SAVE"]),
            coupons=[c],
            shipping_method=rng.choice([None, "standard", "express"]),
            destination=rng.choice([SP, BA, RJ]),
            tax_rules=TAX,
        )
        if isinstance(result, Rejected):
            assert result.code in {"coupon-min-subtotal", "coupon-not-stackable"}
            continue
        quoted += 1
        q = result
        shipping = q.shipping.amount if q.shipping else 0
        assert _all_ints(q)
        assert 0 <= q.discount_total <= q.subtotal
        assert q.total == q.subtotal - q.discount_total + shipping + q.tax
        assert q.total >= 0
        assert q.subtotal == sum(ql.line_subtotal for ql in q.lines)
        assert q.tax == sum(ql.tax for ql in q.lines)
        assert sum(d.amount for d in q.discounts) == sum(ql.coupon_share for ql in q.lines)
        for ql in q.lines:
            assert ql.line_total == ql.line_subtotal - sum(d.amount for d in ql.discounts)
            assert 0 <= ql.coupon_share <= ql.line_total <= ql.line_subtotal
            assert all(d.amount > 0 for d in ql.discounts)
    assert quoted > 300


PROMOTION_INPUT = {
    "id": "books-10",
    "kind": "percentage",
    "target": "category",
    "target_value": "books",
    "value": 1_000,
    "starts_at": NOW,
    "ends_at": NOW + DAY,
}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({}, {"value": 1_000, "stackable": False, "priority": 0}, id="percentage"),
        pytest.param(
            {"kind": "fixed", "value": 250, "target": "sku", "target_value": " BOOK-1 "},
            {"value": 250, "target_value": "BOOK-1"},
            id="fixed-on-sku",
        ),
        pytest.param(
            {
                "kind": "buy_x_pay_y",
                "value": None,
                "buy": 3,
                "pay": 2,
                "target": "cart",
                "target_value": None,
                "stackable": True,
                "priority": -3,
            },
            {"buy": 3, "pay": 2, "target_value": None, "stackable": True, "priority": -3},
            id="buy-x-pay-y-on-cart",
        ),
        pytest.param(
            {"kind": "tier", "value": None, "tiers": [[10, 1_000], [1, 200], [5, 500]]},
            {"tiers": ((1, 200), (5, 500), (10, 1_000))},
            id="tiers-sorted",
        ),
        pytest.param({"value": 10_000, "label": "Tudo grátis"}, {"label": "Tudo grátis"}, id="max"),
    ],
)
def test_validate_promotion_accepts(changes, expected):
    result = validate_promotion({**PROMOTION_INPUT, **changes})
    assert isinstance(result, Promotion), result
    assert {k: getattr(result, k) for k in expected} == expected


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"kind": "bogo"}, "kind", id="bad-kind"),
        pytest.param({"target": "brand"}, "target", id="bad-target"),
        pytest.param({"target_value": None}, "target_value", id="missing-target-value"),
        pytest.param({"target": "cart"}, "target_value", id="target-value-with-cart"),
        pytest.param({"value": -100}, "value", id="negative-value"),
        pytest.param({"value": 0}, "value", id="zero-value"),
        pytest.param({"value": 10_001}, "value", id="over-100pct"),
        pytest.param({"value": None}, "value", id="missing-value"),
        pytest.param({"value": 10.0}, "value", id="float-value"),
        pytest.param({"value": True}, "value", id="bool-value"),
        pytest.param({"value": "1000"}, "value", id="string-value"),
        pytest.param({"kind": "fixed", "value": -1}, "value", id="negative-fixed"),
        pytest.param({"ends_at": NOW}, "ends_at", id="ends-at-start"),
        pytest.param({"ends_at": NOW - 1}, "ends_at", id="ends-before-start"),
        pytest.param({"starts_at": None}, "starts_at", id="missing-start"),
        pytest.param({"starts_at": -1}, "starts_at", id="negative-start"),
        pytest.param(
            {"kind": "buy_x_pay_y", "value": None, "buy": 3, "pay": 3}, "buy", id="buy-equals-pay"
        ),
        pytest.param(
            {"kind": "buy_x_pay_y", "value": None, "buy": 2, "pay": 3}, "buy", id="buy-below-pay"
        ),
        pytest.param(
            {"kind": "buy_x_pay_y", "value": None, "buy": 3, "pay": 0}, "pay", id="pay-zero"
        ),
        pytest.param(
            {"kind": "buy_x_pay_y", "buy": 3, "pay": 2}, "value", id="value-on-buy-x-pay-y"
        ),
        pytest.param({"buy": 3}, "buy", id="buy-on-percentage"),
        pytest.param({"tiers": [[1, 100]]}, "tiers", id="tiers-on-percentage"),
        pytest.param({"kind": "tier", "value": None, "tiers": []}, "tiers", id="no-tiers"),
        pytest.param(
            {"kind": "tier", "value": None, "tiers": [[1, 100], [1, 200]]},
            "tiers",
            id="repeated-tier",
        ),
        pytest.param(
            {"kind": "tier", "value": None, "tiers": [[5, 10_001]]},
            "tiers[0]",
            id="tier-over-100pct",
        ),
        pytest.param(
            {"kind": "tier", "value": None, "tiers": [[0, 100]]},
            "tiers[0]",
            id="tier-zero-quantity",
        ),
        pytest.param({"stackable": "yes"}, "stackable", id="stackable-not-bool"),
        pytest.param({"priority": 1.5}, "priority", id="priority-not-int"),
        pytest.param({"id": " "}, "id", id="blank-id"),
        pytest.param({"ends_on": NOW}, "ends_on", id="unknown-field"),
    ],
)
def test_validate_promotion_rejects(changes, field):
    result = validate_promotion({**PROMOTION_INPUT, **changes})
    assert isinstance(result, Rejected), result
    assert result.code == "invalid-promotion"
    assert field in {e.field for e in result.errors}
    assert field in result.detail


def test_validate_promotion_lists_every_bad_field():
    result = validate_promotion({"kind": "x", "target": "y", "starts_at": 5, "ends_at": 1})
    assert isinstance(result, Rejected)
    assert {e.field for e in result.errors} == {"id", "kind", "target", "ends_at"}


def test_a_validated_promotion_prices_like_a_built_one():
    tiers = {
        "kind": "tier",
        "value": None,
        "tiers": [[5, 500], [1, 200]],
        "target": "cart",
        "target_value": None,
        "starts_at": NOW - 1,
    }
    promotion = validate_promotion({**PROMOTION_INPUT, **tiers})
    assert isinstance(promotion, Promotion)
    assert priced([line(quantity=6)], [promotion]).lines[0].line_total == 5_700


COUPON_INPUT = {
    "code": "bemvindo10",
    "kind": "percentage",
    "value": 1_000,
    "starts_at": NOW,
    "ends_at": NOW + DAY,
}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {},
            {
                "code": "BEMVINDO10",
                "min_subtotal": 0,
                "max_uses_total": None,
                "max_uses_per_user": None,
                "uses_total": 0,
                "stackable": False,
            },
            id="percentage-defaults",
        ),
        pytest.param(
            {
                "code": " frete-10 ",
                "kind": "fixed",
                "value": 1_000,
                "min_subtotal": 5_000,
                "max_uses_total": 100,
                "max_uses_per_user": 1,
                "stackable": True,
            },
            {
                "code": "FRETE-10",
                "kind": "fixed",
                "min_subtotal": 5_000,
                "max_uses_total": 100,
                "max_uses_per_user": 1,
                "stackable": True,
            },
            id="fixed-with-limits",
        ),
    ],
)
def test_validate_coupon_accepts(changes, expected):
    result = validate_coupon({**COUPON_INPUT, **changes})
    assert isinstance(result, Coupon), result
    assert {k: getattr(result, k) for k in expected} == expected


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"kind": "buy_x_pay_y"}, "kind", id="bad-kind"),
        pytest.param({"value": -1}, "value", id="negative-value"),
        pytest.param({"value": 10_001}, "value", id="over-100pct"),
        pytest.param({"kind": "fixed", "value": 0}, "value", id="zero-fixed"),
        pytest.param({"value": 9.99}, "value", id="float-value"),
        pytest.param({"ends_at": NOW}, "ends_at", id="ends-at-start"),
        pytest.param({"min_subtotal": -1}, "min_subtotal", id="negative-min-subtotal"),
        pytest.param({"max_uses_total": 0}, "max_uses_total", id="zero-total-uses"),
        pytest.param({"max_uses_per_user": -1}, "max_uses_per_user", id="negative-user-uses"),
        pytest.param({"code": "BEM VINDO"}, "code", id="space-in-code"),
        pytest.param({"code": "X" * 65}, "code", id="code-too-long"),
        pytest.param({"code": None}, "code", id="missing-code"),
        pytest.param({"uses_total": 3}, "uses_total", id="usage-counts-not-admin-input"),
        pytest.param({"stackable": 1}, "stackable", id="stackable-not-bool"),
    ],
)
def test_validate_coupon_rejects(changes, field):
    result = validate_coupon({**COUPON_INPUT, **changes})
    assert isinstance(result, Rejected), result
    assert result.code == "invalid-coupon"
    assert field in {e.field for e in result.errors}


def test_a_validated_coupon_is_found_by_any_case():
    validated = validate_coupon(COUPON_INPUT)
    assert isinstance(validated, Coupon)
    q = priced([line()], coupon_code="BemVindo10", coupons=[validated])
    assert q.coupon == "BEMVINDO10"
    assert q.discount_total == 100


# --- the replica's in-memory catalog (serve.catalog_state) ---------------------------------

from actors.cart.model import CartView, CartViewLine  # noqa: E402
from cluster.adapters.pricing_store import CatalogLoad, ProductFacts, Tables  # noqa: E402
from serve.catalog_state import CatalogState  # noqa: E402
from streams.events import (  # noqa: E402
    INVENTORY_CHANGED,
    PRICING_CHANGED,
    PRODUCT_UPDATED,
    make_event,
)


def facts(sku: str, category: str = "books", price: int = 1_000) -> ProductFacts:
    return ProductFacts(sku, f"Product {sku}", "d", category, price, "BRL", 400, {}, [])


class FakeStore:
    """The loading port (``cluster.adapters.pricing_store``) over dicts; counts every call."""

    def __init__(self) -> None:
        self.promotions: tuple[Promotion, ...] = ()
        self.coupons: dict[str, Coupon] = {}
        self.products = {"A": facts("A"), "B": facts("B", "food", 2_000)}
        self.stock = {"A": 5, "B": 0}
        self.calls: list[str] = []

    async def load_catalog(self, _db: Any, _now: int) -> CatalogLoad:
        self.calls.append("catalog")
        return CatalogLoad(
            Tables(self.promotions, RATES, TAX),
            dict(self.coupons),
            dict(self.products),
            dict(self.stock),
        )

    async def load_pricing(self, _db: Any, _now: int) -> tuple[Tables, dict[str, Coupon]]:
        self.calls.append("pricing")
        await asyncio.sleep(0)  # a real load waits on the database
        return Tables(self.promotions, RATES, TAX), dict(self.coupons)

    async def load_product(self, _db: Any, sku: str) -> tuple[ProductFacts, int] | None:
        self.calls.append(f"product:{sku}")
        return (self.products[sku], self.stock.get(sku, 0)) if sku in self.products else None

    async def load_products(self, _db: Any, skus: list[str]) -> dict[str, Any]:
        self.calls.append(f"products:{','.join(skus)}")
        return {s: (self.products[s], self.stock.get(s, 0)) for s in skus if s in self.products}

    async def load_coupon(self, _db: Any, code: str) -> Coupon | None:
        self.calls.append(f"coupon:{code}")
        return self.coupons.get(code)


def cart_view(*lines: tuple[str, int, int], coupon: str | None = None) -> CartView:
    view_lines = tuple(CartViewLine(s, s, q, p, p * q) for s, p, q in lines)
    return CartView("c1", 1, view_lines, sum(x.line_total for x in view_lines), coupon)


async def warm_state(store: FakeStore) -> CatalogState:
    state = CatalogState(db=None, store=store, clock=lambda: NOW)
    await state.warm()
    return state


async def test_warm_reads_come_from_memory_after_the_start_up_load():
    store = FakeStore()
    store.coupons["SAVE"] = coupon(code="SAVE", value=1_000)
    state = await warm_state(store)
    assert store.calls == ["catalog"]
    assert await state.product("A") == (facts("A"), 5)
    view = cart_view(("A", 1_000, 2), ("B", 2_000, 1), coupon="SAVE")
    lines = state.lines(view, await state.facts(["A", "B"]))
    priced = state.quote(lines, await state.coupon("SAVE"), "SAVE", None)
    assert isinstance(priced, Quote) and priced.discount_total == 400
    assert store.calls == ["catalog"]  # no load on the warm path


async def test_stock_follows_the_inventory_shards_events():
    store = FakeStore()
    state = CatalogState(db=None, store=store, clock=lambda: NOW)
    # An event seen before the start-up load finished is newer than the written-behind row.
    state.on_event(make_event(INVENTORY_CHANGED, "A", {"sku": "A", "available": 1}, 1))
    await state.warm()
    assert (await state.product("A"))[1] == 1
    state.on_event(make_event(INVENTORY_CHANGED, "B", {"sku": "B", "available": 7}, 2))
    assert (await state.product("B"))[1] == 7
    assert store.calls == ["catalog"]


async def test_pricing_changed_reloads_pricing_in_the_background():
    store = FakeStore()
    state = await warm_state(store)
    store.promotions = (promo("P", value=5_000),)
    state.on_event(make_event(PRICING_CHANGED, "P", {"what": "promotion"}, 1))
    assert state.tables.promotions == ()  # not applied on the caller's stack
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [p.id for p in state.tables.promotions] == ["P"]
    assert store.calls == ["catalog", "pricing"]


async def test_overlapping_reloads_share_one_load():
    store = FakeStore()
    state = await warm_state(store)
    await asyncio.gather(*(state.reload_pricing() for _ in range(5)))
    assert store.calls.count("pricing") <= 2


async def test_a_gap_in_the_events_reloads_pricing():
    store = FakeStore()
    state = await warm_state(store)
    state.on_gap()
    for _ in range(3):
        await asyncio.sleep(0)
    assert store.calls == ["catalog", "pricing"]


async def test_cold_misses_are_read_once_and_unknown_skus_briefly_remembered():
    store = FakeStore()
    state = await warm_state(store)
    store.products["C"] = facts("C")
    assert (await state.product("C"))[0].sku == "C"
    assert (await state.product("C"))[0].sku == "C"
    assert await state.product("NOPE") is None
    assert await state.product("NOPE") is None
    assert await state.facts(["A", "NOPE"]) == {"A": facts("A")}
    assert store.calls == ["catalog", "product:C", "product:NOPE"]


async def test_product_updated_drops_the_product_so_the_next_read_takes_the_new_facts():
    store = FakeStore()
    state = await warm_state(store)
    store.products["A"] = facts("A", price=1_500)
    state.on_event(make_event(PRODUCT_UPDATED, "A", {"sku": "A"}, 1))
    assert (await state.product("A"))[0].price_minor == 1_500
    assert store.calls == ["catalog", "product:A"]


async def test_a_coupon_created_after_start_up_is_read_once():
    store = FakeStore()
    state = await warm_state(store)
    store.coupons["LATE"] = coupon(code="LATE")
    assert (await state.coupon("late")).code == "LATE"
    assert (await state.coupon("LATE")).code == "LATE"
    assert store.calls == ["catalog", "coupon:LATE"]
