"""`finecap serve`: an HTTP captioning service with dynamic batching, and its web page.

FastAPI + uvicorn, with finecap's own asyncio micro-batcher (docs/SERVING.md says why):

- `config`: `ServerConfig` (limits, batching) and the API's request / response shapes;
- `service`: the loaded captioners (+ CLIP) and the function the model thread runs on a batch;
- `batcher`: `MicroBatcher`, concurrent requests with the same options -> one `caption()` call;
- `uploads`: a request's image and options, the size limit (413), decoding through
  `finecap.data.images.load_image` (415 / 422);
- `app`: `create_app(service, config, api_key)`, the routes, the API key, one log line per request;
- `server`: uvicorn in the foreground (`serve`) or a background thread (`BackgroundServer`);
- `static/`: the page at `/` (HTML, CSS, JS; nothing from outside).

    from finecap.serve import CaptionService, BackgroundServer, create_app
    service = CaptionService({"default": Captioner.from_pretrained()})
    with BackgroundServer(create_app(service)) as server:
        print(server.url)
"""

from finecap.serve.app import create_app
from finecap.serve.config import CaptionRequest, CaptionResponse, ServerConfig
from finecap.serve.server import BackgroundServer, listen, serve
from finecap.serve.service import CaptionService, resolve_model

__all__ = [
    "BackgroundServer",
    "CaptionRequest",
    "CaptionResponse",
    "CaptionService",
    "ServerConfig",
    "create_app",
    "listen",
    "resolve_model",
    "serve",
]
