"""Authentication primitives: password hashing and policy, access and refresh tokens, TOTP.

Every module here is pure: no Ray, no network, no database, and time is passed in.
The HTTP layer and the account actors wire them to storage.
"""
