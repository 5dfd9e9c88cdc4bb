-- Payments and refunds made through the payment gateway (serve/payments/).
--
-- ``key`` is the caller's idempotency key (the order saga's id for a charge):
-- the row is written as 'pending' before the provider is called, the
-- provider's id is recorded as soon as the provider has one, and the final
-- outcome replaces 'pending'. A 'pending' row is a call that did not finish;
-- the next call with the same key resumes it at the provider instead of
-- charging again. Card data never reaches us: there is no column for it.
-- Money is integer minor units (centavos for BRL).
CREATE TABLE payments (
    key           text PRIMARY KEY,
    provider      text NOT NULL,
    provider_id   text,
    status        text NOT NULL CHECK (status IN ('pending', 'succeeded', 'declined')),
    amount        bigint NOT NULL CHECK (amount > 0),
    currency      char(3) NOT NULL CHECK (currency = upper(currency)),
    decline_code  text,
    message       text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX payments_by_provider_id ON payments (provider, provider_id)
    WHERE provider_id IS NOT NULL;
CREATE INDEX payments_pending ON payments (updated_at) WHERE status = 'pending';

CREATE TABLE refunds (
    key          text PRIMARY KEY,
    payment_key  text NOT NULL REFERENCES payments (key),
    provider_id  text,
    status       text NOT NULL CHECK (status IN ('pending', 'succeeded')),
    amount       bigint NOT NULL CHECK (amount > 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_by_payment ON refunds (payment_key);
