"""The HTTP service: FastAPI routes over a `CaptionService` and a `MicroBatcher`.

| route | answer |
|---|---|
| `POST /v1/captions` | `CaptionResponse`; 401 413 415 422 503 (+ Retry-After) 504 |
| `GET /v1/models` | `ModelsResponse`: the loaded models, the CLIP, the limits |
| `GET /healthz` | 200 `Health` once the models are loaded and warm; 503 while stopping |
| `GET /openapi.json` | the OpenAPI schema of all this |
| `GET /` | the web page (`static/`: no outside assets, works offline) |

With an API key, `/v1/...` needs `Authorization: Bearer KEY` (or `X-API-Key: KEY`); the page,
`/healthz` and the schema stay open. Every request gets one JSON log line on the
`finecap.serve` logger (method, path, status, ms; model and batch size for captions).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from finecap.config import ConfigError
from finecap.errors import UserError
from finecap.serve.batcher import BatcherClosedError, MicroBatcher, QueueFullError
from finecap.serve.config import (
    CaptionRequest,
    CaptionResponse,
    Health,
    ModelsResponse,
    ServerConfig,
)
from finecap.serve.service import BatchKey, CaptionService, Job
from finecap.serve.uploads import BodyLimit, decode_image, read_request

LOG = logging.getLogger("finecap.serve")
STATIC = files("finecap.serve") / "static"

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer KEY`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="or `X-API-Key: KEY`")

_REQUEST_BODY = {  # the body `POST /v1/captions` reads by hand (two content types)
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    **CaptionRequest.model_json_schema()["properties"],
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "byte", "description": "base64"},
                    **CaptionRequest.model_json_schema()["properties"],
                },
            }
        },
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text}
    for code, text in {
        401: "missing or wrong API key",
        413: "image or body over --max-upload-mb",
        415: "not multipart or JSON; not an image format",
        422: "bad option, base64 or JSON; corrupt image; too many pixels (decompression bomb)",
        503: "queue full (Retry-After says when to retry) or shutting down",
        504: "not captioned within --timeout-s",
    }.items()
}


router = APIRouter()


@dataclass
class _State:
    """What the routes share: `app.state.finecap`."""

    service: CaptionService
    config: ServerConfig
    api_key: str | None
    batcher: MicroBatcher | None = None  # made inside the app's event loop, at startup


def create_app(
    service: CaptionService, config: ServerConfig | None = None, api_key: str | None = None
) -> FastAPI:
    """The ASGI app serving `service` (run it with uvicorn; see `finecap.serve.server`)."""
    app = FastAPI(
        title="finecap",
        summary="Fine-grained, distinctive image captions",
        version=_version(),
        lifespan=_lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: not offline
        redoc_url=None,
    )
    app.state.finecap = _State(service, config or ServerConfig(), api_key)
    app.add_middleware(BodyLimit, max_bytes=app.state.finecap.config.max_body_bytes)
    app.add_middleware(_RequestLog)  # outermost: it sees every answer, the 413s too
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    state: _State = app.state.finecap
    config = state.config
    batcher = MicroBatcher(
        state.service.run_batch,
        max_batch=config.max_batch,
        max_wait_s=config.batch_timeout_ms / 1000,
        max_queue=config.max_queue,
    )
    await batcher.run_in_worker(state.service.warm_up)
    consumer = asyncio.create_task(batcher.run())
    state.batcher = batcher
    try:
        yield
    finally:
        state.batcher = None
        await batcher.close()
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer


def _state(request: Request) -> _State:
    return request.app.state.finecap


async def _check_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
) -> None:
    key = _state(request).api_key
    if key is None:
        return
    given = header if header is not None else (bearer.credentials if bearer else None)
    if given is None or not hmac.compare_digest(given.encode(), key.encode()):
        reason = "missing" if given is None else "wrong"
        raise HTTPException(
            401,
            f"API key {reason}: send `Authorization: Bearer KEY`",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    request.state.log = {**getattr(request.state, "log", {}), "error": str(exc.detail)}
    return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)


@router.post(
    "/v1/captions",
    response_model=CaptionResponse,
    dependencies=[Depends(_check_key)],
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses=_ERRORS,
)
async def captions(request: Request) -> CaptionResponse:
    """Caption one image: multipart field `image`, or JSON with the base64 `image`."""
    arrived = time.perf_counter()
    state = _state(request)
    batcher = state.batcher
    if batcher is None:
        raise HTTPException(503, "the service is not running (starting or shutting down)")
    with batcher.incoming():  # on its way: a batch being formed waits for it
        key, job, name = await _prepare(request, state)
    try:
        result = await asyncio.wait_for(batcher.submit(key, job), job.deadline - _now())
    except asyncio.TimeoutError:
        raise _timed_out(name, state.config) from None
    except QueueFullError as err:
        raise HTTPException(503, str(err), {"Retry-After": str(err.retry_after)}) from None
    except BatcherClosedError as err:
        raise HTTPException(503, str(err)) from None
    except UserError as err:  # options this model cannot honour (e.g. attention it lacks)
        raise HTTPException(422, f"model {key.model}: {err}") from None
    request.state.log["batch"] = result.batch
    ms = (time.perf_counter() - arrived) * 1000
    return CaptionResponse(model=key.model, captions=result.captions, ms=ms, batch=result.batch)


async def _prepare(request: Request, state: _State) -> tuple[BatchKey, Job, str]:
    """The request's batch key, decoded image and file name; refusals as HTTPException."""
    config, service = state.config, state.service
    data, name, given = await read_request(request, config.max_upload_bytes)
    try:
        options = CaptionRequest.load(given, "request")
    except ConfigError as err:
        raise HTTPException(422, str(err)) from None
    model = options.model or service.default_model
    if model not in service.models:
        known = ", ".join(service.models)
        raise HTTPException(422, f"request: model: {model!r} is not loaded (loaded: {known})")
    request.state.log = {"model": model, "image": name}
    deadline = _now() + config.timeout_s  # --timeout-s counts from here
    reading = asyncio.to_thread(decode_image, data, name, config.max_pixels)
    try:
        image = await asyncio.wait_for(reading, config.timeout_s)
    except asyncio.TimeoutError:
        raise _timed_out(name, config) from None
    beams = options.beams(service.models[model].decoding.beam_size)
    key = BatchKey(model, beams, options.n_best, options.with_attention)
    return key, Job(image, options.with_scores, deadline), name


