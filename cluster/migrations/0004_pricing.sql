-- Pricing: promotions, coupons (and their uses by orders), the coupon each cart
-- holds, shipping rates, tax rules, and product weights for shipping.
--
-- Rules are read by the API replicas (serve/pricing_service.py) and priced by
-- the pure engine in actors/pricing.py. Money is integer centavos (BRL).

-- Promotions and coupons keep the engine's admin-input form in ``data``
-- (validate_promotion / validate_coupon accept it back; times in epoch seconds).
CREATE TABLE promotions (
    id          text PRIMARY KEY,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE coupons (
    code        text PRIMARY KEY CHECK (code = upper(code)),
    data        jsonb NOT NULL,
    uses_total  integer NOT NULL DEFAULT 0 CHECK (uses_total >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per order that used a coupon (written by checkout, in the order's
-- transaction, together with ``coupons.uses_total``).
CREATE TABLE coupon_uses (
    code      text NOT NULL REFERENCES coupons (code),
    user_id   text,
    order_id  text NOT NULL,
    used_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (code, order_id)
);
CREATE INDEX coupon_uses_by_user ON coupon_uses (code, user_id) WHERE user_id IS NOT NULL;

-- The coupon a cart holds (anonymous carts by their hashed cart id, users by
-- ``user:<id>``). Re-checked on every cart render; checkout consumes it.
CREATE TABLE cart_coupons (
    cart_id     text PRIMARY KEY,
    code        text NOT NULL REFERENCES coupons (code) ON DELETE CASCADE,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- Shipping: the rate for (method, state) wins over (method, '*').
-- Cost = base + per_kg * ceil(weight in kg); free from ``free_over`` (after
-- discounts) when set.
CREATE TABLE shipping_rates (
    method     text NOT NULL CHECK (method IN ('standard', 'express')),
    region     text NOT NULL CHECK (region = '*' OR region ~ '^[A-Z]{2}$'),
    base       bigint NOT NULL CHECK (base >= 0),
    per_kg     bigint NOT NULL CHECK (per_kg >= 0),
    free_over  bigint CHECK (free_over >= 0),
    days       integer NOT NULL CHECK (days >= 0),
    PRIMARY KEY (method, region)
);

INSERT INTO shipping_rates (method, region, base, per_kg, free_over, days) VALUES
    ('standard', '*',  1990, 500, 29900, 7),
    ('express',  '*',  3990, 900, NULL,  2),
    ('standard', 'SP', 1290, 300, 19900, 3),
    ('express',  'SP', 2490, 600, NULL,  1),
    ('standard', 'RJ', 1490, 400, 24900, 4),
    ('express',  'RJ', 2990, 700, NULL,  2),
    ('standard', 'MG', 1490, 400, 24900, 4),
    ('express',  'MG', 2990, 700, NULL,  2);

-- Tax: the first of (state, category), (state, '*'), ('*', category), ('*', '*').
-- Brazilian consumer prices already include taxes (ICMS, PIS/COFINS), so the
-- default table adds nothing: one rule, 0 bp. Operators who sell with
-- tax-exclusive prices configure rates here.
CREATE TABLE tax_rules (
    region    text NOT NULL CHECK (region = '*' OR region ~ '^[A-Z]{2}$'),
    category  text NOT NULL,
    rate_bp   integer NOT NULL CHECK (rate_bp BETWEEN 0 AND 10000),
    PRIMARY KEY (region, category)
);

INSERT INTO tax_rules (region, category, rate_bp) VALUES ('*', '*', 0);

-- Product weights (grams per unit) for shipping. A product inserted without a
-- weight gets its category's typical weight (also what existing rows get here),
-- so the demo seeder, which runs after the migrations, needs no change.
CREATE FUNCTION product_default_weight_g(category text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE category
        WHEN 'books'        THEN 400
        WHEN 'electronics'  THEN 1500
        WHEN 'clothing'     THEN 350
        WHEN 'shoes'        THEN 900
        WHEN 'home-kitchen' THEN 1800
        WHEN 'sports'       THEN 1200
        WHEN 'toys'         THEN 600
        WHEN 'beauty'       THEN 250
        WHEN 'grocery'      THEN 1000
        WHEN 'garden'       THEN 2500
        WHEN 'automotive'   THEN 2000
        WHEN 'pets'         THEN 2000
        ELSE 500
    END
$$;

ALTER TABLE products ADD COLUMN weight_g integer CHECK (weight_g >= 0);
UPDATE products SET weight_g = product_default_weight_g(category);
ALTER TABLE products ALTER COLUMN weight_g SET NOT NULL;

CREATE FUNCTION products_default_weight() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.weight_g IS NULL THEN
        NEW.weight_g := product_default_weight_g(NEW.category);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER products_default_weight BEFORE INSERT ON products
    FOR EACH ROW EXECUTE FUNCTION products_default_weight();
