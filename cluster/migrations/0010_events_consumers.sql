-- Events consumers (issue 11): mail to send, password reset tokens, the audit log.

-- Mail waiting to be sent, written in the same transaction as the consumer's
-- processed-event id (or the password-reset token). A sender claims one row at a
-- time (FOR UPDATE SKIP LOCKED), hands it to SMTP and marks it sent in that
-- transaction. dedupe_key makes queueing the same mail twice a no-op.
CREATE TABLE mail_outbox (
    mail_id          bigserial PRIMARY KEY,
    dedupe_key       text NOT NULL UNIQUE,
    kind             text NOT NULL,
    user_id          text,
    to_addr          text NOT NULL,
    message          text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    sent_at          timestamptz,
    dead_at          timestamptz
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at, mail_id)
    WHERE sent_at IS NULL AND dead_at IS NULL;
CREATE INDEX mail_outbox_user ON mail_outbox (user_id);

-- Single-use password reset tokens; only a SHA-256 of the token is stored.
CREATE TABLE password_resets (
    token_hash  text PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX password_resets_user ON password_resets (user_id);

-- The audit log: append-only, each record holding the hash of the one before:
-- hash = sha256(prev_hash || E'\n' || audit_canonical(record)), the canonical
-- form being jsonb's own deterministic text of a JSON array of the fields.
-- event_id dedupes records fed from events. UPDATE and DELETE are refused by a
-- trigger; a superuser can still bypass it, which is what `agora audit verify`
-- detects.
CREATE TABLE audit_log (
    seq         bigint PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    at          timestamptz NOT NULL,
    actor       text,
    action      text NOT NULL,
    target      text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    prev_hash   text NOT NULL,
    hash        text NOT NULL
);
CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX audit_log_at ON audit_log (at, seq);

CREATE FUNCTION audit_canonical(
    seq bigint, event_id uuid, at timestamptz, actor text, action text, target text,
    details jsonb
) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_array(
        seq, event_id::text, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        actor, action, target, details
    )::text
$$;

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Operator-registered webhooks and their delivery log. The secret signs each
-- delivery (HMAC-SHA256), so it is kept as given; it is never returned by the API.
CREATE TABLE IF NOT EXISTS webhooks (
    webhook_id  text PRIMARY KEY,
    url         text NOT NULL,
    events      text[] NOT NULL,
    secret      text NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

-- One row per (webhook, event), written in the transaction of the consumer's
-- processed id. status: pending -> delivered, or dead after retries for 24 h.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    delivery_id      bigserial PRIMARY KEY,
    webhook_id       text NOT NULL REFERENCES webhooks (webhook_id),
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    body             text NOT NULL,
    status           text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    last_status      integer,
    last_error       text,
    delivered_at     timestamptz,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_log
    ON webhook_deliveries (webhook_id, delivery_id DESC);
