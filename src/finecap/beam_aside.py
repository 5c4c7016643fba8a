"""Beam search with ended captions set aside: the textbook algorithm of fairseq and of Hugging
Face's `generate()` (`DecodingConfig(finished_beams="aside")`).

finecap's own beam search (`finecap.decoding.beam_search`) keeps an ended caption among its K
beams, so fewer beams go on as captions end. Here K unfinished beams always go on, and ended
captions collect in a separate list of the K best, until no unfinished beam can beat the worst
of them. Each step, per image:

1. the 2K best continuations over all K beams and all words (sum of log-probabilities);
2. those that end (<eos>, or the last step under `at_max_len="stop"`) and rank among the K
   best of step 1 join the ended list (scored by the length penalty), which keeps its K best;
3. the K best continuations that do not end are the next beams;
4. the image is done when its list holds K captions and its best beam, length-penalised at
   its current length, does not beat the list's worst (Hugging Face's `early_stopping=False`
   test; with length_penalty 0 it is exact: a beam's score only falls as it grows).

With `length_penalty=0` (finecap's GNMT penalty and Hugging Face's `len ** lp` are then both
1), the same `max_len` as `max_new_tokens` and `at_max_len="stop"`, this gives generate()'s
captions token for token (tests/test_pretrained.py). Images leave the batch as they finish,
as in finecap's beam search, and an image's per-image state is never copied per beam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from finecap.decoding import (
    BOS,
    EOS,
    PAD,
    Decoded,
    DecodingConfig,
    _block_repeated_trigrams,
    _length_penalty,
    _stack_padded,
)
from finecap.models.decoder import Decoder, reorder_state
from finecap.models.encoders import EncoderOutput


def _pick(x: Tensor, index: Tensor) -> Tensor:
    """Entries `index` (n, k) of x (n, m, ...) along dim 1 -> (n, k, ...)."""
    shape = (*index.shape, *([1] * (x.dim() - 2)))
    return x.gather(1, index.view(shape).expand(-1, -1, *x.shape[2:]))


@dataclass
class _Ended:
    """Each image's K best ended captions, best first; a score of -inf is an empty place."""

    score: Tensor  # (n, K) length-penalised sum of log-probs
    tokens: Tensor  # (n, K, t)
    logp: Tensor  # (n, K, t)
    attention: Tensor | None  # (n, K, t, R)

    @classmethod
    def empty(cls, n: int, k: int, device: torch.device) -> _Ended:
        no_steps = torch.zeros(n, k, 0, device=device)
        score = torch.full((n, k), float("-inf"), device=device)
        return cls(score, no_steps.long(), no_steps, None)

    def join(self, score: Tensor, tokens: Tensor, logp: Tensor, att: Tensor | None) -> _Ended:
        """Merge this step's candidates (n, C), -inf for those not ending, and keep the K best.
        The captions already here are one step shorter: they get <pad> (log-prob 0)."""
        K = self.score.shape[1]
        merged = torch.cat([self.score, score], 1)  # the list first, then the candidates
        keep = merged.topk(K, -1).indices

        def grown(old: Tensor, new: Tensor, value: float) -> Tensor:
            # old (n, K, t, ...) + one step, then the new (n, C, t + 1, ...) -> the K kept
            old = torch.cat([old, torch.full_like(new[:, :K, -1:], value)], 2)
            return _pick(torch.cat([old, new], 1), keep)

        if att is not None:
            old_att = self.attention if self.attention is not None else att[:, :K, :-1] * 0
            att = grown(old_att, att, 0.0)
        tokens, logp = grown(self.tokens, tokens, PAD), grown(self.logp, logp, 0.0)
        return _Ended(merged.gather(1, keep), tokens, logp, att)

    def rows(self, index: Tensor) -> _Ended:
        att = None if self.attention is None else self.attention[index]
        return _Ended(self.score[index], self.tokens[index], self.logp[index], att)

    def best(self, i: int, n_best: int) -> Decoded:
        att = None if self.attention is None else self.attention[i, :n_best]
        return Decoded(self.tokens[i, :n_best], self.logp[i, :n_best], self.score[i, :n_best], att)


