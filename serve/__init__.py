"""Agora's HTTP layer (Ray Serve deployments). In a Serve replica process, importing
this package first keeps the replica's own servers on loopback (serve.loopback)."""

from serve import loopback

loopback.apply()
