"""`finecap serve`'s API on a tiny model over real HTTP (uvicorn on a loopback port): captions
equal the Captioner's, JSON and multipart, n-best, attention, CLIP-S, every refusal's status
code (401 413 415 422 503 + Retry-After 504), dynamic batching, one log line per request, the
OpenAPI schema, the offline page, and the command's own refusals."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import httpx
import pytest
import torch

from finecap.captioner import Captioner
from finecap.cli import main
from finecap.clip import ClipEmbedder, load_clip
from finecap.data.images import load_image
from finecap.decoding import DecodingConfig
from finecap.errors import UserError
from finecap.metrics.clipscore import CLIP_S_PREFIX, clip_s
from finecap.serve import BackgroundServer, CaptionService, ServerConfig, create_app
from finecap.serve.app import STATIC
from finecap.serve.batcher import MicroBatcher
from helpers.tiny_captioners import (
    make_repetitive,
    make_talkative,
    make_tiny_captioner,
    repeats_a_trigram,
    save_images,
)
from helpers.tiny_models import make_tiny_clip


@pytest.fixture(scope="module")
def captioner() -> Captioner:
    # Always 6 words: a random model would often caption with <eos> alone.
    return make_talkative(make_tiny_captioner("transformer", seed=1, max_len=6))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return save_images(tmp_path_factory.mktemp("images"), 6, size=40)


@pytest.fixture(scope="module")
def server(captioner):
    """One service for the tests that do not change its settings."""
    with BackgroundServer(create_app(CaptionService({"tiny": captioner}))) as running:
        yield running


class Gate:
    """Stands in front of `run_batch`: once closed, the model thread waits inside its next
    batch until `open()`, so requests pile up behind it as under load."""

    def __init__(self, service: CaptionService) -> None:
        self.run = service.run_batch
        self.closed = False
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.sizes: list[int] = []
        service.run_batch = self

    def __call__(self, key, jobs):
        if self.closed:
            self.entered.set()
            assert self.opened.wait(30)
        self.sizes.append(len(jobs))
        return self.run(key, jobs)

    def close(self) -> None:
        self.closed = True
        self.sizes.clear()  # from here on (not the warm-up's)

    def open(self) -> None:
        self.opened.set()


def _post(url: str, path: Path, **fields) -> httpx.Response:
    data = {key: str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in fields.items()}  # fmt: skip
    with path.open("rb") as f:
        return httpx.post(f"{url}/v1/captions", files={"image": (path.name, f)}, data=data)


def _wait_queued(url: str, n: int) -> None:
    for _ in range(500):
        if httpx.get(f"{url}/healthz").json()["queued"] >= n:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"never {n} requests queued")


def test_caption_is_the_captioners(server, captioner, images) -> None:
    response = _post(server.url, images[0])
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"model", "captions", "ms", "batch"}
    assert body["model"] == "tiny" and body["batch"] == 1 and body["ms"] > 0
    [caption] = body["captions"]
    expected = captioner.caption(load_image(images[0]))
    assert caption["text"] == expected.text and caption["words"] == expected.words
    assert caption["logprob"] == pytest.approx(expected.score, abs=1e-5)
    assert caption["score"] is None and caption["attention"] is None  # no CLIP; not asked


def test_a_models_own_decoding_is_served_with_the_requests_beams(images) -> None:
    own = make_talkative(make_tiny_captioner("transformer", seed=1, max_len=6))
    own.decoding = DecodingConfig(beam_size=3, block_trigrams=True, length_penalty=1.0)
    with BackgroundServer(create_app(CaptionService({"own": own}))) as running:
        [model] = httpx.get(f"{running.url}/v1/models").json()["models"]
        assert model["decoding"] == "beam search, 3 beams, length penalty 1, no trigram repeated"
        for fields, decoding in [
            ({}, own.decoding),
            ({"beam_size": 2}, own.decoding.replace(beam_size=2)),
        ]:
            response = _post(running.url, images[0], **fields)
            assert response.status_code == 200, response.text
            [caption] = response.json()["captions"]
            expected = own.caption(load_image(images[0]), decoding=decoding)
            assert caption["text"] == expected.text, fields
            assert caption["logprob"] == pytest.approx(expected.score, abs=1e-5), fields


def test_a_request_without_beams_gets_the_models_own(images, monkeypatch) -> None:
    """5 beams and no trigram repeated, as the model's config.json says; a request's beams or
    n_best change only what they name."""
    own = make_repetitive(make_tiny_captioner("lstm", max_len=8))
    own.decoding = DecodingConfig(beam_size=5, block_trigrams=True, max_len=7)
    asked: list[DecodingConfig] = []
    real = own.caption
    monkeypatch.setattr(
        own, "caption", lambda *a, **kw: asked.append(kw["decoding"]) or real(*a, **kw)
    )
    with BackgroundServer(create_app(CaptionService({"own": own}))) as running:
        for fields, decoding in [
            ({}, own.decoding),
            ({"n_best": 2}, own.decoding.replace(n_best=2)),
            ({"n_best": 6}, own.decoding.replace(beam_size=6, n_best=6)),
            ({"beam_size": 2}, own.decoding.replace(beam_size=2)),
        ]:
            asked.clear()
            response = _post(running.url, images[0], **fields)
            assert response.status_code == 200, response.text
            assert asked == [decoding], fields
            for caption in response.json()["captions"]:
                assert not repeats_a_trigram(caption["text"]) and len(caption["words"]) == 7
        [listed] = httpx.get(f"{running.url}/v1/models").json()["models"]
        assert listed["max_len"] == 7
    # More beams than a request may ask for is refused when the service is made.
    own.decoding = DecodingConfig(beam_size=17)
    with pytest.raises(UserError, match="model own: its decoding has 17 beams"):
        CaptionService({"own": own})


def test_json_with_base64_gives_the_same_caption(server, images) -> None:
    text = _post(server.url, images[1]).json()["captions"][0]["text"]
    encoded = base64.b64encode(images[1].read_bytes()).decode()
    for image in (encoded, f"data:image/png;base64,{encoded}"):
        response = httpx.post(f"{server.url}/v1/captions", json={"image": image, "beam_size": 3})
        assert response.status_code == 200, response.text
        assert response.json()["captions"][0]["text"] == text


def test_n_best_and_beam_size(server, captioner, images) -> None:
    body = _post(server.url, images[2], beam_size=4, n_best=3).json()
    best = captioner.caption(load_image(images[2]), decoding=DecodingConfig(beam_size=4, n_best=3))
    assert [c["text"] for c in body["captions"]] == [c.text for c in [best, *best.alternatives]]
    greedy = captioner.caption(load_image(images[2]), beam_size=1)
    assert _post(server.url, images[2], beam_size=1).json()["captions"][0]["text"] == greedy.text


def test_attention_is_one_grid_per_word(server, images) -> None:
    [caption] = _post(server.url, images[0], with_attention=True).json()["captions"]
    attention = caption["attention"]
    assert (attention["rows"], attention["cols"]) == (4, 4)  # the tiny small CNN's grid
    maps = torch.tensor(attention["maps"])
    assert maps.shape == (len(caption["words"]), 4, 4)
    assert torch.allclose(maps.sum((1, 2)), torch.ones(len(maps)), atol=1e-3)


def test_scores_are_clip_s_with_a_clip(captioner, images, tmp_path) -> None:
    bundle = load_clip(make_tiny_clip(tmp_path))
    with BackgroundServer(create_app(CaptionService({"tiny": captioner}, bundle))) as server:
        assert httpx.get(f"{server.url}/v1/models").json()["clip"] == bundle.name
        captions = _post(server.url, images[3], n_best=2, with_scores=True).json()["captions"]
        unscored = _post(server.url, images[3]).json()["captions"]
    embedder = ClipEmbedder(bundle)
    image = embedder.embed_images([load_image(images[3])])  # (1, P)
    texts = embedder.embed_texts([c["text"] for c in captions], prefix=CLIP_S_PREFIX)  # (2, P)
    expected = clip_s(image.expand(2, -1), texts).tolist()
    assert [c["score"] for c in captions] == pytest.approx(expected, abs=1e-5)
    assert unscored[0]["score"] is None  # with_scores not asked


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, and no pixels: a decompression bomb as far as
    anyone reads before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_uploads_that_are_refused(captioner, images, tmp_path) -> None:
    config = ServerConfig(max_upload_mb=0.005, max_pixels=100_000)  # 5,000 bytes; 0.1 MP
    big = tmp_path / "big.png"
    big.write_bytes(images[0].read_bytes() + bytes(6000))  # a valid PNG with trailing bytes
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(images[0].read_bytes()[:200])
    many = tmp_path / "many.png"
    many.write_bytes(_png_header_only(1000, 1000))  # 1 MP: over --max-pixels
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(20_000, 20_000))  # 400 MP: Pillow's own bomb guard
    notes = tmp_path / "notes.png"
    notes.write_text("these are my holiday notes\n")
    # Streamed without a Content-Length (chunked): refused while it arrives.
    multipart = "multipart/form-data; boundary=x"
    part = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    with BackgroundServer(create_app(CaptionService({"tiny": captioner}), config)) as server:
        url = f"{server.url}/v1/captions"
        cases = {
            "big.png: image file: over the limit of 5,000 bytes": (413, _post(server.url, big)),
            "request body of 100,000 bytes": (413, httpx.post(url, content=bytes(100_000))),
            "request body: over": (413, httpx.post(url, content=iter([part] + [bytes(20_000)] * 5),
                                                   headers={"content-type": multipart})),
            "notes.png: not an image file": (415, _post(server.url, notes)),
            "content type 'text/plain'": (
                415, httpx.post(url, content=b"hi", headers={"content-type": "text/plain"})
            ),
            "truncated.png: corrupt or truncated image": (422, _post(server.url, truncated)),
            "many.png: image is 1000x1000 = 1,000,000 pixels, over the limit of 100,000": (
                422, _post(server.url, many)
            ),
            "bomb.png: too large, possible decompression bomb": (422, _post(server.url, bomb)),
            "multipart field `image`: missing": (422, httpx.post(url, data={"model": "tiny"},
                                                                 files={"x": ("x", b"1")})),
            "request: beam_size": (422, _post(server.url, images[0], beam_size=0)),
            "request: beem_size": (422, _post(server.url, images[0], beem_size=2)),
            "n_best (3) must be at most beam_size (2)": (
                422, _post(server.url, images[0], beam_size=2, n_best=3)
            ),
            "model: 'other' is not loaded (loaded: tiny)": (
                422, _post(server.url, images[0], model="other")
            ),
            "`image`: not base64": (422, httpx.post(url, json={"image": "a!b"})),
            "request body: not JSON": (
                422, httpx.post(url, content=b"{", headers={"content-type": "application/json"})
            ),
        }  # fmt: skip
        for message, (status, response) in cases.items():
            assert response.status_code == status, (message, response.text)
            assert message in response.json()["detail"], response.text
        assert _post(server.url, images[0]).status_code == 200  # still serving


def test_api_key(captioner, images) -> None:
    app = create_app(CaptionService({"tiny": captioner}), api_key="s3cret")
    with BackgroundServer(app) as server:
        missing = _post(server.url, images[0])
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "API key missing" in missing.json()["detail"]
        wrong = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "API key wrong" in wrong.json()["detail"]
        for header in ({"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}):
            assert httpx.get(f"{server.url}/v1/models", headers=header).status_code == 200
        with images[0].open("rb") as f:
            ok = httpx.post(
                f"{server.url}/v1/captions",
                files={"image": f},
                headers={"Authorization": "Bearer s3cret"},
            )
        assert ok.status_code == 200
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # probes need no key
        assert httpx.get(f"{server.url}/").status_code == 200


async def _post_many(url: str, path: Path, n: int, **fields) -> list[httpx.Response]:
    data = {key: str(value) for key, value in fields.items()}
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(
            *(client.post(f"{url}/v1/captions", files={"image": (path.name, path.read_bytes())},
                          data=data) for _ in range(n))
        )  # fmt: skip


def _in_thread(coro) -> threading.Thread:
    thread = threading.Thread(target=asyncio.run, args=(coro,))
    thread.start()
    return thread


def test_concurrent_requests_with_the_same_options_share_a_batch(captioner, images) -> None:
    service = CaptionService({"tiny": captioner})
    gate = Gate(service)
    config = ServerConfig(batch_timeout_ms=5)
    with BackgroundServer(create_app(service, config)) as server:
        gate.close()
        results: dict[str, list[httpx.Response]] = {}

        async def first():
            results["first"] = await _post_many(server.url, images[0], 1)

        async def rest():
            greedy = _post_many(server.url, images[1], 5, beam_size=1)
            beam = _post_many(server.url, images[2], 3, beam_size=2)
            results["greedy"], results["beam"] = await asyncio.gather(greedy, beam)

        threads = [_in_thread(first())]
        assert gate.entered.wait(30)  # the model thread holds the first request
        threads.append(_in_thread(rest()))
        _wait_queued(server.url, 8)
        gate.open()
        for thread in threads:
            thread.join(30)
        health = httpx.get(f"{server.url}/healthz").json()
    assert [r.json()["batch"] for r in results["greedy"]] == [5] * 5  # one batch of 5
    assert [r.json()["batch"] for r in results["beam"]] == [3] * 3  # options differ: another
    assert sorted(gate.sizes) == [1, 3, 5]
    assert (health["batches"], health["images"]) == (3, 9)
    texts = {r.json()["captions"][0]["text"] for r in results["greedy"]}
    assert texts == {captioner.caption(load_image(images[1]), beam_size=1).text}


def test_batcher_waits_only_for_requests_on_their_way() -> None:
    async def scenario() -> list[list[int]]:
        calls: list[list[int]] = []

        def run_batch(key, items):
            calls.append(list(items))
            return [item * 10 for item in items]

        batcher = MicroBatcher(run_batch, max_batch=8, max_wait_s=60, max_queue=8)
        consumer = asyncio.create_task(batcher.run())
        # Nothing else on its way: runs at once, though a batch may wait a minute.
        assert await asyncio.wait_for(batcher.submit("k", 1), 30) == 10
        with batcher.incoming():  # another request is uploading
            first = asyncio.create_task(batcher.submit("k", 2))
            await asyncio.sleep(0.05)
            assert not first.done()  # held for it
            second = asyncio.create_task(batcher.submit("k", 3))
        assert (await first, await second) == (20, 30)
        await batcher.close()
        consumer.cancel()
        return calls

    assert asyncio.run(scenario()) == [[1], [2, 3]]


def test_queue_full_is_503_with_retry_after_and_slow_is_504(captioner, images) -> None:
    service = CaptionService({"tiny": captioner})
    gate = Gate(service)
    config = ServerConfig(max_batch=1, max_queue=1, timeout_s=2.0)
    with BackgroundServer(create_app(service, config)) as server:
        gate.close()
        results: dict[str, list[httpx.Response]] = {}

        async def one(name: str):
            results[name] = await _post_many(server.url, images[0], 1)

        threads = [_in_thread(one("running"))]
        assert gate.entered.wait(30)  # one request in the model thread,
        threads.append(_in_thread(one("waiting")))
        _wait_queued(server.url, 1)  # one waiting: the queue is full
        full = _post(server.url, images[0])
        assert full.status_code == 503
        assert int(full.headers["retry-after"]) >= 1
        assert "waiting for the model" in full.json()["detail"]
        for thread in threads:  # both time out behind the closed gate
            thread.join(30)
        assert [results[name][0].status_code for name in ("running", "waiting")] == [504, 504]
        assert "not captioned within 2 s" in results["waiting"][0].json()["detail"]
        gate.open()
        assert _post(server.url, images[0]).status_code == 200
        assert httpx.get(f"{server.url}/healthz").json()["queued"] == 0


def test_a_models_own_refusal_is_422(captioner, images) -> None:
    """What the library refuses for a model (a UserError: say, attention maps from a decoder
    that gives none) reaches the client as 422 with its sentence, not as a server error."""
    service = CaptionService({"tiny": captioner})
    run = service.run_batch

    def refuse_attention(key, jobs):
        if key.with_attention:
            raise UserError("attention maps: this decoder gives no attention weights")
        return run(key, jobs)

    service.run_batch = refuse_attention
    with BackgroundServer(create_app(service)) as server:
        refused = _post(server.url, images[0], with_attention=True)
        assert refused.status_code == 422
        assert refused.json()["detail"] == (
            "model tiny: attention maps: this decoder gives no attention weights"
        )
        assert _post(server.url, images[0]).status_code == 200


def test_one_log_line_per_request(server, images, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="finecap.serve"):
        _post(server.url, images[0])
        _post(server.url, images[0], beam_size=0)
        httpx.get(f"{server.url}/healthz")
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "finecap.serve"]
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("POST", "/v1/captions", 200),
        ("POST", "/v1/captions", 422),
        ("GET", "/healthz", 200),
    ]
    assert records[0]["model"] == "tiny" and records[0]["batch"] == 1
    assert records[0]["image"] == images[0].name and records[0]["ms"] > 0
    assert "beam_size" in records[1]["error"]


def test_health_models_schema_and_page(server) -> None:
    health = httpx.get(f"{server.url}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    [model] = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert model["name"] == "tiny" and model["default"] and model["decoder"] == "transformer"
    assert model["decoding"] == "beam search, 3 beams"
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/captions", "/v1/models", "/healthz"} <= set(schema["paths"])
    body = schema["paths"]["/v1/captions"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} == set(body)
    assert {"401", "413", "415", "422", "503", "504"} <= set(
        schema["paths"]["/v1/captions"]["post"]["responses"]
    )
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and 'id="file"' in page.text
    for name in ("app.js", "style.css"):
        assert httpx.get(f"{server.url}/static/{name}").status_code == 200
    # Works offline: nothing in the page's files is fetched from another host.
    for file in Path(str(STATIC)).iterdir():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", file.read_text()), file


def test_command_refuses_before_listening(tmp_path, capsys) -> None:
    assert main(["serve", "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a finecap captioner folder" in err
    assert main(["serve", "--api-key-file", str(tmp_path / "key.txt")]) == 2
    assert "--api-key-file" in capsys.readouterr().err
    (tmp_path / "key.txt").write_text("\n")
    assert main(["serve", "--api-key-file", str(tmp_path / "key.txt")]) == 2
    assert "the first line is empty" in capsys.readouterr().err
    with BackgroundServer(create_app(CaptionService({"x": make_tiny_captioner()}))) as busy:
        port = busy.url.rsplit(":", 1)[1]
        assert main(["serve", "--port", port]) == 2
    assert f"--port {port}: cannot listen" in capsys.readouterr().err


def test_the_command_serves_until_sigterm(tmp_path) -> None:
    """The real `finecap serve` process: a saved model, a key file, port 0, one JSON log
    line per request on stderr, a graceful shutdown on SIGTERM."""
    model = tmp_path / "model"
    make_talkative(make_tiny_captioner("lstm", seed=3, max_len=5)).save_pretrained(model)
    (tmp_path / "key.txt").write_text("k3y\n")
    command = [sys.executable, "-m", "finecap.cli", "serve", "--model", str(model)]
    command += ["--port", "0", "--api-key-file", str(tmp_path / "key.txt"), "--threads", "1"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stderr.readline()
        url = re.search(r"open (http://\S+)/", first).group(1)
        assert first.startswith(f"finecap serve: {os.path.normpath(model)} on cpu")
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                threading.Event().wait(0.05)
        image = save_images(tmp_path, 1)[0]
        with image.open("rb") as f:
            response = httpx.post(
                f"{url}/v1/captions", files={"image": f}, headers={"X-API-Key": "k3y"}
            )
        assert response.status_code == 200
        assert len(response.json()["captions"][0]["words"]) == 5
    finally:
        process.send_signal(signal.SIGTERM)
        err = process.communicate(timeout=30)[1]
    # uvicorn shuts down gracefully, then re-raises the signal: the shell sees 143, as for
    # any program stopped by SIGTERM.
    assert "Application shutdown complete" in err
    assert process.returncode in (0, -signal.SIGTERM)
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [(r["path"], r["status"]) for r in logged] == [
        *[("/healthz", 200)] * (len(logged) - 1),
        ("/v1/captions", 200),
    ]


def test_no_model_flag_serves_the_default_and_the_mle_model_beside_it() -> None:
    """`finecap serve` alone: the distinctive default first (requests' default), the bundled MLE
    model as `mle`, both resolving to their bundled folders."""
    from finecap.captioner import BUNDLED_MODELS
    from finecap.serve.service import model_names, resolve_model

    names = model_names([])
    assert names == {"default": None, "mle": "mle"}
    default, mle = (resolve_model(value) for value in names.values())
    assert default.info["task"] == "scst" and mle.info["task"] == "mle"
    assert BUNDLED_MODELS["mle"].name == "mle_model"
    assert model_names(["runs/a/model/"]) == {"runs/a/model": "runs/a/model/"}
