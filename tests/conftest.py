"""Test-wide settings: tiny models run fastest on one thread, and OpenMP threads that sleep
instead of spinning keep parallel test processes from starving each other; finecap's cache
(the CIDEr-D reward's scorers) goes to a temporary folder, not the user's home."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["FINECAP_CACHE"] = tempfile.mkdtemp(prefix="finecap-test-cache-")
atexit.register(shutil.rmtree, os.environ["FINECAP_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402  (after the OpenMP setting)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Each test starts on one thread (tiny models are fastest so, and far faster on a busy
    shared machine), whatever an earlier test — a training run — set."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
