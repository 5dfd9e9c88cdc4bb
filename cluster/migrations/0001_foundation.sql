-- Foundation: catalog, stock, carts, the outbox and consumer bookkeeping.

CREATE TABLE products (
    sku          text PRIMARY KEY,
    name         text NOT NULL,
    description  text NOT NULL,
    category     text NOT NULL,
    price_minor  bigint NOT NULL CHECK (price_minor > 0),
    currency     char(3) NOT NULL DEFAULT 'BRL',
    attributes   jsonb NOT NULL DEFAULT '{}'::jsonb,
    images       jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_category_sku ON products (category, sku);
CREATE INDEX products_price ON products (price_minor);

-- Stock is owned by inventory shards from the commerce-core issue on; the
-- foundation seeds it so catalog pages and cart lines can say "in stock".
CREATE TABLE inventory (
    sku         text PRIMARY KEY REFERENCES products (sku),
    on_hand     integer NOT NULL CHECK (on_hand >= 0),
    reserved    integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    version     bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (reserved <= on_hand)
);

-- Carts are written behind by CartShard actors: one JSON document per cart,
-- guarded by a version so an older flush never overwrites a newer one.
CREATE TABLE carts (
    cart_id     text PRIMARY KEY,
    data        jsonb NOT NULL,
    version     bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Transactional outbox: rows are inserted in the same transaction as the state
-- change that produced them and published to Pulsar by the outbox relay.
CREATE TABLE outbox (
    seq         bigserial PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    topic       text NOT NULL,
    key         text NOT NULL,
    type        text NOT NULL,
    envelope    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;

-- Idempotent consumers record the event ids they applied, in the same
-- transaction as their effect.
CREATE TABLE processed_events (
    consumer      text NOT NULL,
    event_id      uuid NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
