"""Unit tier: Ray is forbidden here; any attempt to use it fails the test."""

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    import ray

    def forbidden(*_args, **_kwargs):
        raise AssertionError("unit tests must not use Ray")

    monkeypatch.setattr(ray, "init", forbidden)
    monkeypatch.setattr(ray, "get", forbidden)
