-- Live rescaling (issue 12, `agora scale`): the durable ring of each shard kind.
-- No row: the kind runs the settings' count (AGORA_CART_SHARDS, ...), epoch 0.
-- `previous` is set while a rescale hands keys over from that many shards, and
-- cleared when the handoff has ended. Every shard loads its kind's row with its
-- pool; every directory follows newer epochs.

CREATE TABLE shard_rings (
    kind        text PRIMARY KEY,
    epoch       bigint NOT NULL CHECK (epoch > 0),
    shards      integer NOT NULL CHECK (shards > 0),
    previous    integer CHECK (previous > 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
