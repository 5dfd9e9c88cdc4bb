"""Choosing the media store from AGORA_MEDIA_URL, and both stores' port behaviour.

The S3 store runs here against moto's in-process S3 (fast, no sockets); the same
code against a real S3-compatible server is tests/integration/test_media_s3.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from cluster import cli
from cluster.adapters.media import LocalMediaStore
from cluster.adapters.object_store import IMMUTABLE, S3MediaStore, open_store
from cluster.settings import Settings

NAME = "a" * 24 + "-160.webp"
OTHER = "b" * 24 + "-full.png"


def test_unset_url_is_the_local_directory(tmp_path):
    store = open_store(None, tmp_path)
    assert isinstance(store, LocalMediaStore) and store.root == tmp_path
    assert isinstance(open_store("", tmp_path), LocalMediaStore)
    chosen = open_store(f"file://{tmp_path}/media", Path("/unused"))
    assert isinstance(chosen, LocalMediaStore) and chosen.root == tmp_path / "media"


def test_s3_url_parts():
    store = open_store("s3://shop-media/prod/images/?endpoint=http://127.0.0.1:9000", Path("/"))
    assert isinstance(store, S3MediaStore)
    assert (store.bucket, store.prefix, store.endpoint) == (
        "shop-media",
        "prod/images/",
        "http://127.0.0.1:9000",
    )
    assert "shop-media" in store.describe()
    bare = open_store("s3://shop-media?region=sa-east-1", Path("/"))
    assert isinstance(bare, S3MediaStore)
    assert (bare.prefix, bare.endpoint) == ("", None)
    assert bare.client.meta.region_name == "sa-east-1"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host/x",
        "s3://",
        "s3://key:secret@bucket",
        "s3://bucket?endpoint=file:///etc",
        "s3://bucket?colour=red",
        "file://relative/dir",
        "media",
    ],
)
def test_bad_urls_are_refused(url):
    with pytest.raises(ValueError):
        open_store(url, Path("/"))


def test_local_store_get_and_has(tmp_path):
    store = LocalMediaStore(tmp_path)
    assert store.put({NAME: b"webp"}) == [NAME]
    assert store.has(NAME) and store.get(NAME) == b"webp"
    assert not store.has(OTHER) and store.get(OTHER) is None
    assert store.get("../x") is None
    assert "local" in store.describe()
    (tmp_path / ".upload-tmp").write_bytes(b"half")  # not a media name: not listed
    assert store.names() == {NAME}
    assert LocalMediaStore(tmp_path / "absent").names() == set()


@pytest.fixture
def s3():
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="media")
        yield S3MediaStore("media", prefix="p/")


def test_s3_store_round_trip_in_process(s3):
    assert s3.put({NAME: b"webp", OTHER: b"png"}) == [NAME, OTHER]
    assert s3.put({NAME: b"webp"}) == []  # already there: not ours to clean up
    assert s3.get(NAME) == b"webp" and s3.has(OTHER)
    s3.client.put_object(Bucket="media", Key="other/" + NAME, Body=b"not ours")
    assert s3.names() == {NAME, OTHER}
    head = s3.client.head_object(Bucket="media", Key="p/" + OTHER)
    assert (head["ContentType"], head["CacheControl"]) == ("image/png", IMMUTABLE)
    s3.remove([NAME, OTHER, "../x"])
    assert s3.get(NAME) is None and not s3.has(OTHER)
    assert s3.get("../x") is None and not s3.has("../x")


def test_s3_put_rolls_back_on_a_bad_name(s3):
    with pytest.raises(ValueError):
        s3.put({NAME: b"webp", "../evil": b"x"})
    assert not s3.has(NAME)


def test_agora_up_refuses_a_bad_media_url_before_starting_anything(tmp_path):
    settings = Settings(var_dir=tmp_path, media_url="ftp://example.com/media")
    with pytest.raises(SystemExit, match="AGORA_MEDIA_URL"):
        cli.up(settings)
    assert not (tmp_path / "pg").exists()  # no service was started
