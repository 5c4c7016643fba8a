"""The scenes CLIP's towers, built from a typed config, and how finecap runs them: text and
image features in the shared space, with the batching and pooling details Hugging Face CLIP
leaves to the caller. Used by CLIP training (`finecap.clip.train`) and the grammar head.

`tower: resnet` is a `finecap.clip.conv_clip.ConvClipModel` (a ResNet image tower beside CLIP's
text tower); `tower: vit` a plain `CLIPModel`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTokenizer,
    PreTrainedModel,
)

from finecap.clip.config import ScenesClipConfig, resnet_stride


def build_scenes_clip(cfg: ScenesClipConfig, tokenizer: CLIPTokenizer) -> PreTrainedModel:
    """A randomly initialised CLIP whose text config agrees with `tokenizer`: a `CLIPModel`
    (tower "vit") or a `ConvClipModel` with a ResNet image tower ("resnet").

    `eos_token_id` must be the tokenizer's EOS id: Hugging Face CLIP pools the text at the
    first EOS position (any id but the legacy value 2).
    """
    assert tokenizer.eos_token_id != 2, "id 2 selects HF CLIP's legacy argmax pooling"
    # The text tower's size, and the ViT's: both are cfg.layers blocks of width cfg.hidden.
    transformer = dict(
        hidden_size=cfg.hidden,
        intermediate_size=4 * cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
    )
    text = dict(
        **transformer,
        vocab_size=len(tokenizer),
        max_position_embeddings=cfg.max_text_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if cfg.tower == "resnet":
        return build_resnet_clip(cfg, CLIPTextConfig(**text))
    vision = dict(**transformer, image_size=cfg.image_size, patch_size=cfg.patch_size)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim)
    return CLIPModel(config)


def build_resnet_clip(cfg: ScenesClipConfig, text: CLIPTextConfig) -> PreTrainedModel:
    """CLIP's text tower beside a ResNet image tower (`finecap.clip.conv_clip`).

    `hidden_size` is what the dual encoder reads as the image tower's width (a ResNet's own
    config has only per-stage widths).
    """
    from transformers import ResNetConfig

    from finecap.clip.conv_clip import ConvClipConfig, ConvClipModel

    vision = ResNetConfig(
        embedding_size=cfg.conv_stem_width,
        hidden_sizes=list(cfg.conv_widths),
        depths=list(cfg.conv_depths),
        layer_type="basic",
        downsample_in_first_stage=False,
        image_size=cfg.image_size,
        hidden_size=cfg.conv_widths[-1],
    )
    config = ConvClipConfig.from_vision_text_configs(
        vision,
        text,
        projection_dim=cfg.projection_dim,
        pool=cfg.conv_pool,
        pool_heads=cfg.conv_pool_heads,
        pool_coords=cfg.conv_coords,
    )
    return ConvClipModel(config)


def vision_grid(vision_config) -> int:  # noqa: ANN001 (a Hugging Face vision config)
    """Side of the image tower's token grid: ViT patches, or a ResNet's last stage."""
    if vision_config.model_type == "resnet":
        return vision_config.image_size // resnet_stride(len(vision_config.hidden_sizes))
    return vision_config.image_size // vision_config.patch_size


def patch_tokens(hidden: torch.Tensor) -> torch.Tensor:
    """(B, N, H) grid tokens of an image tower's last hidden state, row-major: a ViT's
    (B, 1 + N, H) without [CLS], or a ResNet's (B, H, g, g) map flattened."""
    if hidden.ndim == 4:
        return hidden.flatten(2).transpose(1, 2)
    return hidden[:, 1:]


def build_image_processor(image_size: int):
    """CLIP's preprocessing (resize, centre crop, CLIP mean/std) at `image_size`."""
    try:  # transformers 5 without torchvision: the PIL processor (same numbers, no warning)
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 4
        Processor = CLIPImageProcessor
    return Processor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def pooled_texts(
    model: PreTrainedModel, tokenizer: CLIPTokenizer, texts: list[str], buckets: int = 4
) -> torch.Tensor:
    """Text tower pooled outputs (N, text_hidden), at the EOS position, in input order.

    Texts are sorted by length and run in `buckets` groups, so a few long descriptions do not
    pad every short caption of the batch to their length (~2-3x less work on mixed batches).
    """
    device = model.logit_scale.device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    size = max(1, -(-len(texts) // buckets))
    parts = []
    for start in range(0, len(order), size):
        chunk = [texts[i] for i in order[start : start + size]]
        enc = tokenizer(chunk, padding=True, truncation=True, return_tensors="pt").to(device)
        parts.append(model.text_model(**enc).pooler_output)
    pooled = torch.cat(parts)  # (N, text_hidden) in sorted order
    return pooled[torch.argsort(torch.tensor(order, device=device))]


def encode_texts(
    model: PreTrainedModel, tokenizer: CLIPTokenizer, texts: list[str]
) -> torch.Tensor:
    """Projected, L2-normalised text features (N, P); gradients flow when enabled."""
    pooled = pooled_texts(model, tokenizer, texts)  # (N, text_hidden)
    return F.normalize(model.text_projection(pooled), dim=-1)


def encode_pixels(model: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    """Projected, L2-normalised image features (N, P) from preprocessed pixels (N, 3, S, S)."""
    pooled = model.vision_model(pixel_values=pixels.to(model.logit_scale.device)).pooler_output
    return F.normalize(model.visual_projection(pooled), dim=-1)
