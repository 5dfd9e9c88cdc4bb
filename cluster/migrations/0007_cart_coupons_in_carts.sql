-- Spine v2: the coupon is part of the cart's state (its shard owns it). Each
-- ``cart_coupons`` row moves into its cart's document as ``coupon`` (a new
-- version, so a shard flushing an older copy cannot overwrite it), then the
-- table goes. A coupon of a cart with no document yet gets an empty cart.

UPDATE carts c
SET data = c.data || jsonb_build_object('coupon', cc.code),
    version = c.version + 1,
    updated_at = now()
FROM cart_coupons cc
WHERE cc.cart_id = c.cart_id;

INSERT INTO carts (cart_id, data, version)
SELECT cc.cart_id,
       jsonb_build_object('lines', '[]'::jsonb, 'updated_at_ms', 0, 'coupon', cc.code),
       1
FROM cart_coupons cc
WHERE NOT EXISTS (SELECT 1 FROM carts c WHERE c.cart_id = cc.cart_id);

DROP TABLE cart_coupons;
