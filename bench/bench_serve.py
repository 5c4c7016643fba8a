"""`finecap serve` under load: throughput and p50/p95 latency at 1, 8, 32 and 64 concurrent
clients, dynamic batching on (--max-batch 32) and off (--max-batch 1).

    python bench/bench_serve.py [--quick] [--runs 3] [--out bench/results/serve.md]

The server is the real command (`python -m finecap.cli serve`, the bundled default model,
beam 3 as `finecap caption`), one process per mode, both running throughout: each cell's runs
alternate between the modes, so on a shared machine both see the same load. The clients are
asyncio tasks in this process, each posting rendered scenes images one after another
(multipart, as `curl -F image=@...` does) through aiohttp: httpx's async client spent 6x more
CPU per request at 32 clients here, which would have been counted against the server. Every
request must come back 200 with a caption. Throughput = requests / wall time of the cell;
latency is per request, client side. Each cell is the median of --runs runs after a warm-up
run. Client and server share the machine's cores: on 2 cores the client's own HTTP work is
part of what is measured, in both modes alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx

from finecap.io import atomic_write_text
from finecap.scenes import generate_world
from machine_info import machine, median_seconds

CLIENTS = (1, 8, 32, 64)
MODES = {"on": 32, "off": 1}  # batching -> --max-batch
AIM = 5.0  # batching's throughput over no batching at 32 clients


@dataclass
class Cell:
    mode: str
    clients: int
    requests: int
    throughput: float  # requests / s, median over runs
    p50_ms: float
    p95_ms: float
    mean_batch: float  # images per decoder batch, from /healthz


class Server:
    """`finecap serve` in a child process, on a free port."""

    def __init__(self, max_batch: int, threads: int) -> None:
        command = [sys.executable, "-m", "finecap.cli", "serve", "--port", "0"]
        command += ["--max-batch", str(max_batch), "--threads", str(threads)]
        command += ["--max-queue", "4096", "--log-level", "warning"]
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        for line in self.process.stderr:
            found = re.search(r"open (http://\S+)/", line)
            if found:
                url = found.group(1)
                break
        else:
            raise RuntimeError(f"finecap serve exited with {self.process.wait()}")
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    return url
            except httpx.TransportError:
                pass  # not listening yet: ask again
            time.sleep(0.1)
        raise RuntimeError("finecap serve never became healthy")

    def health(self) -> dict:
        return httpx.get(f"{self.url}/healthz").json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def _cell(url: str, images: list[bytes], clients: int, requests: int) -> tuple[float, list]:
    """(wall seconds, per-request latencies in s) of `requests` spread over `clients`."""
    per_client = [requests // clients + (c < requests % clients) for c in range(clients)]
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def one_client(c: int) -> None:
            for r in range(per_client[c]):
                form = aiohttp.FormData()
                form.add_field("image", images[(c * 7 + r) % len(images)], filename="s.png")
                start = time.perf_counter()
                async with session.post("/v1/captions", data=form) as response:
                    body = await response.json()
                latencies.append(time.perf_counter() - start)
                if response.status != 200 or not body["captions"][0]["text"]:
                    raise RuntimeError(f"HTTP {response.status}: {str(body)[:200]}")

        start = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        return time.perf_counter() - start, latencies


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _run_once(server: Server, images: list[bytes], clients: int, requests: int) -> tuple:
    """(requests/s, p50 ms, p95 ms, images per batch) of one run of a cell."""
    before = server.health()
    wall, latencies = asyncio.run(_cell(server.url, images, clients, requests))
    after = server.health()
    batch = (after["images"] - before["images"]) / (after["batches"] - before["batches"])
    return (
        requests / wall,
        1000 * _percentile(latencies, 50),
        1000 * _percentile(latencies, 95),
        batch,
    )


def measure(
    servers: dict[str, Server], images: list[bytes], clients: int, requests: int, runs: int
) -> list[Cell]:
    """One cell per mode at `clients`. The modes' runs alternate (on, off, on, off, ...), so
    on a shared machine both see the same background load."""
    for server in servers.values():  # warm-up: the batch sizes this cell will see run once
        asyncio.run(_cell(server.url, images, clients, min(requests, max(16, 2 * clients))))
    results: dict[str, list[tuple]] = {mode: [] for mode in servers}
    for _ in range(runs):
        for mode, server in servers.items():
            results[mode].append(_run_once(server, images, clients, requests))
    return [
        Cell(mode, clients, requests, *map(statistics.median, zip(*rows, strict=True)))
        for mode, rows in results.items()
    ]


def model_ceiling(images: list[bytes], threads: int, runs: int) -> tuple[float, float]:
    """(ms per image one at a time, ms per image in one batch of 32): the bundled model alone,
    in this process, as the server calls it: what batching gains before HTTP, uploads and
    image decoding are counted."""
    import io

    import torch
    from PIL import Image

    from finecap.captioner import Captioner

    torch.set_num_threads(threads)
    captioner = Captioner.from_pretrained()
    decoded = [Image.open(io.BytesIO(data)).convert("RGB") for data in images[:32]]

    def timed(fn) -> float:  # ms per image
        return median_seconds(fn, runs) * 1000 / len(decoded)

    one = timed(lambda: [captioner.caption([image]) for image in decoded])
    batched = timed(lambda: captioner.caption(decoded, batch_size=len(decoded)))
    return one, batched


def _line(cell: Cell) -> str:
    return (
        f"| {cell.mode} | {cell.clients} | {cell.requests} | {cell.throughput:.1f} | "
        f"{cell.p50_ms:.0f} | {cell.p95_ms:.0f} | {cell.mean_batch:.1f} |"
    )


def _load_note(load: tuple[float, float]) -> str:
    seen = f"1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end"
    if max(load) <= (os.cpu_count() or 1) + 0.5:
        return f"Quiet machine ({seen}, on {os.cpu_count()} cores)."
    return (
        f"**Shared machine** ({seen}, on {os.cpu_count()} cores): other jobs ran at the same "
        "time, so absolute numbers are pessimistic and noisy; the ratios are the point."
    )


def report(
    cells: list[Cell], ceiling: tuple[float, float], argv: list[str], load, runs: int, threads: int
) -> str:
    by = {(c.mode, c.clients): c for c in cells}
    ratios = []
    for clients in CLIENTS:
        on, off = by.get(("on", clients)), by.get(("off", clients))
        if on and off:
            ratio = on.throughput / off.throughput
            aim = (
                f" (aim >= {AIM:g}x: {'met' if ratio >= AIM else 'not met'})"
                if clients == 32
                else ""
            )
            ratios.append(
                f"- {clients} clients: batching gives **{ratio:.1f}x** the throughput{aim}"
            )
    policy = os.environ.get("OMP_WAIT_POLICY")
    env = f"OMP_WAIT_POLICY={policy} " if policy else ""
    return "\n".join(
        [
            "# Serving: throughput and latency (`finecap serve`, CPU)",
            "",
            f"Command: `{' '.join([f'{env}python bench/bench_serve.py', *argv])}`",
            "",
            f"Machine: {machine()}; median of {runs} runs after a warm-up run, the two modes' runs "
            "alternating. Each server ran "
            f"with `--threads {threads}`; the clients (aiohttp, asyncio) in the benchmark's own "
            "process on the same cores.",
            "",
            _load_note(load),
            "",
            "Bundled default model, beam 3 (the `finecap caption` default), rendered scenes "
            "images (96 px PNG, multipart uploads). Batching on = `--max-batch 32 "
            "--batch-timeout-ms 10`; off = `--max-batch 1`. Latency is per request, client side.",
            "",
            "| batching | clients | requests | requests/s | p50 ms | p95 ms | images per batch |",
            "|---|---|---|---|---|---|---|",
            *(_line(c) for c in cells),
            "",
            "## Ratios",
            "",
            *ratios,
            f"- the model alone (no HTTP; same process, {threads} threads): "
            f"{ceiling[0]:.1f} ms per image one at a time, {ceiling[1]:.1f} ms in a batch of 32: "
            f"**{ceiling[0] / ceiling[1]:.1f}x** (measured after the cells, so under the "
            "machine's load of that moment)",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per cell (median)")
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    parser.add_argument("--out", default="bench/results/serve.md", help="markdown report")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        dataset = generate_world(Path(tmp) / "scenes", n=32, seed=0)
        images = [p.read_bytes() for p in sorted((dataset.parent / "images").glob("*.png"))]
    servers = {mode: Server(max_batch, args.threads) for mode, max_batch in MODES.items()}
    cells: list[Cell] = []
    try:
        for clients in CLIENTS:
            requests = max(32 if args.quick else 96, (2 if args.quick else 6) * clients)
            cells += measure(servers, images, clients, requests, max(args.runs, 1))
            for cell in cells[-len(servers) :]:
                print(_line(cell), file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    cells.sort(key=lambda cell: (list(MODES).index(cell.mode), cell.clients))
    ceiling = model_ceiling(images, args.threads, max(args.runs, 1))
    given = sys.argv[1:] if argv is None else argv
    load = (load_start, os.getloadavg()[0])
    text = report(cells, ceiling, given, load, args.runs, args.threads)
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
