"""Authentication at the edge: who is calling (``principal``), access and refresh tokens,
TOTP, and the login flows the auth routers share (``flows``).

Password hashing and the signing key ring are identity-domain primitives the
command line needs too: they live in ``actors.session.passwords`` and
``actors.session.keyring``; the key ring's storage in ``cluster.adapters.signing_keys``.
"""
