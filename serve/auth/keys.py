"""The signing key ring's storage, as the API replica's bootstrap (``serve.runtime``) uses it.

The code lives in ``cluster.adapters.signing_keys``; this name stays until
``serve.runtime`` imports the adapter directly.
"""

from cluster.adapters.signing_keys import ensure_key, load, rotate

__all__ = ["ensure_key", "load", "rotate"]
