"""Test-wide settings: tiny models run fastest on one thread, and OpenMP threads that sleep
instead of spinning keep parallel test processes from starving each other."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402  (after the OpenMP setting)

torch.set_num_threads(1)
