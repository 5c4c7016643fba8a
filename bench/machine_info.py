"""Shared by the benchmarks: the machine line every one prints (CPU model, cores, load, torch
threads) and a median timer."""

from __future__ import annotations

import os
import platform
import subprocess


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln)
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    load = f", load average {os.getloadavg()[0]:.1f} at start" if hasattr(os, "getloadavg") else ""
    try:
        import torch

        threads = f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        threads = ""
    return f"{model}, nproc {os.cpu_count()}{load}, Python {platform.python_version()}{threads}"


def timed_runs(fn, runs: int) -> tuple[float, list[float], object]:  # noqa: ANN001
    """`runs` calls of `fn`: (median wall-clock seconds, every run's seconds, the last result)."""
    import statistics
    import time

    seconds, out = [], None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), seconds, out


def median_seconds(fn, runs: int) -> float:  # noqa: ANN001
    """Median wall-clock seconds of `runs` calls of `fn`, after one warm-up call."""
    fn()
    return timed_runs(fn, runs)[0]
