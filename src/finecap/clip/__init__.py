"""CLIP in Hugging Face format: loading and embedding (`embed`), scenes CLIP training and the
grammar head (their own modules).

Importing this package is cheap: torch and transformers load on first use of a name below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finecap.clip.embed import ClipBundle, ClipEmbedder, ClipUnavailableError, load_clip

__all__ = ["ClipBundle", "ClipEmbedder", "ClipUnavailableError", "load_clip"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from finecap.clip import embed

        return getattr(embed, name)
    raise AttributeError(f"module 'finecap.clip' has no attribute {name!r}")
