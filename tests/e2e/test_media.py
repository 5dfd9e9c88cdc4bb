"""Product images over HTTP: upload, thumbnails, serving with cache headers, authz, garbage."""

import asyncio
import io
import struct
import time
import uuid
import zlib

import pytest
from PIL import Image

from cluster.adapters.object_store import open_store
from tests.e2e.problems import assert_problem
from tests.e2e.shoppers import auth, new_admin, new_shopper

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def admin(http):
    return new_admin(http)


@pytest.fixture(scope="module")
def sku(http, admin):
    sku = f"IMG-{uuid.uuid4().hex[:10].upper()}"
    body = {
        "sku": sku,
        "name": "Quokka Camera Strap",
        "description": "A strap for image tests.",
        "category": "sports",
        "price": {"amount": 4_990, "currency": "BRL"},
    }
    reply = http.post("/v1/admin/products", json=body, headers=admin)
    assert reply.status_code == 201, reply.text
    return sku


def _jpeg_with_exif(size=(1200, 800), colour=(10, 120, 200)) -> bytes:
    tags = Image.Exif()
    tags[0x010F] = "SpyCam Inc"
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", exif=tags.tobytes())
    assert b"SpyCam" in out.getvalue()
    return out.getvalue()


def _upload(http, sku, data, headers, name="photo.jpg", ctype="image/jpeg"):
    return http.post(
        f"/v1/admin/products/{sku}/images", files={"file": (name, data, ctype)}, headers=headers
    )


def _stored(settings) -> set[str]:
    """What the store the system uses (AGORA_MEDIA_URL: var/media or a bucket) holds."""
    return open_store(settings.media_url, settings.media_root).names()


async def _within(check, seconds: float = 2.0) -> None:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "not visible in time"
        await asyncio.sleep(0.02)


async def test_upload_then_fetch_with_thumbnails_and_cache_headers(http, admin, sku):
    reply = _upload(http, sku, _jpeg_with_exif(), admin)
    assert reply.status_code == 201, reply.text
    image = reply.json()
    assert image["content_type"] == "image/jpeg" and (image["width"], image["height"]) == (
        1200,
        800,
    )
    assert [t["size"] for t in image["thumbnails"]] == [160, 480, 1024]

    def listed() -> bool:
        page = http.get(f"/v1/products/{sku}")
        return page.status_code == 200 and image in page.json()["images"]

    await _within(listed)  # product.updated reached the replica's catalog

    full = http.get(image["url"])
    assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
    assert "immutable" in full.headers["cache-control"]
    assert "max-age=31536000" in full.headers["cache-control"]
    assert b"SpyCam" not in full.content
    assert Image.open(io.BytesIO(full.content)).size == (1200, 800)
    etag = full.headers["etag"]
    again = http.get(image["url"], headers={"If-None-Match": etag})
    assert again.status_code == 304 and not again.content

    for thumb in image["thumbnails"]:
        webp = http.get(thumb["webp_url"])
        assert webp.status_code == 200 and webp.headers["content-type"] == "image/webp"
        decoded = Image.open(io.BytesIO(webp.content))
        assert decoded.format == "WEBP" and max(decoded.size) == thumb["size"]

    same = _upload(http, sku, _jpeg_with_exif(), admin)
    assert same.status_code == 200 and same.json() == image
    images = http.get(f"/v1/products/{sku}").json()["images"]
    assert [i for i in images if i == image] == [image]  # no duplicate entry


def test_upload_needs_an_admin(http, sku, system):
    before = _stored(system)
    data = _jpeg_with_exif(colour=(1, 2, 3))
    assert_problem(_upload(http, sku, data, {}), 401)
    assert_problem(_upload(http, sku, data, auth(new_shopper(http))), 403)
    assert _stored(system) == before


def _png_bomb(side: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _truncated_png() -> bytes:
    out = io.BytesIO()
    Image.effect_noise((400, 400), 60).convert("RGB").save(out, "PNG")
    return out.getvalue()[: len(out.getvalue()) // 2]


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 20)).save(out, "GIF")
    return out.getvalue()


async def test_garbage_is_refused_and_nothing_is_stored(http, admin, sku, system):
    before_files = _stored(system)
    before_images = http.get(f"/v1/products/{sku}").json()["images"]
    cases = [
        (_upload(http, sku, _gif(), admin, "x.png", "image/png"), 415),
        (_upload(http, sku, b"<svg/>", admin, "x.svg", "image/svg+xml"), 415),
        (_upload(http, sku, _truncated_png(), admin, "t.png", "image/png"), 422),
        (_upload(http, sku, _png_bomb(50_000), admin, "bomb.png", "image/png"), 413),
        (_upload(http, sku, _png_bomb(8_000), admin, "bomb.png", "image/png"), 413),
        (_upload(http, sku, b"\xff\xd8\xff" + b"\x00" * (20 * 1024 * 1024), admin), 413),
        (_upload(http, sku, b"", admin), 422),
        (http.post(f"/v1/admin/products/{sku}/images", json={"file": "x"}, headers=admin), 422),
        (
            http.post(
                f"/v1/admin/products/{sku}/images",
                content=b"--b\r\nContent-Disposition: form-data; name=file\r\n\r\n\x00",
                headers={**admin, "Content-Type": "multipart/form-data; boundary=b"},
            ),
            422,
        ),
        (
            http.post(
                f"/v1/admin/products/{sku}/images",
                files={"other": ("a.jpg", _jpeg_with_exif(), "image/jpeg")},
                headers=admin,
            ),
            422,
        ),
        (_upload(http, "NO-SUCH-SKU-1", _jpeg_with_exif(colour=(9, 9, 9)), admin), 404),
        (_upload(http, "not a sku", _jpeg_with_exif(colour=(9, 9, 9)), admin), 422),
    ]
    for reply, status in cases:
        assert_problem(reply, status)
    assert _stored(system) == before_files
    await asyncio.sleep(0.3)  # an event, had one been sent, would have landed
    assert http.get(f"/v1/products/{sku}").json()["images"] == before_images


@pytest.mark.parametrize(
    "name",
    ["nope.jpg", "..%2F..%2Fpyproject.toml", "0" * 24 + "-full.jpg", "0" * 24 + "-full.gif"],
)
def test_unknown_media_is_404(http, name):
    assert_problem(http.get(f"/media/{name}"), 404)
