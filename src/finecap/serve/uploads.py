"""Reading a captioning request: the image and its options, within the limits.

A request is `multipart/form-data` with the file in the field `image` (what a browser form
and `curl -F image=@photo.jpg` send) and the options as further fields, or `application/json`
with the image base64-encoded under `"image"` (a `data:image/...;base64,` prefix is allowed)
beside the options. Every refusal is an `HTTPException` whose detail is one sentence:

| status | when |
|---|---|
| 413 | the body or the image file is larger than the limit (checked while it streams in) |
| 415 | the request is neither multipart nor JSON, or the file is no image format Pillow reads |
| 422 | no `image`, bad base64 or JSON, a bad option; a corrupt or truncated image; an image
        with more pixels than --max-pixels, or a decompression bomb (from its header, before
        any pixel is decoded) |

Images are decoded by `finecap.data.images.load_image`, the loader `finecap caption` uses
(same checks, same RGB conversion), from a private temporary file; its messages name the
upload's file name instead of that file.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException, Request
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile

from finecap.data.images import ImageLoadError, load_image

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_FIELDS = 16  # the options are a handful of short fields
NAME_CHARS = 120  # an upload's file name in messages, at most


def _too_large(size: str, limit: int) -> HTTPException:
    return HTTPException(413, f"{size}: over the limit of {limit:,} bytes (--max-upload-mb)")


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` gets 413, from its Content-Length at once or
    while it streams in (chunked uploads), before the rest is read."""

    def __init__(self, app: Callable, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await _refuse(
                send, _too_large(f"request body of {int(length):,} bytes", self.max_bytes)
            )
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # raised inside the handler: FastAPI answers 413
                raise _too_large("request body", self.max_bytes)
            return message

        await self.app(scope, limited, send)


async def _refuse(send: Send, error: HTTPException) -> None:
    body = json.dumps({"detail": error.detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers.append((b"connection", b"close"))  # the unread body makes the connection unusable
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_request(request: Request, max_bytes: int) -> tuple[bytes, str, dict[str, Any]]:
    """(image bytes, its file name for messages, the options as given)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await _multipart(request, max_bytes)
    if kind == "application/json":
        return _json(await request.body(), max_bytes)
    raise HTTPException(
        415,
        f"content type {kind or 'missing'!r}: send multipart/form-data with the file in "
        "field `image`, or application/json with the base64 image in `image`",
    )


async def _multipart(request: Request, max_bytes: int) -> tuple[bytes, str, dict[str, Any]]:
    form = await request.form(max_files=1, max_fields=MAX_FIELDS)
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        got = "missing" if upload is None else "a text field, not a file"
        raise HTTPException(422, f"multipart field `image`: {got}")
    data = await upload.read(max_bytes + 1)
    await upload.close()
    name = _shown(upload.filename or "image")
    if len(data) > max_bytes:
        raise _too_large(f"{name}: image file", max_bytes)
    options = {key: value for key, value in form.multi_items() if key != "image"}
    if any(isinstance(value, UploadFile) for value in options.values()):
        raise HTTPException(422, "only the field `image` may be a file")
    return data, name, options


def _json(body: bytes, max_bytes: int) -> tuple[bytes, str, dict[str, Any]]:
    try:
        payload = json.loads(body)
    except ValueError as err:
        raise HTTPException(422, f"request body: not JSON ({err})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
        raise HTTPException(422, "JSON body: expected an object with the base64 image in `image`")
    encoded = payload.pop("image")
    if encoded.startswith("data:"):  # a data URL, as a browser's FileReader gives it
        encoded = encoded.partition(",")[2]
    if len(encoded) > max_bytes * 4 // 3 + 4:
        raise _too_large("`image` (decoded)", max_bytes)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as err:
        raise HTTPException(422, f"`image`: not base64 ({err})") from None
    if len(data) > max_bytes:
        raise _too_large("`image` (decoded)", max_bytes)
    name = payload.get("filename")
    return data, _shown(name if isinstance(name, str) and name else "image"), payload


def _shown(name: str) -> str:
    """A client's file name, safe to put in a message: its last path part, escaped, short."""
    name = os.path.basename(name.replace("\\", "/")) or "image"
    name = name if name.isprintable() else repr(name)[1:-1]
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 3] + "..."


def decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """The upload as an RGB image, through `load_image`; refusals as 415 or 422."""
    with tempfile.NamedTemporaryFile(prefix="finecap-upload-") as file:
        file.write(data)
        file.flush()
        try:
            return load_image(file.name, max_pixels=max_pixels)
        except ImageLoadError as err:
            message = str(err).replace(file.name, name, 1)
            status = 415 if isinstance(err.__cause__, UnidentifiedImageError) else 422
            raise HTTPException(status, message) from None
