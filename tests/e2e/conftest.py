"""E2E fixtures: one HTTP client per test module against the running Serve app."""

import httpx
import pytest


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client