def _timed_out(name: str, config: ServerConfig) -> HTTPException:
    return HTTPException(504, f"{name}: not captioned within {config.timeout_s:g} s")


@router.get("/v1/models", response_model=ModelsResponse, dependencies=[Depends(_check_key)])
async def models(request: Request) -> ModelsResponse:
    """The loaded models (the first is the default), the CLIP, the limits."""
    state = _state(request)
    clip = state.service.clip
    return ModelsResponse(
        models=state.service.model_list(),
        clip=clip.name if clip is not None else None,
        max_upload_mb=state.config.max_upload_mb,
        max_batch=state.config.max_batch,
    )


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(request: Request) -> JSONResponse:
    """200 once the models are loaded and warm; 503 while stopping."""
    state = _state(request)
    batcher = state.batcher
    health = Health(
        status="ok" if batcher is not None else "stopping",
        models=list(state.service.models),
        queued=batcher.waiting if batcher is not None else 0,
        batches=batcher.stats.batches if batcher is not None else 0,
        images=batcher.stats.images if batcher is not None else 0,
    )
    return JSONResponse(health.model_dump(), 200 if batcher is not None else 503)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})


def _now() -> float:
    return asyncio.get_running_loop().time()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("finecap")
    except PackageNotFoundError:
        return "unknown"


class _RequestLog:
    """ASGI middleware: one JSON line per request on the `finecap.serve` logger."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}  # if the app fails before answering

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            state = scope.get("state") or {}
            record = {
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "method": scope["method"],
                "path": scope["path"],
                "status": status["code"],
                "ms": round((time.perf_counter() - start) * 1000, 2),
                "client": (scope.get("client") or ("?",))[0],
                **state.get("log", {}),
            }
            LOG.info(json.dumps(record))
