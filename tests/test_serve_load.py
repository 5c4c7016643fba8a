"""A bounded load test of `finecap serve` on loopback: 64 clients x 8 requests each against one
server. No 5xx, every caption equal to what `finecap caption` prints for that image, requests
batched, and the server's memory bounded (it does not grow with the number of requests)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import aiohttp
import httpx

from finecap.cli import main
from finecap.serve import BackgroundServer, CaptionService, ServerConfig, create_app, resolve_model

CLIENTS, REQUESTS = 64, 8
RSS_GROWTH_LIMIT = 150 * 2**20
"""Peak growth of the process's memory during the load. The service holds at most max_queue
decoded images (here 64 of 96 x 96 px) and one batch in the model; 150 MB is room for the
threads' allocator arenas and the 64 clients."""


def _rss() -> int | None:
    """This process's resident memory in bytes (Linux), or None elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident memory every 20 ms in a thread, while in `with`."""

    def __init__(self) -> None:
        self.start = _rss()
        self.peak = self.start or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss() or 0)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.png"))


def _cli_captions(images: list[Path], capsys) -> dict[str, str]:
    """{image name: caption} as `finecap caption IMAGES...` prints them (the bundled model)."""
    assert main(["caption", *map(str, images)]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {Path(path).name: text for path, text in (line.split("\t") for line in lines)}


async def _load(url: str, images: list[Path]) -> list[tuple[str, int, dict]]:
    """Every client posts its REQUESTS images one after another; all clients at once."""
    payloads = {path.name: path.read_bytes() for path in images}
    names = sorted(payloads)
    connector = aiohttp.TCPConnector(limit=CLIENTS)  # one connection per client
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def one_client(c: int) -> list[tuple[str, int, dict]]:
            out = []
            for r in range(REQUESTS):
                name = names[(c + r) % len(names)]
                form = aiohttp.FormData()
                form.add_field("image", payloads[name], filename=name, content_type="image/png")
                async with session.post("/v1/captions", data=form) as response:
                    out.append((name, response.status, await response.json()))
            return out

        per_client = await asyncio.gather(*(one_client(c) for c in range(CLIENTS)))
    return [result for results in per_client for result in results]


def test_64_clients_get_the_clis_captions_in_bounded_memory(capsys) -> None:
    # The bundled model on the example images: real, different captions (a random tiny
    # model says the same words whatever the image), still quick to decode.
    expected = _cli_captions(EXAMPLES, capsys)
    assert len(set(expected.values())) > 1
    service = CaptionService({"default": resolve_model(None)})
    config = ServerConfig(max_batch=16, max_queue=CLIENTS, timeout_s=60)
    with BackgroundServer(create_app(service, config)) as server:
        with PeakRSS() as memory:
            results = asyncio.run(asyncio.wait_for(_load(server.url, EXAMPLES), 120))
        health = httpx.get(f"{server.url}/healthz").json()
    assert len(results) == CLIENTS * REQUESTS
    assert {status for _, status, _ in results} == {200}  # no 5xx: the queue holds every client
    assert all(body["captions"][0]["text"] == expected[name] for name, _, body in results)
    assert health["batches"] < health["images"]  # batched: fewer model calls than images
    if memory.start is not None:
        assert memory.peak - memory.start < RSS_GROWTH_LIMIT
