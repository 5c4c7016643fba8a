"""Discriminator regularisation (Chaffin et al. 2022, "Distinctive Image Captioning: Leveraging
Ground Truth Captions in CLIP Guided Reinforcement Learning"; released code NohTow/WTF-RL).

An MLP on [image embedding; text embedding] tells reference captions (label 1) from the
captioner's (label 0). Its probability of "reference" rewards captions that still read like
human ones, countering the drift toward CLIP-pleasing word salad. Chaffin et al. combine
`alpha * r_sim + (1 - alpha) * r_disc`, alpha = 0.94: here
`WeightedReward([(0.94, contrastive), (0.06, discriminator)])`.

As in the reference, the MLP starts pre-trained and is trained online during RL. The released
script loads weights made outside it (`pretrained_disc_scst_repro_27999`); finecap pre-trains
with `finecap discriminator train` (`train_discriminator`): references vs the MLE captioner's
beam captions, what the discriminator meets when RL starts, or without a captioner vs
corrupted and mismatched references. The reward loads the result with `pretrained: DIR`.
The reference's MLP is 2P -> 512 -> 256 -> 2 with ReLU, Adam lr 7e-5, BCE on the softmax's
"reference" column; one logit with BCE-with-logits is the same model family (a
2-way softmax is a sigmoid of the logit difference) and numerically safer.

Scoring never trains it: `__call__` only scores, whatever the captions are (references
scored for RL on ground truth included). `update(batch)` takes the one online step: the
batch's captions (the policy's) labelled 0 against `batch.ground_truth` (or one reference per
image) labelled 1, as the reference's single step per batch does. SCST calls it once per
training step, after all scoring; `online: false` keeps the discriminator frozen.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from finecap.clip.config import DiscriminatorTrainConfig
from finecap.config import ConfigError, PathStr, PositiveFloat, PositiveInt
from finecap.errors import MissingFileError, UserError
from finecap.rewards.base import Reward, RewardBatch, register_reward
from finecap.rewards.clip_rewards import ClipRewardConfig, as_scorer

WEIGHTS_FILE, CONFIG_FILE, EVAL_FILE = "model.safetensors", "config.json", "discriminator_eval.json"


class DiscriminatorFolderError(UserError, ValueError):
    """A discriminator folder whose files are unreadable or do not fit the CLIP."""


class Discriminator(nn.Module):
    """[img (N, P); txt (N, P)] -> (N,) logit that txt is a reference caption of img."""

    def __init__(self, dim: int, hidden: Sequence[int] = (512, 256), lr: float = 7e-5) -> None:
        super().__init__()
        self.dim, self.hidden = dim, tuple(hidden)
        layers: list[nn.Module] = []
        width = 2 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([img, txt], dim=-1)).squeeze(-1)

    @torch.no_grad()
    def prob(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """(N,) P(reference)."""
        return torch.sigmoid(self(img, txt))

    def update(self, img_emb: torch.Tensor, ref_emb: torch.Tensor, gen_emb: torch.Tensor) -> float:
        """One optimiser step; returns the loss.

        img_emb (B, P); ref_emb (B*R, P) and gen_emb (B*K, P), each grouped per image (R
        references, K generated captions per image). The two classes weigh equally.
        """
        b = img_emb.shape[0]
        if ref_emb.shape[0] % b or gen_emb.shape[0] % b:
            raise ValueError(f"{len(ref_emb)} refs / {len(gen_emb)} samples for {b} images")
        img_emb, ref_emb, gen_emb = (x.detach().float() for x in (img_emb, ref_emb, gen_emb))
        img_ref = img_emb.repeat_interleave(ref_emb.shape[0] // b, dim=0)
        img_gen = img_emb.repeat_interleave(gen_emb.shape[0] // b, dim=0)
        self.train()
        with torch.enable_grad():  # callers often score rewards under no_grad
            ref_logit, gen_logit = self(img_ref, ref_emb), self(img_gen, gen_emb)
            loss = (
                F.binary_cross_entropy_with_logits(ref_logit, torch.ones_like(ref_logit))
                + F.binary_cross_entropy_with_logits(gen_logit, torch.zeros_like(gen_logit))
            ) / 2
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def save_pretrained(self, folder: str | Path, info: dict[str, Any]) -> None:
        """OUT/model.safetensors + OUT/config.json ({dim, hidden, **info}), each atomically,
        the config last (its presence means the folder is complete)."""
        from safetensors.torch import save

        from finecap.io import atomic_write_bytes, atomic_write_text

        folder = Path(folder)
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        atomic_write_bytes(folder / WEIGHTS_FILE, save(state))
        config = {"format": 1, "dim": self.dim, "hidden": list(self.hidden), **info}
        atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path, lr: float = 7e-5) -> tuple[Discriminator, dict]:
        """(the discriminator, its config.json) from a `save_pretrained` folder; a fresh Adam
        with learning rate `lr` for online updates."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise MissingFileError(
                f"{folder}: not a discriminator folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}; "
                "write one with `finecap discriminator train`)"
            )
        try:
            config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
            model = cls(int(config["dim"]), [int(h) for h in config["hidden"]], lr)
            model.net.load_state_dict(load_file(folder / WEIGHTS_FILE))
        except Exception as err:  # bad JSON, missing keys, weights that do not fit
            first = (str(err).strip() or repr(err)).splitlines()[0][:300]
            raise DiscriminatorFolderError(
                f"{folder}: unreadable discriminator ({first})"
            ) from None
        return model, config


