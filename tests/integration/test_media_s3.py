"""The S3 media store against a real S3-compatible server (moto's standalone server,
started here on a free port), and ``GET /media/{name}`` served from it.

Needs no Agora system: only the moto_server process this module starts and stops.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import boto3
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from cluster.adapters import media
from cluster.adapters.object_store import IMMUTABLE, S3MediaStore, open_store
from cluster.settings import Settings
from serve import problems, runtime
from serve.routers import media as media_router
from tests.s3 import moto_server

pytestmark = pytest.mark.integration

BUCKET = "agora-media-test"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log", BUCKET) as url:
        yield url


@pytest.fixture
def store(endpoint) -> S3MediaStore:
    made = open_store(f"s3://{BUCKET}/products?endpoint={endpoint}", Path("/nonexistent"))
    assert isinstance(made, S3MediaStore)
    return made


def _upload(colour=(20, 90, 160)) -> media.Processed:
    out = io.BytesIO()
    Image.new("RGB", (640, 480), colour).save(out, "JPEG")
    return media.process(out.getvalue(), max_bytes=10 << 20, max_pixels=40_000_000)


def test_put_get_has_remove_round_trip(store, endpoint):
    made = _upload()
    created = store.put(made.files)
    assert sorted(created) == sorted(made.files)
    for name, data in made.files.items():
        assert store.has(name)
        assert store.get(name) == data
    assert set(made.files) <= store.names()
    # Stored under the prefix, with the type and cache headers a CDN would pass on.
    raw = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    name = next(n for n in made.files if n.endswith(".webp"))
    head = raw.head_object(Bucket=BUCKET, Key=f"products/{name}")
    assert head["ContentType"] == "image/webp"
    assert head["CacheControl"] == IMMUTABLE
    # The same upload again creates nothing, so its clean-up cannot delete the first one's files.
    assert store.put(made.files) == []
    store.remove(created)
    assert not any(store.has(n) for n in made.files)
    assert store.get(name) is None


def test_put_is_all_or_nothing(store):
    made = _upload((200, 10, 10))
    files = dict(made.files)
    files["../escape.jpg"] = b"x"  # not a media name: refused after the first files went in
    with pytest.raises(ValueError):
        store.put(files)
    assert not any(store.has(n) for n in made.files)


def test_names_we_do_not_issue_are_never_looked_up(store):
    assert store.get("../../etc/passwd") is None
    assert not store.has("nope.jpg")
    store.remove(["nope.jpg"])  # ignored, no call


def test_a_missing_bucket_is_an_error_not_a_miss(endpoint):
    missing = open_store(f"s3://no-such-bucket?endpoint={endpoint}", Path("/nonexistent"))
    name = "0" * 24 + "-full.jpg"
    with pytest.raises(Exception):  # botocore's NoSuchBucket
        missing.put({name: b"x"})


def test_media_route_serves_from_s3_with_cache_headers(store, endpoint, monkeypatch):
    made = _upload((5, 200, 5))
    created = store.put(made.files)
    settings = Settings(media_url=f"s3://{BUCKET}/products?endpoint={endpoint}")
    monkeypatch.setattr(runtime, "_RUNTIME", runtime.Runtime(settings))
    media_router._open.cache_clear()
    app = FastAPI()
    problems.install(app)
    app.include_router(media_router.router)
    try:
        with TestClient(app) as client:
            name = next(n for n in made.files if n.endswith("-480.webp"))
            reply = client.get(f"/media/{name}")
            assert reply.status_code == 200
            assert reply.content == made.files[name]
            assert reply.headers["content-type"] == "image/webp"
            assert reply.headers["cache-control"] == IMMUTABLE
            etag = reply.headers["etag"]
            again = client.get(f"/media/{name}", headers={"If-None-Match": etag})
            assert again.status_code == 304 and again.headers["etag"] == etag
            absent = "f" * 24 + "-full.jpg"
            assert client.get(f"/media/{absent}").status_code == 404
            assert client.get(f"/media/{absent}", headers={"If-None-Match": "*"}).status_code == 404
            assert client.get("/media/..%2Fsecret").status_code == 404
    finally:
        media_router._open.cache_clear()
        store.remove(created)
