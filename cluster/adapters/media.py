"""Product images: a checked decode, thumbnails, and a local content-addressed store.

``process`` turns an upload into the files a product page needs, or raises
``ImageRejected`` (with the HTTP status to answer) before anything is written:

* size cap (``media_max_bytes``) -> 413; the type is sniffed from the bytes,
  never from the client's Content-Type: JPEG, PNG or WebP, anything else -> 415;
* the header's width x height is checked against ``media_max_pixels`` *before*
  the pixels are decoded (a decompression bomb) -> 413; Pillow's own bomb guard
  backs it up;
* a file that does not decode to the end (truncated, corrupt) -> 422;
* the EXIF orientation is applied, then every output is re-encoded from the
  pixels alone: EXIF, XMP, comments and GPS are gone;
* outputs: the full image in its own format and in WebP, and three thumbnails
  (longest side 160, 480 and 1024 px, never upscaled), each in the source
  format and in WebP.

File names are ``{id}-{variant}.{ext}`` where ``id`` is the first 24 hex digits
of the SHA-256 of the upload: the same upload makes the same files, so a name
never changes meaning and is served as immutable.

``LocalMediaStore`` keeps them under ``var/media/`` (local only: several API
replicas on one machine share the directory). ``put`` writes all files or none.
Any S3-compatible store is the other implementation of the same port
(``cluster.adapters.object_store``), chosen by ``AGORA_MEDIA_URL``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

THUMBNAIL_SIZES = (160, 480, 1024)
FORMATS = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
}
CONTENT_TYPES = {ext: mime for mime, ext in FORMATS.values()}
NAME = re.compile(r"^[0-9a-f]{24}-(full|160|480|1024)\.(jpg|png|webp)$")


class ImageRejected(Exception):
    """An upload we will not store: ``status`` (413, 415, 422), ``kind`` and a detail."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail


@dataclass
class Processed:
    """What one upload became: the product's ``images`` entry and the files to store."""

    image_id: str
    content_type: str
    width: int
    height: int
    files: dict[str, bytes] = field(default_factory=dict)
    entry: dict[str, Any] = field(default_factory=dict)


def sniff(data: bytes) -> str | None:
    """The Pillow format name of ``data`` judged by its magic bytes (None: not one we take)."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _decode(data: bytes, fmt: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = opened.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise ImageRejected(
                    413,
                    "image-too-large",
                    f"Images are limited to {max_pixels} pixels; this one has {width}x{height}.",
                )
            opened.seek(0)  # an animation: its first frame
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(
            413, "image-too-large", "The image decodes to too many pixels."
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, Image.UnidentifiedImageError) as exc:
        raise ImageRejected(
            422, "image-unreadable", "The image is truncated or corrupt and does not decode."
        ) from exc
    return image


def _encode(image: Image.Image, fmt: str) -> bytes:
    """Re-encode from the pixels alone (no ``exif``, ``icc_profile`` or text chunks passed)."""
    out = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(out, "JPEG", quality=85, optimize=True)
    elif fmt == "PNG":
        image.save(out, "PNG", optimize=False)
    else:
        image.save(out, "WEBP", quality=80, method=4)
    return out.getvalue()


def _normalised(image: Image.Image) -> Image.Image:
    if image.mode in ("RGB", "RGBA", "L", "LA"):
        return image
    has_alpha = (image.mode in ("P", "PA") and "transparency" in image.info) or "A" in image.mode
    return image.convert("RGBA" if has_alpha else "RGB")


def process(
    data: bytes, *, max_bytes: int, max_pixels: int, url_prefix: str = "/media"
) -> Processed:
    """Check and decode an upload; its files and its ``images`` entry (see the module doc)."""
    if len(data) > max_bytes:
        raise ImageRejected(413, "image-too-large", f"Images are limited to {max_bytes} bytes.")
    fmt = sniff(data)
    if fmt is None:
        raise ImageRejected(
            415, "unsupported-media-type", "Only JPEG, PNG and WebP images are accepted."
        )
    image = _normalised(_decode(data, fmt, max_pixels))
    image_id = hashlib.sha256(data).hexdigest()[:24]
    mime, ext = FORMATS[fmt]
    files: dict[str, bytes] = {}

    def add(variant: str, img: Image.Image) -> dict[str, Any]:
        own = f"{image_id}-{variant}.{ext}"
        files[own] = _encode(img, fmt)
        webp = f"{image_id}-{variant}.webp"
        if webp not in files:
            files[webp] = _encode(img, "WEBP")
        return {
            "url": f"{url_prefix}/{own}",
            "webp_url": f"{url_prefix}/{webp}",
            "width": img.width,
            "height": img.height,
        }

    full = add("full", image)
    thumbnails = []
    for size in THUMBNAIL_SIZES:
        thumb = image.copy()
        thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
        thumbnails.append({"size": size, **add(str(size), thumb)})
    entry = {"id": image_id, "content_type": mime, **full, "thumbnails": thumbnails}
    return Processed(image_id, mime, image.width, image.height, files, entry)


class LocalMediaStore:
    """Content-addressed files under one directory; writes are atomic per file and
    all-or-nothing per ``put``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, name: str) -> Path | None:
        """The file behind a public name (None: not a name we issue, or not stored)."""
        if not NAME.match(name):
            return None
        path = self.root / name
        return path if path.is_file() else None

    def describe(self) -> str:
        return f"local directory {self.root}"

    def has(self, name: str) -> bool:
        return self.path_of(name) is not None

    def names(self) -> set[str]:
        """Every stored media name (for checks and clean-ups, not for requests)."""
        if not self.root.is_dir():
            return set()
        return {p.name for p in self.root.iterdir() if NAME.match(p.name)}

    def get(self, name: str) -> bytes | None:
        """The stored bytes of ``name`` (None: not a name we issue, or not stored)."""
        path = self.path_of(name)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def put(self, files: dict[str, bytes]) -> list[str]:
        """Store ``files``; the names this call created (for ``remove`` if the caller's
        transaction then fails). Names already there are left as they are (same bytes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        created: list[str] = []
        try:
            for name, data in files.items():
                if not NAME.match(name):
                    raise ValueError(f"not a media name: {name!r}")
                target = self.root / name
                if target.exists():
                    continue
                fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-")
                try:
                    with os.fdopen(fd, "wb") as out:
                        out.write(data)
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
                created.append(name)
        except BaseException:
            self.remove(created)
            raise
        return created

    def remove(self, names: list[str]) -> None:
        for name in names:
            if NAME.match(name):
                (self.root / name).unlink(missing_ok=True)
