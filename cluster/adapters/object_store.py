"""Where product images live: the object-store port and its S3 implementation.

``open_store(url, local_root)`` picks the implementation from ``AGORA_MEDIA_URL``:

* unset or ``file:///abs/dir``: ``LocalMediaStore`` (``var/media`` by default);
* ``s3://bucket[/prefix]?endpoint=http://host:port&region=us-east-1``: any
  S3-compatible store (AWS S3, MinIO, Ceph, moto in the tests). ``endpoint`` is
  left out for AWS itself. Credentials come from boto3's usual chain
  (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a profile, an instance
  role), never from the URL, so the URL can be logged. The bucket must exist.

Both are synchronous and called through ``asyncio.to_thread`` by the media
routes: boto3 clients are thread-safe, images are written once and read
rarely (a CDN or the browser holds them for a year), and aiobotocore pins
exact botocore versions that fight every other AWS-touching package
(docs/DECISIONS.md, "Media in S3").

Objects are written with their content type and the same immutable
``Cache-Control`` the API serves, so a bucket exposed through a CDN directly
behaves like ``GET /media/{name}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from cluster.adapters.media import CONTENT_TYPES, NAME, LocalMediaStore
from streams.warehouse_url import parse_s3_url

IMMUTABLE = "public, max-age=31536000, immutable"
_MISSING = {"404", "NoSuchKey", "NotFound"}


class MediaStore(Protocol):
    """Content-addressed image files: a name always means the same bytes."""

    def describe(self) -> str: ...

    def has(self, name: str) -> bool: ...

    def get(self, name: str) -> bytes | None: ...

    def names(self) -> set[str]: ...

    def put(self, files: dict[str, bytes]) -> list[str]:
        """Store all ``files`` or none; the names this call created (for ``remove``)."""
        ...

    def remove(self, names: list[str]) -> None: ...


class S3MediaStore:
    """Images as objects ``{prefix}{name}`` in one bucket of an S3-compatible store."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str | None = None,
        region: str = "us-east-1",
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            config=Config(
                connect_timeout=3,
                read_timeout=15,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=16,
                # Path-style addressing: MinIO, Ceph and moto serve one host for all buckets.
                s3={"addressing_style": "path" if endpoint else "auto"},
            ),
        )

    def describe(self) -> str:
        return f"s3 bucket {self.bucket}/{self.prefix} at {self.endpoint or 'AWS'}"

    def _key(self, name: str) -> str:
        return self.prefix + name

    def has(self, name: str) -> bool:
        if not NAME.match(name):
            return False
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _MISSING:
                return False
            raise
        return True

    def get(self, name: str) -> bytes | None:
        if not NAME.match(name):
            return None
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _MISSING:
                return None
            raise
        body = reply["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def names(self) -> set[str]:
        """Every stored media name under the prefix (for checks and clean-ups)."""
        out: set[str] = set()
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                name = str(item["Key"])[len(self.prefix) :]
                if NAME.match(name):
                    out.add(name)
        return out

    def put(self, files: dict[str, bytes]) -> list[str]:
        created: list[str] = []
        try:
            for name, data in files.items():
                if not NAME.match(name):
                    raise ValueError(f"not a media name: {name!r}")
                # Same name, same bytes: an object already there belongs to an earlier upload
                # and must survive this one's clean-up, so it is not "created" here.
                if self.has(name):
                    continue
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self._key(name),
                    Body=data,
                    ContentType=CONTENT_TYPES[name.rsplit(".", 1)[1]],
                    CacheControl=IMMUTABLE,
                )
                created.append(name)
        except BaseException:
            self.remove(created)
            raise
        return created

    def remove(self, names: list[str]) -> None:
        keys = [{"Key": self._key(n)} for n in names if NAME.match(n)]
        for start in range(0, len(keys), 1000):  # the API's per-call limit
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True}
            )


def open_store(url: str | None, local_root: Path) -> MediaStore:
    """The media store ``url`` names (see the module doc); ValueError if it names none."""
    if not url:
        return LocalMediaStore(local_root)
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError("AGORA_MEDIA_URL file:// needs an absolute path: file:///srv/media")
        return LocalMediaStore(Path(parts.path))
    if parts.scheme != "s3":
        raise ValueError("AGORA_MEDIA_URL must be s3://bucket[/prefix]?endpoint=... or file:///dir")
    return S3MediaStore(**parse_s3_url(url, setting="AGORA_MEDIA_URL"))
