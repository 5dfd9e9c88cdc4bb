-- Catalog search and reviews (issue 10): retired products, reviews, moderation.

-- A retired product leaves search and lists; orders keep referring to it.
ALTER TABLE products ADD COLUMN retired_at timestamptz;

CREATE TABLE reviews (
    review_id          text PRIMARY KEY,
    sku                text NOT NULL REFERENCES products (sku),
    user_id            text,               -- NULL once the author is erased
    author_name        text NOT NULL DEFAULT '',
    rating             smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    title              text NOT NULL,
    body               text NOT NULL,
    verified_purchase  boolean NOT NULL DEFAULT false,
    helpful            integer NOT NULL DEFAULT 0 CHECK (helpful >= 0),
    hidden_at          timestamptz,
    hidden_reason      text,
    hidden_by          text,
    created_at         timestamptz NOT NULL DEFAULT now()
);
-- One review per shopper and product (erased authors' rows keep no user id).
CREATE UNIQUE INDEX reviews_one_per_shopper ON reviews (sku, user_id) WHERE user_id IS NOT NULL;
CREATE INDEX reviews_by_product ON reviews (sku, created_at DESC, review_id DESC);
CREATE INDEX reviews_by_author ON reviews (user_id) WHERE user_id IS NOT NULL;
