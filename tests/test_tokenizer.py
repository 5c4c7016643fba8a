"""The pure-Python PTB tokenizer on real captions: equal to pycocoevalcap's Java tokenizer on
every Flickr8k caption, and the per-caption fast-tier scores equal pycocoevalcap's on the
Flickr8k-Expert pairs. Also: lexing a repeated caption once (`tokenize_captions`) changes
nothing, because `reads_next_line` flags every caption whose next line could matter.

The Flickr8k files are looked up in $FINECAP_FLICKR8K or ../shared/data/flickr8k beside the
repository; without them (or without Java) those tests are skipped.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from finecap.metrics import tokenizer
from finecap.metrics.fast import fast_scores
from finecap.metrics.tokenizer import ptb_tokenize, ptb_tokens, reads_next_line, tokenize_captions
from fixtures.caption_grammar import random_strings, tricky_captions

FLICKR8K = Path(
    os.environ.get("FINECAP_FLICKR8K", Path(__file__).parents[2] / "shared/data/flickr8k")
)
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")
needs_flickr8k = pytest.mark.skipif(
    not (FLICKR8K / "Flickr8k.token.txt").is_file(), reason=f"no Flickr8k files in {FLICKR8K}"
)
# Next lines that trigger each look-ahead rule: a sentence start, a digit, a capital, a tag.
FOLLOWING = ["", "The dog .", "5 dogs", "A", "<b> x", "He runs", "Ab", " x", "..", "jan."]


def pycoco_tokenize(captions: dict) -> dict:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def flickr8k_captions() -> list[str]:
    lines = (FLICKR8K / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[1] for line in lines if "\t" in line]


@pytest.fixture(scope="module")
def expert_pairs() -> tuple[dict, dict]:
    """The Flickr8k-Expert pairs under Hessel et al.'s protocol: references, candidates."""
    from finecap.metrics.human import apply_protocol
    from finecap.metrics.judgments import dataset_captions, load_judgments

    captions = dataset_captions(FLICKR8K / "Flickr8k.token.txt")
    judgments = load_judgments(FLICKR8K / "ExpertAnnotations.txt", captions.by_id)
    items = apply_protocol(judgments, captions.references)
    refs = dict(enumerate(items.references))
    return refs, {i: p.caption for i, p in enumerate(items.pairs)}


def test_next_line_only_matters_where_flagged() -> None:
    captions = [
        *tricky_captions(400, seed=3),
        *random_strings(400, seed=4),
        "the U.S.",
        "the U.S. ",
        "made ca.",
        "on jan.",
        "a dog .",
        "plan B.",
        "x etc.",
        ".",
        " .",
    ]
    for caption in captions:
        alone = ptb_tokens(caption, "")  # every token, punctuation included
        if not reads_next_line(caption):
            assert all(ptb_tokens(caption, f) == alone for f in FOLLOWING), caption
    # The flagged rules do look ahead: "B." before a sentence start is "b" + ".".
    assert reads_next_line("plan B.") and reads_next_line("on jan. ")
    assert ptb_tokenize("plan B.", "The dog") == "plan b" != ptb_tokenize("plan B.", "")
    assert not reads_next_line("a dog .") and not reads_next_line("a dog")


def _lexed(caption: str, following: str) -> str:
    """`ptb_tokenize` through the lexer alone (no whole-caption shortcut)."""
    line = " ".join(ptb_tokens(caption, following)).rstrip()
    return " ".join(w for w in line.split(" ") if w not in tokenizer.PUNCTUATIONS)


def test_plain_captions_skip_the_lexer_with_the_same_tokens() -> None:
    plain = ["A man riding a horse .", "Two dogs, playing!", "a cat on a mat.", "Wow? yes"]
    odd = ["the st.", "plan B.", "I cannot", "a  dog", "a dog !!", "it's", "x.y", "a dog\t"]
    captions = plain + odd + tricky_captions(600, seed=5)
    if (FLICKR8K / "Flickr8k.token.txt").is_file():
        captions += flickr8k_captions()[::20]
    shortcut = 0
    for caption in captions:
        fast = tokenizer._plain(caption)
        if fast is not None:
            shortcut += 1
            assert all(fast == _lexed(caption, f) for f in ("", "The dog", "5")), caption
    assert all(tokenizer._plain(c) is not None for c in plain)
    assert all(tokenizer._plain(c) is None for c in odd)
    assert shortcut > len(plain)


def test_repeated_captions_lexed_once_give_the_same_tokens() -> None:
    refs = ["A dog runs .", "the U.S.", "A man in a hat", "ca.", "A dog runs ."]
    captions = {i: refs[i % 3 :] + refs[: i % 3] for i in range(6)}
    flat = [c for caps in captions.values() for c in caps]
    expected = [
        ptb_tokenize(c, flat[i + 1] if i + 1 < len(flat) else None) for i, c in enumerate(flat)
    ]
    got = [t for toks in tokenize_captions(captions).values() for t in toks]
    assert got == expected


@needs_java
@needs_flickr8k
def test_equal_to_pycocoevalcap_on_every_flickr8k_caption() -> None:
    captions = {0: flickr8k_captions()}  # 40,460 captions, in the file's order
    assert len(captions[0]) > 40_000
    ours, java = tokenize_captions(captions)[0], pycoco_tokenize(captions)[0]
    wrong = [(c, j, o) for c, j, o in zip(captions[0], java, ours, strict=True) if j != o]
    assert not wrong, wrong[:5]


@needs_java
@needs_flickr8k
def test_fast_tier_scores_equal_pycocoevalcap_per_expert_pair(expert_pairs) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs, preds = expert_pairs
    assert len(preds) == 5664
    keep = list(preds)[::4]  # a quarter of the pairs: the tokens of all are checked above
    refs, preds = {i: refs[i] for i in keep}, {i: preds[i] for i in keep}
    gts = pycoco_tokenize(refs)
    res = {i: v for i, v in pycoco_tokenize({i: [c] for i, c in preds.items()}).items()}
    ours = fast_scores(refs, preds)  # raw captions in: tokenization included
    _, bleu = Bleu(4).compute_score(gts, res, verbose=0)
    expected = {f"BLEU-{k + 1}": bleu[k] for k in range(4)}
    expected["ROUGE-L"] = Rouge().compute_score(gts, res)[1]
    expected["CIDEr"] = Cider().compute_score(gts, res)[1]
    for metric, values in expected.items():
        np.testing.assert_allclose(
            ours.per_image[metric], values, rtol=0, atol=1e-9, err_msg=metric
        )
