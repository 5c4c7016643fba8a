"""CLIP-S and RefCLIP-S (Hessel et al. 2021, "CLIPScore"), on precomputed CLIP embeddings.

    CLIP-S(c, v)    = w * max(cos(E_text("A photo depicts " + c), E_img(v)), 0),  w = 2.5
    RefCLIP-S(c, v) = harmonic mean of CLIP-S(c, v) and a reference term over references R:
        "hessel" (Hessel's released clipscore.py): max_r cos(c, r)          (raw cosine)
        "cho"    (Cho et al. 2022, CLIP-Caption-Reward): max_r w * max(cos(c, r), 0)

References are embedded with the same "A photo depicts " prefix as the candidate: both
released implementations embed them through the candidate's text path (Hessel's
`CLIPCapDataset(prefix="A photo depicts")`, Cho's `text_extract(ref_text, prompt=...)`).

The pure functions below are what the evaluation suite *and* the CLIP-S rewards call, so a
reward and its reported metric are the same code. Dimension letters: N captions, K
references per caption (padded; `ref_mask` marks real ones), P projection size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from finecap.metrics.suite import EvalContext, GroupScores, System, register_metric

CLIP_S_PREFIX = "A photo depicts "
CLIP_S_WEIGHT = 2.5
REFCLIP_VARIANTS = ("hessel", "cho")


def clip_s(img_emb: torch.Tensor, txt_emb: torch.Tensor, w: float = CLIP_S_WEIGHT) -> torch.Tensor:
    """(N, P) unit image embeddings, (N, P) unit prefixed-caption embeddings -> (N,)."""
    return w * (img_emb * txt_emb).sum(-1).clamp(min=0)


def reference_term(
    txt_emb: torch.Tensor,
    ref_emb: torch.Tensor,
    ref_mask: torch.Tensor | None = None,
    variant: str = "hessel",
    w: float = CLIP_S_WEIGHT,
) -> torch.Tensor:
    """Best match of each caption among its references -> (N,); 0 where it has none.

    txt_emb (N, P), ref_emb (N, K, P), ref_mask (N, K) bool (None: all real).
    """
    if variant not in REFCLIP_VARIANTS:
        raise ValueError(
            f"unknown RefCLIP-S variant {variant!r}; expected one of {REFCLIP_VARIANTS}"
        )
    cos = torch.einsum("np,nkp->nk", txt_emb, ref_emb)  # (N, K)
    sims = cos if variant == "hessel" else w * cos.clamp(min=0)
    if ref_mask is None:
        ref_mask = torch.ones_like(cos, dtype=torch.bool)
    best = sims.masked_fill(~ref_mask, float("-inf")).max(dim=-1).values  # (N,)
    return torch.where(ref_mask.any(-1), best, torch.zeros_like(best))


def harmonic_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """2ab / (a + b), elementwise, 0 where a + b = 0 (both terms zero)."""
    total = a + b
    safe = torch.where(total == 0, torch.ones_like(total), total)
    return torch.where(total == 0, torch.zeros_like(total), 2 * a * b / safe)


def refclip_s(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    ref_emb: torch.Tensor,
    ref_mask: torch.Tensor | None = None,
    variant: str = "hessel",
    w: float = CLIP_S_WEIGHT,
) -> torch.Tensor:
    """RefCLIP-S -> (N,). img_emb, txt_emb (N, P); ref_emb (N, K, P); ref_mask (N, K)."""
    return harmonic_mean(
        clip_s(img_emb, txt_emb, w), reference_term(txt_emb, ref_emb, ref_mask, variant, w)
    )


def pad_references(
    ref_emb_flat: torch.Tensor, counts: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (sum(counts), P) reference embeddings -> padded (N, K, P) and mask (N, K)."""
    n, k = len(counts), max(counts, default=0)
    padded = ref_emb_flat.new_zeros(n, max(k, 1), ref_emb_flat.shape[-1])
    mask = torch.zeros(n, max(k, 1), dtype=torch.bool)
    start = 0
    for i, c in enumerate(counts):
        padded[i, :c] = ref_emb_flat[start : start + c]
        mask[i, :c] = True
        start += c
    return padded, mask


def embed_references(
    embedder, references: Sequence[Sequence[str]], prefix: str = CLIP_S_PREFIX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed each caption's references (with the CLIP-S prefix) -> (N, K, P), mask (N, K).

    `embedder` is a `finecap.clip.ClipEmbedder` (anything with `embed_texts(texts, prefix)`).
    """
    flat = [r for refs in references for r in refs]
    emb = embedder.embed_texts(flat, prefix=prefix)  # (sum K_i, P)
    return pad_references(emb, [len(refs) for refs in references])


@register_metric("clipscore", ("CLIP-S", "RefCLIP-S"), needs=("images", "clip"))
def _clipscore_group(ctx: EvalContext, system: System, wanted: frozenset) -> GroupScores:
    """CLIP-S and RefCLIP-S (Hessel et al. 2021) with the given CLIP."""
    img = ctx.image_embeddings  # (N, P)
    txt = ctx.clip_texts(system.captions, CLIP_S_PREFIX)  # (N, P)
    per_image = {"CLIP-S": clip_s(img, txt).double().numpy()}  # both are means over images
    if "RefCLIP-S" in wanted:
        refs = ctx.references(system)
        key = ("clip_refs", tuple(map(tuple, refs)))
        ref_emb, mask = ctx.memo(key, lambda: embed_references(ctx.embedder, refs))
        variant = ctx.config.refclip_variant
        per_image["RefCLIP-S"] = refclip_s(img, txt, ref_emb, mask, variant).double().numpy()
        ctx.settings["refclip_variant"] = variant
        ctx.settings["refclip_reference_prefix"] = CLIP_S_PREFIX
    ctx.settings.update(clip=ctx.embedder.bundle.name, clip_s_prefix=CLIP_S_PREFIX)
    ctx.settings["clip_s_weight"] = CLIP_S_WEIGHT
    return GroupScores({m: float(v.mean()) for m, v in per_image.items()}, per_image=per_image)
