-- Orders are written by OrderShard actors (the checkout saga): one document per
-- order, with the columns needed to list a user's orders.
CREATE TABLE orders (
    order_id    text PRIMARY KEY,
    user_id     text NOT NULL,
    status      text NOT NULL,
    step        text NOT NULL,
    data        jsonb NOT NULL,
    version     bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_user_created ON orders (user_id, created_at DESC, order_id DESC);
CREATE INDEX orders_unfinished ON orders (step) WHERE step NOT IN ('done', 'review');
