"""Settings of CLIP and grammar-head training: plain typed classes, importable without torch,
so `finecap clip train --help` is instant. The training code is `finecap.clip.train` and
`finecap.clip.grammar`."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from finecap.config import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Settings,
)
from finecap.scenes.changes import CHANGE_KINDS, ChangeKind
from finecap.train.settings import LightningConfig

CLIP_PROMPT = "A photo depicts "  # Hessel et al.'s CLIP-S prompt; see ClipTrainConfig.prompt_prob

NegativeKind = Literal["repeat", "remove", "insert", "swap", "shuffle"]
"""The grammar head's corruptions (`finecap.clip.grammar.NEGATIVES` implements each)."""
NEGATIVE_KINDS: tuple[str, ...] = get_args(NegativeKind)


VisionTower = Literal["vit", "resnet"]


def resnet_stride(stages: int) -> int:
    """Total stride of the scenes CLIP's ResNet: a stride-4 stem, then 2 per later stage."""
    return 4 * 2 ** (stages - 1)


class ScenesClipConfig(Settings):
    """Architecture of a CLIP trained from scratch (Hugging Face config fields).

    `tower: vit` is a `CLIPModel` (a ViT image tower). `tower: resnet` is a
    `finecap.clip.conv_clip.ConvClipModel`: Hugging Face's generic dual encoder with a ResNet
    image tower (basic blocks, batch norm) and the same CLIP text tower, projections and
    temperature. A ViT trained from scratch on a few thousand scenes does not learn their
    shapes in a CPU budget (no locality built in; README, "What the scenes CLIP sees"); the
    ResNet does. Both load with `finecap.clip.embed.load_clip`.
    """

    tower: VisionTower = "resnet"
    """Image tower: "resnet" (ConvClipModel; the scenes CLIP) or "vit" (CLIPModel)."""
    image_size: int = Field(96, ge=16)
    """Image tower input side in pixels."""
    patch_size: PositiveInt = 12
    """ViT patch side in pixels (96 / 12 = 8 x 8 patches + [CLS]); vit only."""
    conv_stem_width: PositiveInt = 32
    """ResNet stem channels (a stride-2 7x7 conv and a stride-2 max pool: stride 4)."""
    conv_widths: list[PositiveInt] = Field(default_factory=lambda: [64, 128, 256], min_length=1)
    """ResNet channels per stage (each stage after the first halves the grid); the last is
    the image tower's width. 96 px and three stages: a 6 x 6 grid of 16-px cells."""
    conv_depths: list[PositiveInt] = Field(default_factory=lambda: [1, 1, 1], min_length=1)
    """ResNet basic blocks per stage (as many as conv_widths)."""
    conv_pool: Literal["avg", "max", "attention", "gated"] = "avg"
    """How the ResNet's last grid becomes the image vector: average (ResNet's own), max,
    CLIP's attention pooling (position-aware; `finecap.clip.conv_clip.AttentionPool`), or an
    average weighted by a learned objectness gate (`finecap.clip.conv_clip.GatedPool`)."""
    conv_pool_heads: PositiveInt = 8
    """Attention heads of conv_pool "attention"; must divide the last of conv_widths."""
    conv_coords: bool = False
    """The gated pool mixes each cell's x, y into its features before pooling, so the image
    vector can say where each thing is (`finecap.clip.conv_clip.CoordMix`); conv_pool "gated"
    only. Measured with the relation head: relations stay at chance (README)."""
    hidden: PositiveInt = 192
    """Width of the text tower, and of the ViT (their MLPs are 4x wider)."""
    layers: PositiveInt = 4
    """Depth of the text tower and of the ViT."""
    heads: PositiveInt = 4
    """Attention heads of the text tower and of the ViT; must divide hidden."""
    projection_dim: PositiveInt = 128
    """Width of the shared image-text embedding space."""
    max_text_length: PositiveInt = 77
    """CLIP's context length; longer texts are truncated (EOS kept)."""
    bpe_vocab_size: int = Field(2000, ge=514)
    """Upper bound on the BPE vocabulary (256 bytes twice, BOS, EOS, then merges)."""

    @model_validator(mode="after")
    def _shapes_fit(self) -> ScenesClipConfig:
        if self.tower == "resnet":
            stride = resnet_stride(len(self.conv_widths))
            if len(self.conv_depths) != len(self.conv_widths):
                raise ValueError(
                    f"conv_depths ({self.conv_depths}) needs one entry per stage of "
                    f"conv_widths ({self.conv_widths})"
                )
            if self.conv_coords and self.conv_pool != "gated":
                raise ValueError(f"conv_coords needs conv_pool gated, not {self.conv_pool!r}")
            if self.conv_pool == "attention" and self.conv_widths[-1] % self.conv_pool_heads:
                raise ValueError(
                    f"conv_pool_heads ({self.conv_pool_heads}) must divide the last of "
                    f"conv_widths ({self.conv_widths[-1]})"
                )
            if self.image_size % stride:
                raise ValueError(
                    f"the ResNet's total stride ({stride}: 4, then 2 per later stage) "
                    f"must divide image_size ({self.image_size})"
                )
        elif self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size ({self.patch_size}) must divide image_size ({self.image_size})"
            )
        if self.hidden % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide hidden ({self.hidden})")
        return self


