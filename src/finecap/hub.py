"""Loading pretrained Hugging Face weights from a hub name or a local folder.

Offline, a missing checkpoint must cost the user one clear sentence, not a stack of
connection errors, so every pretrained loader in finecap goes through `from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finecap.errors import UserError


class WeightsNotFoundError(UserError, RuntimeError):
    """Pretrained weights that are neither in a local folder nor downloadable."""


def from_pretrained(cls: Any, name_or_path: str | Path, what: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained(name_or_path)` with a one-sentence error when weights are missing."""
    name = str(name_or_path)
    local = Path(name)
    if local.exists() and not local.is_dir():
        raise WeightsNotFoundError(
            f"{what} weights {name!r} must be a folder saved with save_pretrained"
        )
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
