"""The grammar head of Cho et al. 2022 (Fine-grained Image Captioning with CLIP Reward, §3.2).

A CLIP-S reward alone teaches a captioner to pile up words CLIP likes ("a red red circle
circle blue ..."). Cho et al. fine-tune CLIP's text encoder with a small head that tells
fluent captions from corrupted ones, and add its probability g(c) to the reward.

- Negatives (Cho et al.'s `retrieval/text_utils.py`): a training caption corrupted by ONE
  operation drawn uniformly from `NEGATIVES`: insert 1-3 copies of an n-gram (n in 1..3),
  each at its own random position; remove an n-gram (n in 1..3); insert 1-3 random
  vocabulary words; replace ("swap") 1-3 words by other vocabulary words; or shuffle all
  words (redrawn until the order differs).
- Head: Linear(d, d) -> ReLU -> Linear(d, 2), no biases, on the text encoder's pooled output
  (before the projection); g(c) = softmax(head)[1].
- Loss: CLIP contrastive (text tower vs the frozen image tower) + cross-entropy of the head,
  1:1. The vision tower and its projection stay frozen, so the fine-tuned text encoder still
  lives in the original CLIP's embedding space; the temperature trains with the text tower
  (`train_logit_scale`), as in Cho et al.'s `retrieval/train_pl.py`.
- Optimiser (the same file): AdamW, eps 1e-6, weight decay 0.01 on all but the biases, a
  constant learning rate (`schedule="warmup_cosine"` is finecap's earlier warm-up + cosine).
  Cho et al. use lr 1e-4 on a pretrained ViT-B/32 over COCO. Our default is 5e-4: the 4-layer
  scenes CLIP gets ~1,900 steps (6 passes over 20k references) and reached 0.92 held-out
  accuracy at 1e-4 vs 0.97 at 5e-4 (5,000-image scenes world, seed 0, with finecap's earlier
  warm-up + cosine and frozen temperature). `lr=1e-4` restores the reference.

Text is normalised to lower-case words without punctuation (`simple_tokenize`) before the
head sees it, for positives, negatives and at scoring time alike: otherwise "has a final
period" would separate references from corrupted copies.

Saved as one folder: the fine-tuned CLIP (Hugging Face format, loadable by `load_clip`),
`grammar_head.safetensors` and `grammar_config.json`.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from finecap.clip.config import GrammarTrainConfig
from finecap.clip.train import (
    CLIP_PROMPT,
    RecordPixels,
    clip_loss,
    descriptions_of,
    encode_pixels,
    fraction_schedule,
    loader_and_trainer,
    pooled_texts,
    retrieval_eval,
)
from finecap.data.formats import ImageRecord, load_corpus
from finecap.data.vocab import simple_tokenize
from finecap.errors import MissingFileError, UserError
from finecap.io import atomic_write_text
from finecap.train.lightning import quiet_lightning

HEAD_FILE, CONFIG_FILE = "grammar_head.safetensors", "grammar_config.json"

# --------------------------------------------------------------------------- negatives
# Each operation maps (words, vocabulary, rng) to new words, or None when it cannot apply
# (e.g. removing from a one-word caption).

Words = list[str]


def repeat_ngram(words: Words, vocab: Sequence[str], rng: random.Random) -> Words | None:
    """Insert 1-3 copies of an n-gram (n in 1..3), each at its own random position of the
    growing text (Cho et al.'s `text_utils.repeat`): "a b c d" -> "b c a b c d" or
    "a b c d b c". Copies are rarely next to the original, which is the repetition a
    CLIP-S-rewarded captioner produces ("a red circle on grass red circle")."""
    n = rng.randint(1, min(3, len(words)))
    i = rng.randrange(len(words) - n + 1)
    gram = words[i : i + n]
    out = list(words)
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(out))  # any gap, the ends and earlier copies included
        out[at:at] = gram
    return out


def remove_ngram(words: Words, vocab: Sequence[str], rng: random.Random) -> Words | None:
    """Drop n consecutive words (n in 1..3), leaving at least one word."""
    if len(words) < 2:
        return None
    n = rng.randint(1, min(3, len(words) - 1))
    i = rng.randrange(len(words) - n + 1)
    return words[:i] + words[i + n :]


def insert_words(words: Words, vocab: Sequence[str], rng: random.Random) -> Words | None:
    """Insert 1-3 random vocabulary words, each before a random word of the growing text
    (never after the last word, as in Cho et al.'s `text_utils.insert`)."""
    out = list(words)
    for _ in range(rng.randint(1, 3)):
        out.insert(rng.randrange(len(out)), rng.choice(vocab))
    return out


def swap_words(words: Words, vocab: Sequence[str], rng: random.Random) -> Words | None:
    """Replace 1-3 distinct positions by a different random vocabulary word each."""
    out = list(words)
    for i in rng.sample(range(len(words)), rng.randint(1, min(3, len(words)))):
        other = _other_word(vocab, words[i], rng)
        if other is None:
            return None
        out[i] = other
    return out


def _other_word(vocab: Sequence[str], word: str, rng: random.Random) -> str | None:
    for _ in range(20):  # rejection sampling: cheap for any real vocabulary
        w = rng.choice(vocab)
        if w != word:
            return w
    others = [w for w in vocab if w != word]
    return rng.choice(others) if others else None


def shuffle_words(words: Words, vocab: Sequence[str], rng: random.Random) -> Words | None:
    """A random permutation of all words that differs from the original order."""
    if len(set(words)) < 2:
        return None  # every order reads the same
    out = list(words)
    while out == words:
        rng.shuffle(out)
    return out


NEGATIVES: dict[str, Callable[[Words, Sequence[str], random.Random], Words | None]] = {
    "repeat": repeat_ngram,
    "remove": remove_ngram,
    "insert": insert_words,
    "swap": swap_words,
    "shuffle": shuffle_words,
}


def normalize_caption(text: str) -> str:
    return " ".join(simple_tokenize(text))


def make_negative(
    text: str,
    vocab: Sequence[str],
    rng: random.Random,
    kinds: Sequence[str] | None = None,
    fluent: Collection[str] = frozenset(),
) -> tuple[str, str]:
    """(negative, kind): `text` corrupted by ONE operation drawn uniformly from `kinds`
    (default: all of NEGATIVES).

    The draw is repeated when the operation cannot apply to this caption (shuffling one word),
    when the result equals the normalised original, or when it is a known fluent caption
    (`fluent`: normalised training captions). The last guard matters on templated text:
    removing "black" from "one black triangle" gives "one triangle", itself a reference, and
    a negative that is literally a human caption is a wrong label. On COCO it rarely fires.
    """
    words = simple_tokenize(text)
    if not words:
        raise ValueError("cannot corrupt an empty caption")
    kinds = list(kinds or NEGATIVES)
    for _ in range(100):
        k = rng.choice(kinds)
        out = NEGATIVES[k](words, vocab, rng)
        if out is not None and out != words and " ".join(out) not in fluent:
            return " ".join(out), k
    raise ValueError(f"no negative of kind {kinds} exists for {text!r}")


# --------------------------------------------------------------------------- model


class GrammarHead(nn.Module):
    """(N, d) pooled text features -> (N, 2) logits [corrupted, fluent]; no biases (Cho et al.)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, 2, bias=False)
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled)


@dataclass
class GrammarConfig:
    """Saved as grammar_config.json beside the head."""

    prompt: str = CLIP_PROMPT  # prepended to every caption before the text encoder (Cho et al.)
    hidden_size: int = 0  # text encoder width d (filled from the CLIP)
    clip_source: str = ""  # the CLIP the head was trained from


class GrammarModel(nn.Module):
    """A CLIP whose text encoder carries the grammar head. `score(texts)` gives g(c) in [0, 1]."""

    def __init__(self, bundle, head: GrammarHead, config: GrammarConfig) -> None:
        super().__init__()
        self.bundle = bundle  # finecap.clip.embed.ClipBundle: model, tokenizer, image processor
        self.clip = bundle.model
        self.head = head
        self.config = config

    def pooled(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, d) pooled text features of normalised, prompted captions."""
        prompted = [self.config.prompt + normalize_caption(t) for t in texts]
        return pooled_texts(self.clip, self.bundle.tokenizer, prompted)

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        return self.head(self.pooled(texts))

    @torch.no_grad()
    def score(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """g(c) = P(fluent) for each text, (N,) float32 on CPU."""
        was_training = self.training
        self.eval()
        out = [
            self.logits(texts[i : i + batch_size]).softmax(-1)[:, 1].float().cpu()
            for i in range(0, len(texts), batch_size)
        ]
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)

    def save_pretrained(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.clip.save_pretrained(out)
        self.bundle.tokenizer.save_pretrained(out)
        self.bundle.image_processor.save_pretrained(out)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, out / HEAD_FILE)
        atomic_write_text(out / CONFIG_FILE, json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> GrammarModel:
        from finecap.clip.embed import load_clip

        path = Path(path)
        if not (path / HEAD_FILE).is_file() or not (path / CONFIG_FILE).is_file():
            raise MissingFileError(
                f"{path}: not a grammar model folder (needs {HEAD_FILE} and {CONFIG_FILE})"
            )
        try:
            config = GrammarConfig(**json.loads((path / CONFIG_FILE).read_text()))
            head = GrammarHead(config.hidden_size)
            head.load_state_dict(load_file(path / HEAD_FILE))
        except Exception as err:  # bad JSON, unknown keys, weights that do not fit
            first = str(err).strip().splitlines()[0][:300]
            raise GrammarFolderError(f"{path}: not a readable grammar model ({first})") from None
        model = cls(load_clip(str(path)), head, config)
        return model.eval()


class GrammarFolderError(UserError, ValueError):
    """A grammar model folder whose files are unreadable or do not fit together."""


def freeze_vision(clip: nn.Module) -> None:
    """Freeze the image tower and its projection (Cho et al.); the temperature is left to
    `GrammarTask` (`GrammarTrainConfig.train_logit_scale`)."""
    for module in (clip.vision_model, clip.visual_projection):
        module.requires_grad_(False)


# --------------------------------------------------------------------------- training


class CaptionNegatives(Dataset):
    """One item per training reference and epoch: (image index, fluent caption, negative).

    With probability `description_prob` the fluent caption is one of the image's detailed
    descriptions instead of the reference (a CLIP-rewarded captioner drifts toward long,
    detailed captions, which must still read as fluent).
    """

    def __init__(self, records: list[ImageRecord], vocab: list[str], cfg: GrammarTrainConfig):
        self.records, self.vocab, self.cfg = records, vocab, cfg
        self.items = [
            (i, normalize_caption(c))
            for i, r in enumerate(records)
            for c in r.captions
            if simple_tokenize(c)
        ]
        self.fluent = fluent_captions(records)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, n: int) -> tuple[int, str, str]:
        rng = random.Random(self.cfg.seed * 1_000_003 + self.epoch * 100_003 + n)
        i, positive = self.items[n]
        descriptions = descriptions_of(self.records[i])
        if descriptions and rng.random() < self.cfg.description_prob:
            positive = normalize_caption(rng.choice(descriptions))
        negative, _ = make_negative(positive, self.vocab, rng, self.cfg.kinds, self.fluent)
        return i, positive, negative


def fluent_captions(records: list[ImageRecord]) -> frozenset[str]:
    """Every normalised reference and description of `records`: known fluent text."""
    return frozenset(
        normalize_caption(t) for r in records for t in [*r.captions, *descriptions_of(r)]
    )


class GrammarTask(L.LightningModule):
    """Loss = CLIP contrastive (prompted positives vs cached image features) + grammar CE, 1:1."""

    def __init__(self, model: GrammarModel, image_features: torch.Tensor, cfg: GrammarTrainConfig):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.register_buffer("image_features", image_features)  # (N, P), frozen tower output
        model.clip.logit_scale.requires_grad_(cfg.train_logit_scale)

    def on_train_epoch_start(self) -> None:
        self.trainer.train_dataloader.dataset.set_epoch(self.current_epoch)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        index, positives, negatives = batch
        clip = self.model.clip
        pooled = self.model.pooled(list(positives) + list(negatives))  # (2B, d)
        b = len(positives)
        txt = F.normalize(clip.text_projection(pooled[:b]), dim=-1)  # (B, P)
        first = first_occurrences(index)  # two references of one image are not negatives
        contrastive = clip_loss(self.image_features[index[first]], txt[first], clip.logit_scale)
        labels = torch.cat([torch.ones(b), torch.zeros(b)]).long().to(pooled.device)
        logits = self.model.head(pooled)  # (2B, 2)
        grammar = F.cross_entropy(logits, labels)
        self.log_dict(
            {
                "clip": contrastive,
                "grammar": grammar,
                "acc": (logits.argmax(-1) == labels).float().mean(),
            },
            prog_bar=True,
            on_epoch=True,
        )
        return contrastive + grammar

    def configure_optimizers(self):
        # Cho et al.'s groups: no decay for biases (their "LayerNorm.weight" rule matches no
        # Hugging Face CLIP name, so norm weights, the head and the temperature are decayed).
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if not n.endswith("bias")]},
            {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(
            groups, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, eps=1e-6
        )
        if self.cfg.schedule == "constant":
            return opt
        return {"optimizer": opt, "lr_scheduler": fraction_schedule(self, opt)}


def first_occurrences(index: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value in `index` (B,)."""
    seen: set[int] = set()
    keep = [i for i, v in enumerate(index.tolist()) if not (v in seen or seen.add(v))]
    return torch.tensor(keep, dtype=torch.long)


def caption_vocabulary(records: list[ImageRecord]) -> list[str]:
    """Sorted word list of the training references and descriptions (the random-word pool)."""
    words = {
        w for r in records for t in [*r.captions, *descriptions_of(r)] for w in simple_tokenize(t)
    }
    return sorted(words)


@torch.no_grad()
def grammar_eval(
    model: GrammarModel,
    records: list[ImageRecord],
    vocab: list[str],
    seed: int = 0,
    fluent: Collection[str] = frozenset(),
) -> dict[str, float]:
    """Held-out accuracy: fluent references, fluent descriptions, each negative kind, overall.

    Per image: its first reference and first description (fluent), and one negative of each
    kind made from the first reference (never one of the `fluent` captions, as in training).
    `overall` weighs fluent and corrupted captions 1:1 (mean of the fluent accuracy and the
    mean over negative kinds), the balance of training.
    """
    rng = random.Random(seed)
    sets: dict[str, list[str]] = {"fluent_reference": [], "fluent_description": []}
    sets.update({k: [] for k in NEGATIVES})
    for r in records:
        refs = [c for c in r.captions if simple_tokenize(c)]
        if refs:
            sets["fluent_reference"].append(refs[0])
            for kind in NEGATIVES:
                with contextlib.suppress(ValueError):  # e.g. shuffling a one-word caption
                    sets[kind].append(make_negative(refs[0], vocab, rng, [kind], fluent)[0])
        sets["fluent_description"] += descriptions_of(r)[:1]
    acc = {}
    for name, texts in sets.items():
        if texts:
            g = model.score(texts)
            fluent = name.startswith("fluent")
            acc[name] = float(((g > 0.5) == fluent).float().mean())
    fluent_acc = [acc[k] for k in ("fluent_reference", "fluent_description") if k in acc]
    negative_acc = [acc[k] for k in NEGATIVES if k in acc]
    acc["negatives"] = sum(negative_acc) / len(negative_acc)
    acc["overall"] = (sum(fluent_acc) / len(fluent_acc) + acc["negatives"]) / 2
    return acc


def train_grammar(
    clip_path: str | Path,
    dataset: str | Path,
    out_dir: str | Path,
    cfg: GrammarTrainConfig | None = None,
) -> dict:
    """Fine-tune `clip_path`'s text encoder with a grammar head; save to `out_dir`.

    Returns the evaluation also written to `out_dir/grammar_eval.json`.
    """
    from finecap.clip.embed import load_clip

    cfg = cfg or GrammarTrainConfig()
    L.seed_everything(cfg.seed, verbose=False)
    corpus = load_corpus(dataset)
    train_records = [
        r for r in corpus.split("train") if any(simple_tokenize(c) for c in r.captions)
    ]
    eval_records = [r for r in corpus.split(cfg.eval_split) if r.captions]
    vocab = caption_vocabulary(train_records)

    bundle = load_clip(str(clip_path))
    clip = bundle.model
    freeze_vision(clip)
    config = GrammarConfig(cfg.prompt, clip.config.text_config.hidden_size, str(clip_path))
    model = GrammarModel(bundle, GrammarHead(config.hidden_size), config)

    started = time.perf_counter()
    with torch.no_grad():  # the image tower is frozen: its features are computed once
        clip.eval()
        processor = bundle.image_processor
        pixels = RecordPixels(corpus, train_records, processor, cache_limit_bytes=0)
        feats = torch.cat([encode_pixels(clip, p) for p in pixels.batches()])  # (N, P)
    prep_s = time.perf_counter() - started

    data = CaptionNegatives(train_records, vocab, cfg)
    loader, trainer = loader_and_trainer(data, cfg)
    model.train()  # CLIP has no dropout; this only keeps Lightning from warning
    started, cpu_started = time.perf_counter(), time.process_time()
    with quiet_lightning():
        trainer.fit(GrammarTask(model, feats, cfg), loader)
    train_s, train_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started

    model = model.cpu().eval()
    model.save_pretrained(out_dir)
    known_fluent = fluent_captions(train_records) | fluent_captions(eval_records)
    result = {
        "clip": str(clip_path),
        "dataset": str(dataset),
        "eval_split": cfg.eval_split,
        "n_train": len(train_records),
        "n_eval": len(eval_records),
        # Negatives that are known fluent captions (train or held-out) are redrawn, as in
        # training; the unfiltered numbers show how often templated text makes them fluent.
        "accuracy": grammar_eval(model, eval_records, vocab, cfg.seed, known_fluent),
        "accuracy_unfiltered": grammar_eval(model, eval_records, vocab, cfg.seed),
        # The fine-tuned text tower must still retrieve (vision tower frozen, same space).
        "retrieval": retrieval_eval(
            model.clip,
            model.bundle.tokenizer,
            RecordPixels(corpus, eval_records, processor),
            eval_records,
        ),
        "preprocess_seconds": round(prep_s, 1),
        "train_seconds": round(train_s, 1),
        "train_cpu_seconds": round(train_cpu_s, 1),
        "torch_threads": torch.get_num_threads(),
        "train": cfg.to_dict(),
    }
    atomic_write_text(Path(out_dir) / "grammar_eval.json", json.dumps(result, indent=2) + "\n")
    return result
