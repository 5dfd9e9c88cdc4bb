"""``AGORA_WAREHOUSE_URL`` parsed (standard library only: settings import it at start-up,
before anything needs polars or boto3). ``streams.warehouse_store`` opens what it names."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


def parse_s3_url(url: str, setting: str = "AGORA_WAREHOUSE_URL") -> dict[str, Any]:
    """``s3://bucket[/prefix]?endpoint=...&region=...`` as an S3 store's arguments (the
    warehouse's and the media's; ``setting`` names the URL in errors)."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError(
            f"{setting} must be s3://bucket[/prefix]?endpoint=..., file:///dir or a path"
        )
    if not parts.netloc or parts.username or parts.password:
        raise ValueError(f"{setting} s3:// needs a bucket and no credentials in the URL")
    query = parse_qs(parts.query)
    unknown = set(query) - {"endpoint", "region"}
    if unknown:
        raise ValueError(f"{setting}: unknown options {sorted(unknown)}")
    endpoint = query.get("endpoint", [None])[0]
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValueError(f"{setting} endpoint must be an http(s) URL")
    prefix = parts.path.strip("/")
    return {
        "bucket": parts.netloc,
        "prefix": prefix + "/" if prefix else "",
        "endpoint": endpoint,
        "region": query.get("region", ["us-east-1"])[0],
    }


def local_path(location: str | Path) -> Path | None:
    """The directory ``location`` names (a path or ``file:///dir``); None for an object store."""
    if isinstance(location, Path):
        return location
    if location.startswith("file://"):
        parts = urlsplit(location)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError("AGORA_WAREHOUSE_URL file:// needs an absolute path: file:///srv/wh")
        return Path(parts.path)
    if "://" in location:
        return None
    return Path(location)