class DiscriminatorConfig(ClipRewardConfig):
    name: Literal["discriminator"] = "discriminator"
    pretrained: PathStr | None = None
    """Folder written by `finecap discriminator train` (the reference starts from a
    pre-trained MLP); None: a random MLP, trained online only."""
    hidden: list[PositiveInt] = [512, 256]
    """Hidden layer widths of a random MLP (a pretrained one brings its own)."""
    lr: PositiveFloat = 7e-5
    """Adam learning rate of the online updates (the reference's)."""
    online: bool = True
    """Take one step per training step (`update`); false: keep it as loaded."""
    seed: int = 0
    """Which reference of each image an update uses when the batch has no ground_truth."""


class DiscriminatorReward(Reward):
    """Score = the discriminator's P(reference) for (image, caption)."""

    name = "discriminator"

    def __init__(self, cfg: DiscriminatorConfig, clip: object | None = None) -> None:
        self.cfg = cfg
        self.scorer = as_scorer(clip if clip is not None else cfg.clip, cfg.features)
        dim = self.scorer.embedder.bundle.projection_dim
        if cfg.pretrained is None:
            self.discriminator = Discriminator(dim, cfg.hidden, cfg.lr)
        else:
            self.discriminator, saved = Discriminator.from_pretrained(cfg.pretrained, cfg.lr)
            if saved["dim"] != dim:
                raise ConfigError(
                    f"discriminator {cfg.pretrained} was trained on {saved['dim']}-d CLIP "
                    f"embeddings ({saved.get('clip')}), the reward's CLIP gives {dim}-d"
                )
        self.rng = random.Random(cfg.seed)
        self.last_loss: float | None = None

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        img = self.scorer.image_embeddings(batch)  # (B, P)
        txt = self.scorer.text_embeddings(batch.captions, self.cfg.prefix)  # (B*K, P)
        return self.discriminator.prob(img[batch.image_index()], txt)  # (B*K,)

    def update(self, batch: RewardBatch) -> None:
        """One step: batch.captions are generated (0), batch.ground_truth references (1)."""
        if not self.cfg.online:
            return
        refs = batch.ground_truth
        if refs is None:
            if batch.references is None:
                raise ValueError("an online discriminator needs ground_truth or references")
            refs = [self.rng.choice(r or [""]) for r in batch.references]  # one per image
        img = self.scorer.image_embeddings(batch)  # (B, P)
        txt = self.scorer.text_embeddings(batch.captions + refs, self.cfg.prefix)
        n = len(batch.captions)
        self.last_loss = self.discriminator.update(img, txt[n:], txt[:n])


register_reward("discriminator", config=DiscriminatorConfig)(DiscriminatorReward)


# ----------------------------------------------------------------------- pre-training