class ClipTrainConfig(Settings):
    """How to train (or fine-tune) the CLIP."""

    epochs: PositiveInt = 12
    """Passes over the training images."""
    batch_size: int = Field(128, ge=2)
    """Images per batch (each batch's other images are the negatives)."""
    lr: PositiveFloat | None = None
    """AdamW learning rate; None: 5e-4 from scratch, 1e-5 when fine-tuning (`init`)."""
    weight_decay: NonNegativeFloat = 0.1
    """AdamW weight decay of the weight matrices (not embeddings, biases, norms)."""
    warmup_frac: Probability = 0.05
    """Share of the steps spent warming up linearly, then cosine decay to 0."""
    description_prob: Probability = 0.8
    """Chance per image and epoch to train on a detailed description, else a reference."""
    short_prob: Probability = 0.0
    """Of the description draws, the share that are the short one-object text instead
    ("a large red striped circle on grass": caption length, what a CLIP reward scores;
    `finecap.scenes.changes.short_description`)."""
    hard_negative_prob: Probability = 0.0
    """Chance per description draw to add its hard negative to the batch's texts: the same
    text with one fact changed (NegCLIP, Yuksekgonul et al. 2023; scenes datasets only)."""
    hard_negative_kinds: list[ChangeKind] = Field(
        default_factory=lambda: list(CHANGE_KINDS), min_length=1
    )
    """Kinds of change the hard negatives draw from (`finecap.scenes.changes`)."""
    dense_weight: NonNegativeFloat = 0.0
    """Weight of the dense scene supervision (`finecap.clip.dense`): every patch token
    predicts the shape, colour, pattern and size of the object under it (scenes datasets
    only; the heads are not saved)."""
    bag_weight: NonNegativeFloat = 0.0
    """Weight of the bag-of-objects supervision (`finecap.clip.dense.BagHead`): the pooled
    image vector predicts every (shape, colour), (shape, pattern), (shape, size) pair the scene
    holds (scenes datasets only; the head is not saved)."""
    position_weight: NonNegativeFloat = 0.0
    """Weight of the position supervision (`finecap.clip.dense.PositionHead`): the pooled
    image vector predicts the centre of the objects of each colour and each shape, so it says
    where things are, which a relation needs (scenes datasets only; the head is not saved).
    Measured at weight 10: relations stay at chance (README)."""
    relation_weight: NonNegativeFloat = 0.0
    """Weight of the relation supervision (`finecap.clip.dense.RelationHead`): one classifier
    over the shared embedding space reads which way each pair of colours (and of shapes) lies,
    from the image embedding (the scene's relations) and from each description's and hard
    negative's text embedding (the relations the text states), so a reversed relation is a
    different text in the direction the image shows it (scenes datasets only; the head is not
    saved). Measured at weight 8 with conv_coords, 10 epochs: relations stay at chance
    (README)."""
    fact_weight: NonNegativeFloat = 0.0
    """Weight of the fact target (`finecap.clip.dense.FactTarget`): the image embedding is
    pulled toward a fixed random projection of the scene's bound pairs and object positions,
    so the shared space says where things are and the text tower can learn a relation
    against it (scenes datasets only; the target is not saved). Measured over 13 epochs at
    weights 3, 10 and 30: the image side holds the places (97-99 % against its targets), but
    relations stay near chance (at most 56.6 %) and retrieval falls (R@1 0.576 at 10). A fresh
    text tower trained afterwards against the weight-10 image side, frozen, reads relations at
    79.6 % (`scripts/relation_oracle.py --images-from`; README)."""
    fact_position_weight: PositiveFloat = 3.0
    """How much the positions weigh in the fact target, against 1 per bound pair."""
    pair_weight: NonNegativeFloat = 0.0
    """Weight of a pairwise term for each hard negative: cross-entropy of the image choosing
    its true text over the same text with one fact changed (the probe's own question), beside
    the batch-wide InfoNCE where the negative is one of B + M texts."""
    text_gap_weight: NonNegativeFloat = 0.0
    """Weight of a text-side hinge for each hard negative: the true text's and its negative's
    embeddings pay where their cosine is above `text_gap_cos`. A reversed relation is the same
    vector to a text tower not yet asked to tell them apart (cosine 0.9998, README), so no image
    can prefer the true one; this asks the text side to part them first. Measured at weight
    10 over 10 and 13 epochs: the relation texts part a little (0.983, 0.965), relations stay
    at chance (README)."""
    text_gap_cos: Annotated[float, Field(ge=-1, le=1)] = 0.9
    """Highest cosine between a text and its hard negative that `text_gap_weight` lets pass."""
    flip_prob: Probability = 0.0
    """Chance per image and epoch to train on its mirror image, with texts to match (left and
    right swapped; the description rewritten from the mirrored scene). Scenes datasets only."""
    max_shift: NonNegativeInt = 0
    """Shift each training image by up to this many pixels (edges repeated), so a ViT sees
    every shape at every offset within its patches."""
    prompt_prob: Probability = 0.5
    """Chance to prepend CLIP_PROMPT, so texts with and without it both work."""
    seed: int = 0
    """Seed of the initialisation, batch order and text draws."""
    eval_split: str = "test"
    """Split of the retrieval check written to clip_eval.json."""
    trainer: LightningConfig = LightningConfig(accelerator="auto")
    """Where it trains (a GPU when there is one)."""

    def learning_rate(self, fine_tuning: bool) -> float:
        return self.lr if self.lr is not None else (1e-5 if fine_tuning else 5e-4)


