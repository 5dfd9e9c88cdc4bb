-- Ledger (issue 8): leaves of confirmed orders (and other anchored hashes), their
-- batches, Merkle paths and the anchoring transaction. See ledger/actor.py.

-- Where AnchorRegistry lives on each chain (deployed once, then remembered).
CREATE TABLE ledger_contracts (
    chain_id     bigint PRIMARY KEY,
    address      text NOT NULL,
    deploy_tx    bytea,
    deployed_at  timestamptz NOT NULL DEFAULT now()
);

-- One batch = one Merkle root = one anchor(batchId, root, count) transaction.
-- status: closed (root known, not sent) -> sending (nonce and signed tx recorded
-- BEFORE the send) -> anchored (receipt stored, confirmations reached).
CREATE TABLE ledger_batches (
    batch_id      bigint PRIMARY KEY,
    status        text NOT NULL CHECK (status IN ('closed', 'sending', 'anchored')),
    root          bytea NOT NULL,
    leaf_count    integer NOT NULL CHECK (leaf_count > 0),
    chain_id      bigint,
    contract      text,
    nonce         bigint,
    tx_hash       bytea,
    raw_tx        bytea,
    block_number  bigint,
    block_hash    bytea,
    gas_used      bigint,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    closed_at     timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    anchored_at   timestamptz
);
CREATE SEQUENCE ledger_batch_ids AS bigint START 1 OWNED BY ledger_batches.batch_id;
CREATE INDEX ledger_batches_unanchored ON ledger_batches (batch_id) WHERE status <> 'anchored';

-- A leaf, recorded before its event is acknowledged; (kind, key) once only.
-- batch_id/position/path are set when its batch closes (the tree is kept as the paths).
CREATE TABLE ledger_leaves (
    leaf_id      bigserial PRIMARY KEY,
    kind         text NOT NULL,
    key          text NOT NULL,
    leaf_data    text NOT NULL,
    leaf         bytea NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    batch_id     bigint REFERENCES ledger_batches (batch_id),
    position     integer,
    path         bytea,  -- the siblings bottom-up, 32 bytes each, concatenated
    UNIQUE (kind, key)
);
CREATE INDEX ledger_leaves_unbatched ON ledger_leaves (leaf_id) WHERE batch_id IS NULL;
CREATE INDEX ledger_leaves_batch ON ledger_leaves (batch_id, position);
