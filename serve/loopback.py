"""One-machine runs: Serve replicas' inter-deployment gRPC server listens on loopback.

Ray 2.60 binds that server to ``[::]:0`` (every interface, IPv4 included) in
``ray.serve._private.replica``, with no setting to change it, while every other Ray
port follows the node IP (127.0.0.1 when ``AGORA_RAY_LOOPBACK_ONLY``, see
cluster/infra.ray_env). ``apply()`` runs when a replica process imports our
``serve`` package, after Ray's replica module is loaded and before the replica
starts that server: it wraps ``add_port_to_grpc_server`` so a wildcard address
becomes ``127.0.0.1`` (callers reach replicas at the node IP, 127.0.0.1 here).
Outside a replica process, or with the setting off (multi-node), it does nothing.
tests/integration/test_edges_hardening.py fails if a Ray upgrade makes it stale.
"""

import sys
from typing import Any

from cluster.settings import get_settings

_WILDCARDS = ("[::]:", "0.0.0.0:")


def loopback_address(address: str) -> str:
    """``[::]:0`` -> ``127.0.0.1:0``; any other address unchanged."""
    for wildcard in _WILDCARDS:
        if address.startswith(wildcard):
            return "127.0.0.1:" + address[len(wildcard) :]
    return address


def apply() -> bool:
    """Patch the replica module of this process if there is one; returns whether it did."""
    replica: Any = sys.modules.get("ray.serve._private.replica")
    if replica is None or not get_settings().ray_loopback_only:
        return False
    original = replica.add_port_to_grpc_server
    if getattr(original, "agora_loopback", False):
        return True

    def add_port_on_loopback(server: Any, address: str) -> Any:
        return original(server, loopback_address(address))

    add_port_on_loopback.agora_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port_on_loopback
    return True
