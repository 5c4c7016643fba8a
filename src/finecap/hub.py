"""Loading pretrained Hugging Face weights from a hub name or a local folder.

Offline, a missing checkpoint must cost the user one clear sentence at once, not a stack of
connection errors after half a minute of HTTP retries. So every pretrained loader in finecap
asks `offline()` first: with `HF_HUB_OFFLINE` set, or when the hub's host cannot be reached
(one TCP connect, answered in milliseconds on a machine without a network), hub names are
looked up in the local cache only (`local_files_only=True`).
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from finecap.errors import UserError

TRUE = {"1", "true", "yes", "on"}


class WeightsNotFoundError(UserError, RuntimeError):
    """Pretrained weights that are neither in a local folder nor downloadable."""


@functools.cache
def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether a TCP connection to the Hugging Face hub's host opens (checked once). Behind a
    proxy a direct connection proves nothing, so the hub counts as reachable then."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout):
            return True
    except OSError:
        return False


def offline() -> bool:
    """True when hub names must come from the local cache: HF_HUB_OFFLINE, or no hub."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in TRUE:
        return True
    return not hub_reachable()


def from_pretrained(cls: Any, name_or_path: str | Path, what: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained(name_or_path)` with a one-sentence error when weights are missing."""
    name = str(name_or_path)
    local = Path(name)
    if local.exists() and not local.is_dir():
        raise WeightsNotFoundError(
            f"{what} weights {name!r} must be a folder saved with save_pretrained"
        )
    if not local.is_dir() and offline():
        kwargs.setdefault("local_files_only", True)
    try:
        return cls.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        if local.is_dir():
            raise WeightsNotFoundError(
                f"{what} folder {name!r} could not be loaded: {err}"
            ) from err
        raise WeightsNotFoundError(
            f"{what} weights {name!r} are not available offline: download them on a machine with "
            f"internet (`huggingface-cli download {name} --local-dir DIR`) and pass DIR instead of "
            f"{name!r}."
        ) from err
