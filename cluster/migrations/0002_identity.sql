-- Identity: accounts, signing keys, MFA recovery codes, sessions (written behind
-- by SessionShard actors: one document per user holding their sessions).

CREATE TABLE users (
    user_id             text PRIMARY KEY,
    email               text NOT NULL UNIQUE,
    name                text NOT NULL,
    password_hash       text NOT NULL,
    roles               text[] NOT NULL DEFAULT ARRAY['shopper'],
    mfa_secret          text,
    mfa_pending_secret  text,
    mfa_last_step       bigint,
    preferences         jsonb NOT NULL DEFAULT '{}'::jsonb,
    consents            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    erased_at           timestamptz
);

CREATE TABLE recovery_codes (
    user_id    text NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    code_hash  text NOT NULL,
    used_at    timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE signing_keys (
    kid          text PRIMARY KEY,
    private_pem  text NOT NULL,
    public_jwk   jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz
);

CREATE TABLE user_sessions (
    user_id     text PRIMARY KEY,
    data        jsonb NOT NULL,
    version     bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
