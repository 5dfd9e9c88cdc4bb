"""Product images: upload (role ``admin``) and serve (public).

``POST /v1/admin/products/{sku}/images`` takes one multipart part ``file``.
The caller's role is checked before the body is read; the upload is checked
and thumbnailed off the event loop (``cluster.adapters.media.process``), its
files stored, then the product row's ``images`` gains the entry and
``product.updated`` goes to the outbox in one transaction. A failure at any
step removes the files this upload created: nothing is stored. The same image
uploaded twice to a product is the same entry (200, no duplicate).

``GET /media/{name}`` serves the files: names are content-addressed, so they
are ``immutable`` for a year, with a strong ETag (the name) and 304 on
``If-None-Match``. The files live in the store ``AGORA_MEDIA_URL`` names
(``cluster.adapters.object_store``: ``var/media`` or any S3-compatible
bucket); with S3 the API still serves them itself, with the same headers,
rather than redirecting (docs/DECISIONS.md, "Media in S3").

No ``from __future__ import annotations``: FastAPI must see real annotations.
"""

import asyncio
import functools
import json
import pathlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.adapters import media, object_store
from serve.auth.principal import ADMIN, PUBLIC, Admin
from serve.problems import Problem
from serve.routers.admin_products import emit_product_event
from serve.routers.audit import record_admin_action
from serve.runtime import runtime
from serve.schemas import Sku
from streams.events import PRODUCT_UPDATED

router = APIRouter(tags=["media"])

MEDIA_PREFIX = "/media"
IMMUTABLE = "public, max-age=31536000, immutable"
MULTIPART_OVERHEAD = 64 * 1024  # bytes a multipart body may carry besides the file
_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


@functools.cache
def _open(url: str | None, root: pathlib.Path) -> object_store.MediaStore:
    return object_store.open_store(url, root)


def _store() -> object_store.MediaStore:
    """The replica's one store (one boto3 client and its connection pool for S3)."""
    s = runtime().settings
    return _open(s.media_url, s.media_root)


async def _upload_bytes(request: Request, max_bytes: int) -> bytes:
    try:
        form = await request.form(max_files=1, max_fields=4)
    except (StarletteHTTPException, ValueError, UnicodeDecodeError) as exc:
        raise Problem(
            422, "validation", "The body must be multipart/form-data with one part named file."
        ) from exc
    try:
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise Problem(
                422,
                "validation",
                "The request has invalid fields.",
                errors=[{"field": "body.file", "message": "an image file is required"}],
            )
        data = await part.read(max_bytes + 1)
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise Problem(413, "image-too-large", f"Images are limited to {max_bytes} bytes.")
    if not data:
        raise Problem(422, "image-unreadable", "The file is empty.")
    return data


@router.post(
    "/v1/admin/products/{sku}/images",
    status_code=201,
    openapi_extra={**ADMIN, **_UPLOAD_DOC},
    tags=["admin"],
    responses={
        200: {"description": "this image was already on the product"},
        404: {"description": "no such product"},
        409: {"description": "the product has its maximum number of images"},
        413: {"description": "too many bytes or pixels"},
        415: {"description": "not JPEG, PNG or WebP"},
        422: {"description": "truncated or corrupt image"},
    },
)
async def upload_image(
    sku: Sku, request: Request, response: Response, admin: Admin
) -> dict[str, Any]:
    """Add an image (multipart part ``file``: JPEG, PNG or WebP) -> 201 the image with its
    full-size and thumbnail URLs (each also as WebP)."""
    rt = await runtime().ready()
    s = rt.settings
    async with rt.pool.acquire() as conn:
        listed = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM products WHERE sku = $1 AND retired_at IS NULL)", sku
        )
    if not listed:
        raise Problem(404, "not-found", "No such product.")
    data = await _upload_bytes(request, s.media_max_bytes)
    try:
        made = await asyncio.to_thread(
            media.process,
            data,
            max_bytes=s.media_max_bytes,
            max_pixels=s.media_max_pixels,
            url_prefix=MEDIA_PREFIX,
        )
    except media.ImageRejected as exc:
        raise Problem(exc.status, exc.kind, exc.detail) from exc
    store = _store()
    created = await asyncio.to_thread(store.put, made.files)
    try:
        async with rt.pool.acquire() as conn, conn.transaction():
            images = await conn.fetchval(
                "SELECT images::text FROM products WHERE sku = $1 AND retired_at IS NULL"
                " FOR UPDATE",
                sku,
            )
            if images is None:
                raise Problem(404, "not-found", "No such product.")
            for entry in json.loads(images):
                if isinstance(entry, dict) and entry.get("id") == made.image_id:
                    response.status_code = 200
                    return dict(entry)
            if len(json.loads(images)) >= s.media_max_images:
                raise Problem(
                    409,
                    "too-many-images",
                    f"A product holds at most {s.media_max_images} images.",
                )
            await conn.execute(
                "UPDATE products SET images = images || jsonb_build_array($2::text::jsonb),"
                " updated_at = now() WHERE sku = $1",
                sku,
                json.dumps(made.entry),
            )
            await emit_product_event(rt, conn, PRODUCT_UPDATED, sku, ["images"])
            await record_admin_action(
                rt, admin, "product.image.add", sku, {"image": made.image_id}, conn=conn
            )
    except BaseException:
        await asyncio.to_thread(store.remove, created)
        raise
    return made.entry


@router.get(
    MEDIA_PREFIX + "/{name}",
    openapi_extra=PUBLIC,
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}}},
        304: {"description": "not modified"},
        404: {"description": "no such file"},
    },
)
async def get_media(name: Annotated[str, Path(max_length=64)], request: Request) -> Response:
    """A product image file (content-addressed: cached for a year, immutable)."""
    if not media.NAME.match(name):
        raise Problem(404, "not-found", "No such media file.")
    store = _store()
    etag = '"' + name.split(".", 1)[0] + '"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    if (
        etag in request.headers.get("if-none-match", "")
        or request.headers.get("if-none-match", "").strip() == "*"
    ):
        if not await asyncio.to_thread(store.has, name):
            raise Problem(404, "not-found", "No such media file.")
        return Response(status_code=304, headers=headers)
    body = await asyncio.to_thread(store.get, name)
    if body is None:
        raise Problem(404, "not-found", "No such media file.")
    ext = name.rsplit(".", 1)[1]
    return Response(body, media_type=media.CONTENT_TYPES[ext], headers=headers)
