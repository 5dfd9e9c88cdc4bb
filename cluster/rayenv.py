"""Points Ray at this checkout's head when imported: import it before anything imports Ray.

Ray reads its auth mode and token path (and Serve its proxy switches) once,
when it is first imported, so they must be in the environment before. The
``agora`` command line imports this module first among ours
(``from cluster import rayenv`` sorts before every other ``cluster.*`` import,
and nothing imported above it imports Ray); ``tests/conftest.py`` does the same
by hand. Other processes (Ray workers, Serve replicas) inherit the environment.
"""

from __future__ import annotations

import os

from cluster import infra
from cluster.settings import get_settings


def apply() -> None:
    """Make the var/ directories and export Ray's environment for this checkout."""
    settings = get_settings()
    infra.ensure_dirs(settings)
    os.environ.update(infra.ray_env(settings))


apply()