@torch.no_grad()
def beam_search_aside(
    decoder: Decoder, enc: EncoderOutput, config: DecodingConfig, keep_attention: bool = False
) -> Decoded:
    """config.n_best captions per image, best first (see the module docstring)."""
    B, K = enc.pooled.shape[0], config.beam_size
    device = enc.pooled.device
    state = decoder.init_state(enc, group=K)
    constant = set(state)  # never replaced by a step: the same for all of an image's beams
    images = torch.arange(B, device=device)  # original index of each image still decoding
    words = torch.full((B * K,), BOS, dtype=torch.long, device=device)
    running = torch.full((B, K), float("-inf"), device=device)
    running[:, 0] = 0.0  # all beams start identical: one of them, so no duplicates
    history = torch.zeros(B * K, 0, dtype=torch.long, device=device)  # (n*K, t) words so far
    word_logp = torch.zeros(B * K, 0, device=device)  # (n*K, t)
    attention = None  # (n*K, t, R)
    ended = _Ended.empty(B, K, device)
    results: list[Decoded | None] = [None] * B
    last = config.max_len if config.at_max_len == "eos" else config.max_len - 1
    for t in range(last + 1):
        n = images.shape[0]
        out = decoder.step(words, state)
        constant = {key for key in constant if out.state.get(key) is state[key]}
        logp = F.log_softmax(out.logits.float(), -1)  # (n*K, V)
        if config.block_trigrams:
            logp = _block_repeated_trigrams(history, logp.clone())
        if t == config.max_len:  # at_max_len "eos": max_len words written, only <eos> is left
            logp = torch.full_like(logp, float("-inf")).index_copy(
                1, torch.tensor([EOS], device=device), logp[:, EOS : EOS + 1]
            )
        V = logp.shape[-1]
        # 1. The 2K best continuations of the image's K beams.
        score, flat = (running.view(-1, 1) + logp).view(n, K * V).topk(2 * K, -1)  # best first
        word = flat % V
        rows = flat // V + (torch.arange(n, device=device) * K)[:, None]  # (n, 2K) old beams
        ends = (word == EOS) | (t == last)
        tokens = torch.cat([history[rows], word[..., None]], 2)  # (n, 2K, t+1)
        step_logp = logp[rows.view(-1), word.view(-1)].view(n, 2 * K, 1)
        logps = torch.cat([word_logp[rows], step_logp], 2)
        att = None
        if keep_attention:
            att = out.attention[rows][:, :, None]  # (n, 2K, 1, R)
            att = att if attention is None else torch.cat([attention[rows], att], 2)
        # 2. Ending continuations among the K best join the ended list.
        penalty = _length_penalty(torch.tensor(t + 1, device=device), config.length_penalty)
        joins = ends & (torch.arange(2 * K, device=device) < K)
        ended = ended.join((score / penalty).masked_fill(~joins, float("-inf")), tokens, logps, att)
        # 3. The K best continuations that go on are the next beams.
        running, going = score.masked_fill(ends, float("-inf")).topk(K, -1)  # (n, K)
        words = word.gather(1, going).view(-1)
        history, word_logp = _pick(tokens, going).flatten(0, 1), _pick(logps, going).flatten(0, 1)
        attention = None if att is None else _pick(att, going).flatten(0, 1)
        moving = {key: value for key, value in out.state.items() if key not in constant}
        state = {**out.state, **reorder_state(moving, rows.gather(1, going).view(-1), group=K)}
        # 4. Done: K ended captions that no beam can beat any more, or no step left.
        worst = ended.score[:, -1]
        done = ((worst > float("-inf")) & (running[:, 0] / penalty <= worst)) | (t == last)
        for i in done.nonzero()[:, 0].tolist():
            results[int(images[i])] = ended.best(i, config.n_best)
        if bool(done.all()):
            break
        if bool(done.any()):
            kept = (~done).nonzero()[:, 0]
            rows = (kept[:, None] * K + torch.arange(K, device=device)).view(-1)
            state = reorder_state(state, rows, group=K)
            images, running, ended = images[kept], running[kept], ended.rows(kept)
            words, history, word_logp = words[rows], history[rows], word_logp[rows]
            attention = None if attention is None else attention[rows]
    return _stack_padded(results)
