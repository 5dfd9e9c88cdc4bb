"""Pricing: the pure quote of a cart (promotions, one coupon, shipping, tax) in BRL centavos.

Everything here is a function of its arguments: no I/O, no Ray, no clock (``now``,
in epoch seconds, is passed in), so the same inputs always give the same
``Quote``. Inputs and outputs are frozen values. A refusal (a bad coupon, an
unknown shipping method, bad admin input) is a ``Rejected`` value with a stable
``code``; an exception means a bug. ``quote`` trusts promotions and coupons to
have passed ``validate_promotion`` / ``validate_coupon``.

Money and rounding
  * Every amount is an ``int`` of centavos (minor units); there are no floats.
  * There is one rounding rule, ``pct(amount, bp)``: a percentage in basis
    points (10000 bp = 100%) is ``(amount * bp + 5000) // 10000``, so half a
    centavo rounds up (1 centavo at 50% is 1; 5 at 10% is 1; 4 at 10% is 0;
    15 at 10% is 2). Promotions, tiers, coupons and tax all go through it.
  * Spreading the coupon discount over the lines is a split, not a rounding:
    each line gets its proportional share by line total, the centavos left
    over go one each to the lines with the largest remainders (earlier line on
    a tie), and the shares always add up to the coupon discount exactly.

Lines
  * ``unit_price`` >= 0, ``quantity`` >= 1 and ``weight_g`` (per unit) >= 0,
    else ``invalid-line``. ``line_subtotal = unit_price * quantity``.

Promotions (automatic, computed per line)
  1. A promotion counts only inside its window: ``starts_at <= now < ends_at``
     (the end is exclusive).
  2. Target ``sku`` matches the line whose sku equals ``target_value``;
     ``category`` the lines of that category; ``cart`` every line.
  3. Kinds:
     * ``percentage``: ``value`` basis points of the amount.
     * ``fixed``: ``value`` centavos off *per unit* (``value * quantity`` for
       the line), whatever the target.
     * ``buy_x_pay_y``: for every ``buy`` units of the line, ``buy - pay`` are
       free: ``(quantity // buy) * (buy - pay) * unit_price``. All units of a
       line share one price, so "the cheapest" is any of them; units are never
       pooled across lines.
     * ``tier``: ``tiers`` are ``(min_quantity, bp)``; the highest tier whose
       ``min_quantity`` the line's quantity reaches gives its percentage; below
       the lowest tier nothing. Quantity is the line's, never pooled.
  4. Of the matching non-stackable promotions, only the one with the largest
     discount on the line subtotal applies (tie: higher ``priority``, then
     smaller ``id``). The stackable ones then apply on top, in ``priority``
     order (higher first, tie: smaller ``id``), each on the amount still
     remaining: percentage kinds take their share of that remainder, amount
     kinds (``fixed``, ``buy_x_pay_y``) their face value.
  5. Each discount is capped at what remains of the line, so a line's
     discounts never exceed its subtotal and ``line_total`` is never negative.
     A discount of 0 is not listed.

Coupon (at most one, applied to the cart after the line promotions)
  * Codes are case-insensitive: ``coupon_code`` is stripped and upper-cased
    and looked up in ``coupons`` under that key (``validate_coupon`` stores
    codes so).
  * Checks, in this order; the first that fails is the rejection:
    ``coupon-unknown``; ``coupon-not-started`` (``now < starts_at``);
    ``coupon-expired`` (``now >= ends_at``); ``coupon-exhausted``
    (``uses_total >= max_uses_total``); ``coupon-login-required`` (a per-user
    limit and no ``user_id``, since an anonymous use cannot be counted);
    ``coupon-user-limit`` (``uses_by_user[user_id] >= max_uses_per_user``);
    ``coupon-min-subtotal`` (subtotal after line promotions < ``min_subtotal``);
    ``coupon-not-stackable`` (the coupon is not stackable and a line promotion
    took something off). A limit of ``None`` means unlimited.
  * ``percentage``: ``pct(remaining, value)`` where ``remaining`` is the
    subtotal after line promotions; ``fixed``: ``value`` centavos off *per
    order*, never more than ``remaining``.
  * The coupon discount is listed in ``Quote.discounts`` and split over the
    lines (``QuoteLine.coupon_share``, see above); the share lowers the line's
    tax base.

Shipping
  * No ``shipping_method``: no shipping (``Quote.shipping`` is ``None``).
  * Checks, in this order: a method no rate has is ``shipping-method-unknown``;
    no destination is ``shipping-destination-required``; a known method with
    no rate for the destination state and no ``"*"`` rate is
    ``shipping-region-unavailable``.
  * The rate is the first for (method, destination state), else the first for
    (method, ``"*"``). The state is stripped and upper-cased; the country is
    not consulted.
  * Weight is ``sum(weight_g * quantity)``, rounded *up* to whole kilograms
    (1 g is 1 kg; 0 g is 0 kg). Cost is ``base + per_kg * kg``.
  * Free (0) when the discounted subtotal (``subtotal - discount_total``, the
    coupon included) is ``>= free_over``; ``free_over`` ``None`` never frees.

Tax
  * Per line, the rate of the first rule for (state, category), else
    (state, ``"*"``), else (``"*"``, category), else (``"*"``, ``"*"``); no
    rule means 0. Without a destination only ``"*"`` regions match.
  * ``tax = pct(line_total - coupon_share, rate_bp)``; ``Quote.tax`` is the sum.
  * Shipping is not taxed.

Total
  * ``discount_total`` = line discounts + coupon discount, and
    ``total = subtotal - discount_total + shipping + tax``. Every discount is
    capped at what remains, so ``0 <= discount_total <= subtotal`` and the
    total is never negative.

Admin input
  * ``validate_promotion`` and ``validate_coupon`` turn a JSON-like mapping
    into a value, or an ``invalid-promotion`` / ``invalid-coupon`` rejection
    listing every bad field: unknown fields, wrong types (booleans and floats
    are not integers), unknown kinds or targets, a missing or superfluous
    ``target_value``, fields the kind does not use, non-positive values,
    percentages above 10000 bp, ``buy <= pay`` or ``pay < 1``, empty or
    repeated tiers, ``ends_at <= starts_at``, negative limits. Usage counts
    are kept by the system and are not admin input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from actors.messages import FieldError, Rejected

PromotionKind = Literal["percentage", "fixed", "buy_x_pay_y", "tier"]
Target = Literal["sku", "category", "cart"]
CouponKind = Literal["percentage", "fixed"]
ShippingMethod = Literal["standard", "express"]

ANY = "*"
FULL_BP = 10_000
_CODE = re.compile(r"[A-Z0-9_-]{1,64}")
# Times are epoch seconds up to 9999-12-31T23:59:59Z: beyond it no date type
# (Python's, PostgreSQL's) can show them, and a saved one would break every read.
MAX_TIME = 253_402_300_799
# PostgreSQL refuses NUL in text and jsonb; no other C0 control (but tab and
# newline) or lone surrogate belongs in a label either.
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


def pct(amount: int, bp: int) -> int:
    """``bp`` basis points of ``amount``, half a centavo rounding up."""
    return (amount * bp + FULL_BP // 2) // FULL_BP


@dataclass(frozen=True)
class Line:
    sku: str
    category: str
    unit_price: int
    quantity: int
    weight_g: int


@dataclass(frozen=True, kw_only=True)
class Promotion:
    id: str
    kind: PromotionKind
    target: Target
    target_value: str | None = None
    value: int = 0
    buy: int = 0
    pay: int = 0
    tiers: tuple[tuple[int, int], ...] = ()
    starts_at: int
    ends_at: int
    stackable: bool = False
    priority: int = 0
    label: str = ""


@dataclass(frozen=True, kw_only=True)
class Coupon:
    code: str
    kind: CouponKind
    value: int
    starts_at: int
    ends_at: int
    min_subtotal: int = 0
    max_uses_total: int | None = None
    max_uses_per_user: int | None = None
    uses_total: int = 0
    uses_by_user: Mapping[str, int] = field(default_factory=dict)
    stackable: bool = False
    label: str = ""


@dataclass(frozen=True)
class ShippingRate:
    method: ShippingMethod
    region: str
    base: int
    per_kg: int
    free_over: int | None
    days: int


@dataclass(frozen=True)
class TaxRule:
    region: str
    category: str
    rate_bp: int


@dataclass(frozen=True)
class Destination:
    country: str
    state: str
    postal_code: str


@dataclass(frozen=True)
class AppliedDiscount:
    id: str
    label: str
    amount: int


@dataclass(frozen=True)
class QuoteLine:
    sku: str
    category: str
    unit_price: int
    quantity: int
    line_subtotal: int
    discounts: tuple[AppliedDiscount, ...]
    line_total: int
    coupon_share: int
    tax_rate_bp: int
    tax: int


@dataclass(frozen=True)
class ShippingQuote:
    method: str
    amount: int
    days: int


@dataclass(frozen=True)
class Quote:
    lines: tuple[QuoteLine, ...]
    subtotal: int
    discounts: tuple[AppliedDiscount, ...]
    discount_total: int
    shipping: ShippingQuote | None
    tax: int
    total: int
    coupon: str | None


def quote(
    lines: Sequence[Line],
    promotions: Sequence[Promotion],
    coupon_code: str | None,
    coupons: Mapping[str, Coupon],
    user_id: str | None,
    shipping_method: str | None,
    destination: Destination | None,
    rates: Sequence[ShippingRate],
    tax_rules: Sequence[TaxRule],
    now: int,
) -> Quote | Rejected:
    """Price ``lines`` at ``now`` (epoch seconds); see the module docstring for every rule."""
    for line in lines:
        if line.quantity < 1 or line.unit_price < 0 or line.weight_g < 0:
            return Rejected("invalid-line", f"{line.sku}: bad quantity, price or weight")
    active = [p for p in promotions if p.starts_at <= now < p.ends_at]
    priced = [_line_discounts(line, active) for line in lines]
    subtotals = [line.unit_price * line.quantity for line in lines]
    line_totals = [
        sub - sum(d.amount for d in ds) for sub, ds in zip(subtotals, priced, strict=True)
    ]
    subtotal = sum(subtotals)
    remaining = sum(line_totals)

    coupon: Coupon | None = None
    coupon_discount = 0
    if coupon_code is not None:
        checked = _check_coupon(coupon_code, coupons, user_id, remaining, remaining < subtotal, now)
        if isinstance(checked, Rejected):
            return checked
        coupon = checked
        coupon_discount = _coupon_discount(coupon, remaining)
    shares = allocate(coupon_discount, line_totals)
    discount_total = subtotal - remaining + coupon_discount

    shipping: ShippingQuote | None = None
    if shipping_method is not None:
        shipped = _shipping(lines, shipping_method, destination, rates, subtotal - discount_total)
        if isinstance(shipped, Rejected):
            return shipped
        shipping = shipped

    region = destination.state.strip().upper() if destination is not None else None
    quoted: list[QuoteLine] = []
    rows = zip(lines, subtotals, priced, line_totals, shares, strict=True)
    for line, line_subtotal, ds, line_total, share in rows:
        rate_bp = _tax_rate(tax_rules, region, line.category)
        quoted.append(
            QuoteLine(
                sku=line.sku,
                category=line.category,
                unit_price=line.unit_price,
                quantity=line.quantity,
                line_subtotal=line_subtotal,
                discounts=ds,
                line_total=line_total,
                coupon_share=share,
                tax_rate_bp=rate_bp,
                tax=pct(line_total - share, rate_bp),
            )
        )
    tax = sum(q.tax for q in quoted)
    shipping_amount = shipping.amount if shipping is not None else 0
    cart_discounts = (
        (AppliedDiscount(coupon.code, coupon.label or f"coupon {coupon.code}", coupon_discount),)
        if coupon is not None and coupon_discount > 0
        else ()
    )
    return Quote(
        lines=tuple(quoted),
        subtotal=subtotal,
        discounts=cart_discounts,
        discount_total=discount_total,
        shipping=shipping,
        tax=tax,
        total=subtotal - discount_total + shipping_amount + tax,
        coupon=coupon.code if coupon is not None else None,
    )


def allocate(amount: int, weights: Sequence[int]) -> list[int]:
    """Split ``amount`` over ``weights`` proportionally; the parts add up to ``amount`` exactly."""
    total = sum(weights)
    if total <= 0:
        return [0] * len(weights)
    parts = [amount * w // total for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(amount * weights[i] % total), i))
    for i in by_remainder[: amount - sum(parts)]:
        parts[i] += 1
    return parts


def _matches(promotion: Promotion, line: Line) -> bool:
    if promotion.target == "cart":
        return True
    if promotion.target == "sku":
        return line.sku == promotion.target_value
    return line.category == promotion.target_value


def _raw_discount(promotion: Promotion, line: Line, remaining: int) -> int:
    if promotion.kind == "percentage":
        return pct(remaining, promotion.value)
    if promotion.kind == "fixed":
        return promotion.value * line.quantity
    if promotion.kind == "buy_x_pay_y":
        return (line.quantity // promotion.buy) * (promotion.buy - promotion.pay) * line.unit_price
    reached = [bp for min_quantity, bp in promotion.tiers if line.quantity >= min_quantity]
    return pct(remaining, reached[-1]) if reached else 0


def _discount(promotion: Promotion, line: Line, remaining: int) -> int:
    return max(0, min(_raw_discount(promotion, line, remaining), remaining))


def _label(promotion: Promotion) -> str:
    if promotion.label:
        return promotion.label
    if promotion.kind == "percentage":
        return f"{_bp_text(promotion.value)} off"
    if promotion.kind == "fixed":
        return f"{_money_text(promotion.value)} off per unit"
    if promotion.kind == "buy_x_pay_y":
        return f"buy {promotion.buy} pay {promotion.pay}"
    return "quantity discount"


def _bp_text(bp: int) -> str:
    whole, rest = divmod(bp, 100)
    return f"{whole}%" if rest == 0 else f"{whole}.{rest:02d}".rstrip("0") + "%"


def _money_text(centavos: int) -> str:
    reais, rest = divmod(centavos, 100)
    return f"R$ {reais},{rest:02d}"


def _line_discounts(line: Line, active: Sequence[Promotion]) -> tuple[AppliedDiscount, ...]:
    subtotal = line.unit_price * line.quantity
    matching = [p for p in active if _matches(p, line)]
    exclusive = [(_discount(p, line, subtotal), p) for p in matching if not p.stackable]
    chosen: list[Promotion] = []
    if exclusive:
        best = min(exclusive, key=lambda dp: (-dp[0], -dp[1].priority, dp[1].id))
        chosen.append(best[1])
    chosen += sorted((p for p in matching if p.stackable), key=lambda p: (-p.priority, p.id))
    applied: list[AppliedDiscount] = []
    remaining = subtotal
    for promotion in chosen:
        amount = _discount(promotion, line, remaining)
        if amount > 0:
            applied.append(AppliedDiscount(promotion.id, _label(promotion), amount))
            remaining -= amount
    return tuple(applied)


def _check_coupon(
    code: str,
    coupons: Mapping[str, Coupon],
    user_id: str | None,
    remaining: int,
    promoted: bool,
    now: int,
) -> Coupon | Rejected:
    key = code.strip().upper()
    coupon = coupons.get(key)
    if coupon is None:
        return Rejected("coupon-unknown", f"no coupon {key!r}")
    if now < coupon.starts_at:
        return Rejected("coupon-not-started", f"coupon {key} is not valid yet")
    if now >= coupon.ends_at:
        return Rejected("coupon-expired", f"coupon {key} has expired")
    if coupon.max_uses_total is not None and coupon.uses_total >= coupon.max_uses_total:
        return Rejected("coupon-exhausted", f"coupon {key} has been used up")
    if coupon.max_uses_per_user is not None:
        if user_id is None:
            return Rejected("coupon-login-required", f"log in to use coupon {key}")
        if coupon.uses_by_user.get(user_id, 0) >= coupon.max_uses_per_user:
            return Rejected("coupon-user-limit", f"you have already used coupon {key}")
    if remaining < coupon.min_subtotal:
        return Rejected(
            "coupon-min-subtotal",
            f"coupon {key} needs a subtotal of at least {_money_text(coupon.min_subtotal)}",
        )
    if promoted and not coupon.stackable:
        return Rejected(
            "coupon-not-stackable", f"coupon {key} cannot be combined with the promotions applied"
        )
    return coupon


def _coupon_discount(coupon: Coupon, remaining: int) -> int:
    raw = pct(remaining, coupon.value) if coupon.kind == "percentage" else coupon.value
    return max(0, min(raw, remaining))


def _shipping(
    lines: Sequence[Line],
    method: str,
    destination: Destination | None,
    rates: Sequence[ShippingRate],
    discounted_subtotal: int,
) -> ShippingQuote | Rejected:
    if not any(r.method == method for r in rates):
        return Rejected("shipping-method-unknown", f"no shipping method {method!r}")
    if destination is None:
        return Rejected("shipping-destination-required", "a destination is needed for shipping")
    state = destination.state.strip().upper()
    rate = next((r for r in rates if r.method == method and r.region == state), None) or next(
        (r for r in rates if r.method == method and r.region == ANY), None
    )
    if rate is None:
        return Rejected("shipping-region-unavailable", f"{method} shipping does not reach {state}")
    grams = sum(line.weight_g * line.quantity for line in lines)
    kilograms = -(-grams // 1000)
    free = rate.free_over is not None and discounted_subtotal >= rate.free_over
    amount = 0 if free else rate.base + rate.per_kg * kilograms
    return ShippingQuote(method=method, amount=amount, days=rate.days)


def _tax_rate(rules: Sequence[TaxRule], region: str | None, category: str) -> int:
    keys = [(region, category), (region, ANY)] if region is not None else []
    keys += [(ANY, category), (ANY, ANY)]
    for key in keys:
        rule = next((r for r in rules if (r.region, r.category) == key), None)
        if rule is not None:
            return rule.rate_bp
    return 0


class _Fields:
    """Reads a JSON-like mapping field by field, collecting every error."""

    def __init__(self, data: Mapping[str, Any], allowed: set[str]) -> None:
        self.data = data
        self.errors = [FieldError(k, "unknown field") for k in sorted(set(data) - allowed)]

    def bad(self, name: str, message: str) -> None:
        self.errors.append(FieldError(name, message))

    def rejected(self, code: str) -> Rejected:
        detail = "; ".join(f"{e.field}: {e.message}" for e in self.errors)
        return Rejected(code, detail, errors=tuple(self.errors))

    def text(self, name: str, *, required: bool = True) -> str:
        value = self.data.get(name)
        if value is None:
            if required:
                self.bad(name, "required")
            return ""
        if not isinstance(value, str) or not value.strip():
            self.bad(name, "must be a non-empty string")
            return ""
        if _UNSAFE.search(value):
            self.bad(name, "must not contain control characters")
            return ""
        return value.strip()

    def integer(
        self, name: str, *, minimum: int | None = 0, maximum: int | None = None
    ) -> int | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.bad(name, "must be an integer")
            return None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            self.bad(name, f"must be {bound}")
            return None
        return value

    def required_integer(
        self, name: str, *, minimum: int | None = 0, maximum: int | None = None
    ) -> int:
        if self.data.get(name) is None:
            self.bad(name, "required")
        return self.integer(name, minimum=minimum, maximum=maximum) or 0

    def flag(self, name: str) -> bool:
        value = self.data.get(name, False)
        if not isinstance(value, bool):
            self.bad(name, "must be true or false")
            return False
        return value

    def choice(self, name: str, options: tuple[str, ...]) -> str | None:
        value = self.data.get(name)
        if value not in options:
            self.bad(name, f"must be one of {', '.join(options)}")
            return None
        return cast(str, value)

    def unused(self, names: Sequence[str], why: str) -> None:
        for name in names:
            if self.data.get(name) is not None:
                self.bad(name, f"not used {why}")

    def window(self) -> tuple[int, int]:
        errors_before = len(self.errors)
        starts_at = self.required_integer("starts_at", maximum=MAX_TIME)
        ends_at = self.required_integer("ends_at", maximum=MAX_TIME)
        if len(self.errors) == errors_before and ends_at <= starts_at:
            self.bad("ends_at", "must be after starts_at")
        return starts_at, ends_at


def _tiers(fields: _Fields) -> tuple[tuple[int, int], ...]:
    raw = fields.data.get("tiers")
    if not isinstance(raw, list | tuple) or not raw:
        fields.bad("tiers", "must be a non-empty list of [min_quantity, basis_points]")
        return ()
    tiers: list[tuple[int, int]] = []
    for i, tier in enumerate(raw):
        ok = (
            isinstance(tier, list | tuple)
            and len(tier) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in tier)
            and tier[0] >= 1
            and 1 <= tier[1] <= FULL_BP
        )
        if not ok:
            fields.bad(f"tiers[{i}]", f"must be [min_quantity >= 1, basis points 1..{FULL_BP}]")
            continue
        tiers.append((tier[0], tier[1]))
    if len({q for q, _ in tiers}) != len(tiers):
        fields.bad("tiers", "min_quantity values must be distinct")
    return tuple(sorted(tiers))


def _kind_value(fields: _Fields, kind: str | None) -> int:
    if kind == "percentage":
        return fields.required_integer("value", minimum=1, maximum=FULL_BP)
    if kind == "fixed":
        return fields.required_integer("value", minimum=1)
    return 0


_PROMOTION_FIELDS = {
    "id",
    "kind",
    "target",
    "target_value",
    "value",
    "buy",
    "pay",
    "tiers",
    "starts_at",
    "ends_at",
    "stackable",
    "priority",
    "label",
}


def validate_promotion(data: Mapping[str, Any]) -> Promotion | Rejected:
    """Admin input to a ``Promotion``, or ``invalid-promotion`` listing every bad field."""
    f = _Fields(data, _PROMOTION_FIELDS)
    promotion_id = f.text("id")
    kind = f.choice("kind", get_args(PromotionKind))
    target = f.choice("target", get_args(Target))
    target_value = None
    if target == "cart":
        f.unused(["target_value"], "when target is cart")
    elif target is not None:
        target_value = f.text("target_value")
    value = _kind_value(f, kind)
    buy = pay = 0
    tiers: tuple[tuple[int, int], ...] = ()
    if kind == "buy_x_pay_y":
        buy = f.required_integer("buy", minimum=2)
        pay = f.required_integer("pay", minimum=1)
        if buy and pay and buy <= pay:
            f.bad("buy", "must be greater than pay")
    elif kind is not None:
        f.unused(["buy", "pay"], f"by kind {kind}")
    if kind == "tier":
        tiers = _tiers(f)
    elif kind is not None:
        f.unused(["tiers"], f"by kind {kind}")
    if kind in ("buy_x_pay_y", "tier"):
        f.unused(["value"], f"by kind {kind}")
    starts_at, ends_at = f.window()
    stackable = f.flag("stackable")
    priority = f.integer("priority", minimum=None) or 0
    label = f.text("label", required=False)
    if f.errors:
        return f.rejected("invalid-promotion")
    return Promotion(
        id=promotion_id,
        kind=cast(PromotionKind, kind),
        target=cast(Target, target),
        target_value=target_value,
        value=value,
        buy=buy,
        pay=pay,
        tiers=tiers,
        starts_at=starts_at,
        ends_at=ends_at,
        stackable=stackable,
        priority=priority,
        label=label,
    )


_COUPON_FIELDS = {
    "code",
    "kind",
    "value",
    "starts_at",
    "ends_at",
    "min_subtotal",
    "max_uses_total",
    "max_uses_per_user",
    "stackable",
    "label",
}


def validate_coupon(data: Mapping[str, Any]) -> Coupon | Rejected:
    """Admin input to a ``Coupon`` (code upper-cased), or ``invalid-coupon`` listing bad fields."""
    f = _Fields(data, _COUPON_FIELDS)
    code = f.text("code").upper()
    if code and not _CODE.fullmatch(code):
        f.bad("code", "must be 1 to 64 letters, digits, '-' or '_'")
    kind = f.choice("kind", get_args(CouponKind))
    value = _kind_value(f, kind)
    starts_at, ends_at = f.window()
    min_subtotal = f.integer("min_subtotal") or 0
    max_uses_total = f.integer("max_uses_total", minimum=1)
    max_uses_per_user = f.integer("max_uses_per_user", minimum=1)
    stackable = f.flag("stackable")
    label = f.text("label", required=False)
    if f.errors:
        return f.rejected("invalid-coupon")
    return Coupon(
        code=code,
        kind=cast(CouponKind, kind),
        value=value,
        starts_at=starts_at,
        ends_at=ends_at,
        min_subtotal=min_subtotal,
        max_uses_total=max_uses_total,
        max_uses_per_user=max_uses_per_user,
        stackable=stackable,
        label=label,
    )