LrSchedule = Literal["constant", "warmup_cosine"]


class GrammarTrainConfig(Settings):
    """How to train the grammar head (`finecap.clip.grammar`). The defaults follow Cho et al.'s
    `retrieval/train_pl.py` except `lr` (see the module docstring); `schedule` and
    `train_logit_scale` name finecap's earlier choices as variants."""

    epochs: PositiveInt = 6
    """Passes over the training references."""
    batch_size: int = Field(64, ge=2)
    """References per batch (each with one corrupted copy as its negative)."""
    lr: PositiveFloat = 5e-4
    """AdamW learning rate (Cho et al.: 1e-4; see the module docstring)."""
    weight_decay: NonNegativeFloat = 0.01
    """AdamW weight decay of every trained tensor but the biases (as Cho et al.)."""
    schedule: LrSchedule = "constant"
    """"constant": the learning rate never changes (Cho et al. configure no scheduler);
    "warmup_cosine": linear warm-up over `warmup_frac` of the steps, then cosine decay to 0
    (finecap's earlier default)."""
    warmup_frac: Probability = 0.05
    """Share of the steps spent warming up (schedule "warmup_cosine" only)."""
    train_logit_scale: bool = True
    """Train CLIP's temperature with the text tower (Cho et al. freeze only the vision tower
    and its projection); False keeps the starting CLIP's (finecap's earlier default)."""
    description_prob: Probability = 0.3
    """Share of positives drawn from detailed descriptions (long, fluent) instead of references."""
    seed: int = 0
    """Seed of the batch order and the negatives drawn."""
    eval_split: str = "test"
    """Split of the held-out accuracy written to grammar_eval.json."""
    prompt: str = CLIP_PROMPT
    """Prepended to every caption before the text encoder (Cho et al.)."""
    kinds: list[NegativeKind] = Field(default_factory=lambda: list(NEGATIVE_KINDS), min_length=1)
    """Negative kinds to train on."""
    trainer: LightningConfig = LightningConfig(accelerator="auto")
    """Where it trains (a GPU when there is one)."""


class DiscriminatorTrainConfig(Settings):
    """Pre-training of the discriminator (`finecap discriminator train`)."""

    split: str = "train"
    """Split whose images and references train it."""
    eval_split: str = "val"
    """Split it is evaluated on (accuracy per class); empty or missing: none."""
    epochs: PositiveInt = 20
    """Passes over the training images."""
    batch_size: PositiveInt = 64
    """Images per step (each with one reference and its generated captions)."""
    lr: PositiveFloat = 1e-4
    """Adam learning rate."""
    hidden: list[PositiveInt] = [512, 256]
    """Hidden layer widths (the reference's 512, 256)."""
    prefix: str = ""
    """Text put before every caption before it is embedded (the reward's `prefix`)."""
    seed: int = 0
    """Seed of the initialisation, batch order and negatives."""
    beam_size: PositiveInt = 5
    """The captioner's beams per image (the RL policy's decoding: beam 5, no repeated trigrams)."""
    block_trigrams: bool = True
    """No trigram twice in a generated caption (as the RL policy decodes)."""
    max_len: PositiveInt = 16
    """Longest generated caption in words (at most the captioner's decoder.max_len)."""
    caption_batch_size: PositiveInt = 50
    """Images captioned together when generating the negatives."""
