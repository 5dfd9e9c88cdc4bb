-- Inventory shards own stock from here on: reservations (with their TTL) and
-- the ids of recently committed/released reservations (idempotency) live in
-- ``data``; on_hand and reserved stay columns for catalog reads.
ALTER TABLE inventory ADD COLUMN data jsonb NOT NULL DEFAULT '{}'::jsonb;
