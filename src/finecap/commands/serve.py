"""`finecap serve`: the captioning service and its web page (`finecap.serve`, docs/SERVING.md).

Everything that can be refused is, before the port opens: a --model that does not load or
whose own decoding has more beams than a request may ask for, a --clip without weights, an
unreadable --api-key-file, a port in use (one line each, exit 2).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro
from pydantic import Field

from finecap.config import PositiveInt
from finecap.errors import MissingFileError, UserError
from finecap.serve import CaptionService, ServerConfig, create_app, listen, resolve_model, serve
from finecap.serve.server import url_of
from finecap.serve.service import model_names

PROG = "finecap serve"


class ServeOptions(ServerConfig):
    """Serve captions over HTTP: POST /v1/captions (multipart `image`, or JSON with a base64
    `image`), GET /v1/models, GET /healthz, the OpenAPI schema at /openapi.json, and a web
    page at / that shows every model's caption of dropped images side by side, with each
    word's attention map. Concurrent requests with the same options are captioned in one
    batch (--max-batch, --batch-timeout-ms)."""

    model: Annotated[list[str], tyro.conf.UseAppendAction] = Field(default_factory=list)
    """A captioner (as `finecap caption --model`); repeat for several, the first the default."""
    clip: str | None = None
    """A CLIP (Hugging Face folder or hub name) to score captions with CLIP-S."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0: every interface; then set --api-key-file)."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    """Port to listen on (0: any free port, printed at start)."""
    api_key_file: str | None = None
    """A file holding the API key that /v1/... requests must send (Authorization: Bearer KEY)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the models run (auto: cuda when there is a GPU)."""
    threads: PositiveInt | None = None
    """CPU threads torch uses (default: torch's, the number of cores)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Server log level (info: one JSON line per request on stderr)."""


def read_api_key(path: str) -> str:
    """The key: the file's first line, stripped (refused if empty)."""
    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"--api-key-file {path}: no such file")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--api-key-file {path}: cannot read it ({err})") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise UserError(f"--api-key-file {path}: the first line is empty; write the key there")
    return key


def handler(args: ServeOptions) -> int:
    api_key = read_api_key(args.api_key_file) if args.api_key_file is not None else None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no GPU on this machine")
    models = {
        name: resolve_model(value).to(device) for name, value in model_names(args.model).items()
    }
    clip = None
    if args.clip is not None:
        from finecap.clip import load_clip

        clip = load_clip(args.clip, device=device)  # ClipUnavailableError: one sentence
    service = CaptionService(models, clip)  # refuses a model it cannot serve
    sock = listen(args.host, args.port)
    config = ServerConfig(**{name: getattr(args, name) for name in ServerConfig.model_fields})
    app = create_app(service, config, api_key)
    _log_to_stderr(args.log_level)
    names = ", ".join(models)
    scored = f"; CLIP-S with {args.clip}" if clip is not None else ""
    print(f"{PROG}: {names} on {device}{scored}; open {url_of(sock)}/", file=sys.stderr)
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"{PROG}: warning: listening on {args.host} without --api-key-file", file=sys.stderr)
    serve(app, sock, args.log_level)
    return 0


def _log_to_stderr(level: str) -> None:
    logger = logging.getLogger("finecap.serve")
    if not logger.handlers:
        handler_ = logging.StreamHandler(sys.stderr)
        handler_.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler_)
    logger.setLevel(level.upper())
    logger.propagate = False


COMMANDS = {"serve": (ServeOptions, handler)}
