"""Cryptography of our own state: secrets sealed at rest (``secretbox``)."""