def train_discriminator(
    dataset: str | Path,
    clip: str | Path,
    out: str | Path,
    config: DiscriminatorTrainConfig | None = None,
    captioner: str | Path | None = None,
) -> dict[str, Any]:
    """Pre-train a discriminator on `dataset`'s references (1) vs generated captions (0) and
    save it to `out` (`Discriminator.save_pretrained`, then OUT/discriminator_eval.json, last).

    Generated captions: the `captioner` folder's beam captions of each image (the policy RL
    starts from, decoded as RL decodes it); without a captioner, two
    per image made from the references: a corrupted reference (one word repeated, removed,
    inserted, swapped or the order shuffled: `finecap.clip.grammar.make_negative`) and a
    reference of another image. Returns what config.json's `trained` records.
    """
    from finecap.clip.embed import ClipEmbedder, load_clip
    from finecap.data.formats import load_corpus

    config = config or DiscriminatorTrainConfig()
    start = time.perf_counter()
    corpus = load_corpus(dataset)
    records = corpus.split(config.split)
    if not records:
        raise ConfigError(f"{dataset}: no images in split {config.split!r}")
    embedder = ClipEmbedder(load_clip(clip))
    torch.manual_seed(config.seed)
    model = Discriminator(embedder.bundle.projection_dim, config.hidden, config.lr)
    train = _embedded(corpus, records, embedder, config, captioner, random.Random(config.seed))
    rng = random.Random(config.seed + 1)
    losses = []
    for _epoch in range(config.epochs):
        order = list(range(len(records)))
        rng.shuffle(order)
        for first in range(0, len(order), config.batch_size):
            rows = order[first : first + config.batch_size]
            refs = [rng.choice(train["refs"][i]) for i in rows]  # one reference per image
            generated = train["gen"][rows].flatten(0, 1)  # (b*G, P), grouped per image
            losses.append(model.update(train["img"][rows], train["ref_emb"][refs], generated))
    evaluation = None
    eval_records = corpus.split(config.eval_split) if config.eval_split else []
    if eval_records:
        held = _embedded(corpus, eval_records, embedder, config, captioner, random.Random(-1))
        evaluation = _accuracy(model, held)
    trained = {
        "clip": str(clip),
        "clip_fingerprint": embedder.bundle.fingerprint,
        "dataset": str(dataset),
        "negatives": "captioner" if captioner else "corrupted_and_mismatched",
        "captioner": str(captioner) if captioner else None,
        "settings": config.to_dict(),
        "train_images": len(records),
        "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        "eval": evaluation,
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    from finecap.io import atomic_write_text

    model.save_pretrained(out, {"prefix": config.prefix, "trained": trained})
    atomic_write_text(Path(out) / EVAL_FILE, json.dumps(trained, indent=2) + "\n")  # last
    return trained


def _embedded(corpus, records, embedder, config, captioner, rng) -> dict[str, Any]:  # noqa: ANN001
    """Embeddings of one split: img (N, P); ref_emb (all references, P) with refs[i] the rows
    of image i's; gen (N, G, P), G generated captions per image."""
    img = embedder.embed_image_files([corpus.image_path(r) for r in records])
    texts, refs = [], []
    for record in records:
        own = [c for c in record.captions if c.strip()] or [""]
        refs.append(list(range(len(texts), len(texts) + len(own))))
        texts += own
    generated = _generated(corpus, records, config, captioner, rng)  # N lists of G
    g = len(generated[0])
    emb = embedder.embed_texts(texts + [t for gen in generated for t in gen], config.prefix)
    return {
        "img": img,
        "refs": refs,
        "ref_emb": emb[: len(texts)],
        "gen": emb[len(texts) :].view(len(records), g, -1),
    }


def _generated(corpus, records, config, captioner, rng: random.Random) -> list[list[str]]:  # noqa: ANN001
    if captioner is not None:
        from finecap.captioner import Captioner
        from finecap.decoding import DecodingConfig

        model = Captioner.from_pretrained(captioner)
        decoding = DecodingConfig(
            beam_size=config.beam_size, block_trigrams=config.block_trigrams, max_len=config.max_len
        )
        paths = [corpus.image_path(r) for r in records]
        captions = model.caption(paths, decoding=decoding, batch_size=config.caption_batch_size)
        return [[c.text] for c in captions]
    from finecap.clip.grammar import caption_vocabulary, fluent_captions, make_negative

    vocab, fluent = caption_vocabulary(records), fluent_captions(records)
    out = []
    for i, record in enumerate(records):
        own = [c for c in record.captions if c.strip()] or ["a"]
        corrupted, _ = make_negative(rng.choice(own), vocab, rng, fluent=fluent)
        out.append([corrupted, _mismatched(i, records, rng)])
    return out


def _mismatched(i: int, records: list, rng: random.Random) -> str:
    """A reference of another image that is not also one of image i's own (templated
    captions repeat across images: such a copy would be a reference labelled generated)."""
    own = {c.strip().lower() for c in records[i].captions}
    for _ in range(20):
        j = rng.randrange(len(records))
        candidates = [c for c in records[j].captions if c.strip() and c.strip().lower() not in own]
        if j != i and candidates:
            return rng.choice(candidates)
    return ""  # no other image has a different caption: the empty text stands in


def _accuracy(model: Discriminator, split: dict[str, Any]) -> dict[str, float]:
    """Share of references scored P(reference) > 0.5 and of generated captions <= 0.5."""
    owner = torch.tensor([i for i, rows in enumerate(split["refs"]) for _ in rows])
    p_ref = model.prob(split["img"][owner], split["ref_emb"])
    g = split["gen"].shape[1]
    p_gen = model.prob(split["img"].repeat_interleave(g, 0), split["gen"].flatten(0, 1))
    return {
        "reference_accuracy": float((p_ref > 0.5).float().mean()),
        "generated_accuracy": float((p_gen <= 0.5).float().mean()),
        "images": len(split["refs"]),
    }
