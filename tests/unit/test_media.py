"""The image pipeline and the local media store (cluster.adapters.media), with real Pillow."""

import io
import struct
import zlib

import pytest
from PIL import Image

from cluster.adapters import media
from cluster.adapters.media import ImageRejected, LocalMediaStore, process

MB = 1024 * 1024


def _image(fmt: str, size=(1600, 900), mode="RGB", exif: bool = False) -> bytes:
    img = Image.new(mode, size, (200, 40, 40) if mode == "RGB" else (200, 40, 40, 128))
    out = io.BytesIO()
    kwargs = {}
    if exif:
        tags = Image.Exif()
        tags[0x010F] = "SpyCam Inc"  # Make
        tags[0x0131] = "secret-software"  # Software
        tags[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
        kwargs["exif"] = tags.tobytes()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def _process(data: bytes, **kw):
    return process(data, max_bytes=kw.pop("max_bytes", 10 * MB), max_pixels=40_000_000, **kw)


def _decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.mark.parametrize(
    ("fmt", "mime", "ext"),
    [("JPEG", "image/jpeg", "jpg"), ("PNG", "image/png", "png"), ("WEBP", "image/webp", "webp")],
)
def test_three_thumbnail_sizes_and_webp_for_every_accepted_type(fmt, mime, ext):
    made = _process(_image(fmt))
    entry = made.entry
    assert entry["content_type"] == mime and (entry["width"], entry["height"]) == (1600, 900)
    assert entry["url"] == f"/media/{made.image_id}-full.{ext}"
    assert [t["size"] for t in entry["thumbnails"]] == [160, 480, 1024]
    for thumb in entry["thumbnails"]:
        own = _decoded(made.files[thumb["url"].removeprefix("/media/")])
        webp = _decoded(made.files[thumb["webp_url"].removeprefix("/media/")])
        assert own.format == fmt and webp.format == "WEBP"
        assert max(own.size) == thumb["size"] == max(webp.size)
        assert own.size == (thumb["width"], thumb["height"])
        assert abs(own.width / own.height - 16 / 9) < 0.05  # aspect kept
    assert all(media.NAME.match(name) for name in made.files)


def test_small_images_are_not_upscaled():
    made = _process(_image("PNG", size=(300, 200)))
    sizes = {t["size"]: (t["width"], t["height"]) for t in made.entry["thumbnails"]}
    assert sizes == {160: (160, 107), 480: (300, 200), 1024: (300, 200)}


def test_exif_is_stripped_and_its_orientation_applied():
    data = _image("JPEG", size=(400, 200), exif=True)
    assert b"SpyCam" in data  # the fixture really carries EXIF
    made = _process(data)
    assert (made.width, made.height) == (200, 400)  # rotated as the camera asked
    for name, blob in made.files.items():
        assert b"SpyCam" not in blob and b"secret-software" not in blob, name
        assert not _decoded(blob).getexif(), name


def test_same_upload_same_names_different_upload_different_names():
    a = _image("PNG", size=(50, 50))
    assert _process(a).files.keys() == _process(a).files.keys()
    assert _process(a).image_id != _process(_image("PNG", size=(51, 50))).image_id


@pytest.mark.parametrize(
    "data",
    [
        b"GIF89a" + b"\x00" * 100,
        b"%PDF-1.4 not an image",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"\x00" * 64,
        b"",
    ],
)
def test_other_types_are_refused_by_their_bytes(data):
    with pytest.raises(ImageRejected) as caught:
        _process(data)
    assert caught.value.status == 415


def test_a_gif_named_png_is_still_a_gif():
    out = io.BytesIO()
    Image.new("RGB", (10, 10)).save(out, "GIF")
    with pytest.raises(ImageRejected) as caught:
        _process(out.getvalue())
    assert caught.value.status == 415


def test_too_many_bytes():
    with pytest.raises(ImageRejected) as caught:
        _process(_image("PNG"), max_bytes=1000)
    assert caught.value.status == 413


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the pixels compress to almost nothing)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    raw = zlib.compress(b"\x00" * (width // 8 + 1) * 64, 9)  # a few rows; enough to start
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "side",
    [
        8_000,  # 64 Mpx: over our 40 Mpx limit, under Pillow's own bomb guard
        50_000,  # 2.5 gigapixels
    ],
)
def test_decompression_bomb_is_refused_before_decoding(side):
    bomb = _png_bomb(side, side)
    assert len(bomb) < 10_000
    with pytest.raises(ImageRejected) as caught:
        _process(bomb)
    assert caught.value.status == 413 and caught.value.kind == "image-too-large"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files_are_unreadable(fmt):
    noisy = Image.effect_noise((800, 600), 60).convert("RGB")  # incompressible: big files
    out = io.BytesIO()
    noisy.save(out, fmt)
    data = out.getvalue()
    with pytest.raises(ImageRejected) as caught:
        _process(data[: len(data) // 2])
    assert caught.value.status == 422


def test_store_writes_all_or_nothing_and_serves_only_its_names(tmp_path):
    store = LocalMediaStore(tmp_path / "media")
    made = _process(_image("PNG", size=(64, 64)))
    created = store.put(made.files)
    assert sorted(created) == sorted(made.files)
    name = next(iter(made.files))
    path = store.path_of(name)
    assert path is not None and path.read_bytes() == made.files[name]
    assert store.put(made.files) == []  # already there: nothing new
    for bad in ["../secret", "x.png", name.replace("-full", "-999"), "a" * 24 + "-full.gif"]:
        assert store.path_of(bad) is None

    other = _process(_image("PNG", size=(65, 64))).files
    broken = {**other, "../../escape.png": b"x"}
    with pytest.raises(ValueError):
        store.put(broken)
    assert all(store.path_of(n) is None for n in other)  # the partial upload was removed
    assert not list((tmp_path / "media").glob(".upload-*"))
    store.remove(created)
    assert store.path_of(name) is None
