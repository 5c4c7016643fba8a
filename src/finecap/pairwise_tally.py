"""Un-blinding and counting the judgments of a pairwise study (`finecap.pairwise`).

`tally(key, {file: judgments})` maps each choice through the key to A, B or tie and counts
per criterion: pooled over annotators, per annotator (with the items each left unfinished),
a two-sided sign test over items (an item goes to the system more of its annotators chose;
ties dropped) and Fleiss' kappa across annotators over the items all of them answered
(Fleiss 1971, "Measuring nominal scale agreement among many raters"). The sampled images
both systems captioned the same count as ties, once per annotator. `format_tally` prints it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from finecap.pairwise import CRITERIA, PairwiseError, StudyKey, check_judgments


def sign_test(wins: int, losses: int) -> float | None:
    """Two-sided exact sign test: P(a split at least this uneven | each side wins with
    probability 1/2), as `scipy.stats.binomtest(wins, wins + losses).pvalue`; None when n=0."""
    n = wins + losses
    if n == 0:
        return None
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)


def fleiss_kappa(table: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa of an items x categories table of rating counts, every row summing to
    the same number of raters (>= 2): (P - Pe) / (1 - Pe), observed vs chance agreement.
    None when there are no items or chance agreement is 1 (every rating in one category)."""
    if not table:
        return None
    raters = sum(table[0])
    if raters < 2 or any(sum(row) != raters for row in table):
        raise ValueError("every item needs the same number (2 or more) of ratings")
    n_items = len(table)
    observed = (
        sum((sum(x * x for x in row) - raters) / (raters * (raters - 1)) for row in table) / n_items
    )
    shares = [sum(row[j] for row in table) / (n_items * raters) for j in range(len(table[0]))]
    chance = sum(p * p for p in shares)
    return None if chance > 1 - 1e-12 else (observed - chance) / (1 - chance)


@dataclass
class AnnotatorTally:
    source: str  # the judgments file
    annotator: str
    counts: dict[str, dict[str, int]]  # criterion -> {"A", "B", "tie"}, identical pairs as ties
    unfinished: list[int]  # items with a criterion unanswered (or missing from the file)


@dataclass
class SignTest:
    wins: int  # items A won: more of their annotators chose A than B
    losses: int  # items B won
    p_value: float | None


@dataclass
class Agreement:
    kappa: float | None  # Fleiss' kappa over `items`; None: fewer than 2 annotators, or undefined
    items: list[int]  # the items every annotator answered on this criterion
    left_out: list[int]  # the others


@dataclass
class Tally:
    a: str
    b: str
    counts: dict[str, dict[str, int]]  # criterion -> {"A": wins of A, "B": wins of B, "tie"}
    items: int = 0  # on the page
    identical: int = 0  # left off the page, ties
    annotators: list[AnnotatorTally] = field(default_factory=list)
    sign: dict[str, SignTest] = field(default_factory=dict)
    agreement: dict[str, Agreement] = field(default_factory=dict)

    def percentages(self) -> dict[str, dict[str, float]]:
        out = {}
        for c, n in self.counts.items():
            total = sum(n.values())
            out[c] = {k: (100 * v / total if total else 0.0) for k, v in n.items()}
        return out


def _check_belong(key: StudyKey, docs: Mapping[str, dict]) -> None:
    """Every file judges the key's page, and no annotator is counted twice."""
    by_annotator: dict[str, str] = {}
    for where, doc in docs.items():
        check_judgments(doc, where)
        if doc["page_id"] != key.page_id:
            raise PairwiseError(
                f"{where}: judges page {doc['page_id']}, but {key.source} is the key of page "
                f"{key.page_id} (another page, or one made again with other inputs)"
            )
        unknown = [it["item"] for it in doc["items"] if it["item"] not in key.a_side]
        if unknown:
            raise PairwiseError(f"{where}: item {unknown[0]} is not on the page of {key.source}")
        name = doc.get("annotator") or ""
        if name and name in by_annotator:
            raise PairwiseError(
                f"{where} and {by_annotator[name]} are both by annotator {name!r} with "
                "different answers; keep one (a later save holds the earlier answers)"
            )
        by_annotator[name] = where


def tally(key: StudyKey, docs: Mapping[str, dict]) -> Tally:
    """Un-blind and count `docs` ({file: judgments}) with the page's key. Unanswered
    criteria are left out of their counts; each identical pair is a tie on every criterion,
    once per annotator (as each would have judged it)."""
    if not docs:
        raise PairwiseError("no judgments to tally")
    _check_belong(key, docs)
    votes = {c: {item: [] for item in key.a_side} for c in CRITERIA}  # item -> "A"|"B"|"tie"
    annotators = []
    for where, doc in docs.items():
        choices = {it["item"]: it["choices"] for it in doc["items"]}
        counts = {c: {"A": 0, "B": 0, "tie": key.identical} for c in CRITERIA}
        unfinished = []
        for item, a_side in key.a_side.items():
            got = choices.get(item, {})
            if any(got.get(c) is None for c in CRITERIA):
                unfinished.append(item)
            for c in CRITERIA:
                choice = got.get(c)
                if choice is not None:
                    vote = "tie" if choice == "tie" else ("A" if choice == a_side else "B")
                    counts[c][vote] += 1
                    votes[c][item].append(vote)
        annotators.append(AnnotatorTally(where, doc.get("annotator") or "", counts, unfinished))
    pooled = {c: {k: sum(t.counts[c][k] for t in annotators) for k in ("A", "B", "tie")}
              for c in CRITERIA}  # fmt: skip
    sign, agreement = {}, {}
    for c in CRITERIA:
        wins = sum(v.count("A") > v.count("B") for v in votes[c].values())
        losses = sum(v.count("B") > v.count("A") for v in votes[c].values())
        sign[c] = SignTest(wins, losses, sign_test(wins, losses))
        full = [item for item, v in votes[c].items() if len(v) == len(docs)]
        rows = [[votes[c][item].count(k) for k in ("A", "B", "tie")] for item in full]
        kappa = fleiss_kappa(rows) if len(docs) >= 2 else None
        counted = set(full)
        agreement[c] = Agreement(kappa, full, [i for i in key.a_side if i not in counted])
    return Tally(key.a, key.b, pooled, len(key.a_side), key.identical, annotators, sign, agreement)


def _numbers(items: Sequence[int]) -> str:
    shown = ", ".join(map(str, items[:20]))
    return f"item{'s' * (len(items) != 1)} {shown}" + (
        f", ... ({len(items)})" if items[20:] else ""
    )


def _agreement_note(t: Tally) -> str:
    k = len(t.annotators)
    if k < 2:
        return "kappa: needs two or more annotators"
    left_out = {tuple(a.left_out) for a in t.agreement.values()}
    if len(left_out) == 1:
        (out,) = left_out
        n = t.items - len(out)
        counted = f"the {n} items all {k} annotators answered" + (
            f" (not {_numbers(out)})" if out else ""
        )
    else:
        counted = "the items all answered: " + "; ".join(
            f"{c} {len(a.items)}" + (f" (not {_numbers(a.left_out)})" if a.left_out else "")
            for c, a in t.agreement.items()
        )
    undefined = any(a.kappa is None and a.items for a in t.agreement.values())
    return f"kappa: Fleiss' over {counted}, categories A / B / tie" + (
        "; '-': every answer in one category" if undefined else ""
    )


def format_tally(t: Tally) -> str:
    """Win / lose / tie percentages of A against B per criterion, the sign test and kappa,
    then one row per annotator."""
    k = len(t.annotators)
    same = f"; {t.identical} sampled with identical captions, ties" if t.identical else ""
    lines = [
        f"A = {t.a}, B = {t.b}: {t.items} items judged by {k} annotator{'s' * (k != 1)}{same}",
        f"{'criterion':12s} {'A wins':>7s} {'B wins':>7s} {'tie':>6s} {'n':>4s}"
        f" {'items A:B':>10s} {'sign p':>7s} {'kappa':>6s}",
    ]
    for c, pct in t.percentages().items():
        n, s, kappa = sum(t.counts[c].values()), t.sign[c], t.agreement[c].kappa
        p = "-" if s.p_value is None else f"{s.p_value:.3g}"
        kappa_text = "-" if kappa is None else f"{kappa:.3f}"
        lines.append(
            f"{c:12s} {pct['A']:6.1f}% {pct['B']:6.1f}% {pct['tie']:5.1f}% {n:4d}"
            f" {f'{s.wins}:{s.losses}':>10s} {p:>7s} {kappa_text:>6s}"
        )
    lines.append("sign test: two-sided, over items (each won by more of its votes); ties dropped")
    lines.append(_agreement_note(t))
    width = max(12, *(len(a.annotator or "-") for a in t.annotators))
    lines.append("per annotator, A:B:tie (identical pairs as ties):")
    lines.append(
        f"{'annotator':{width}s} {'finished':>8s} {'unfinished':>10s}  "
        + "  ".join(f"{c:>10s}" for c in CRITERIA)
        + "  file"
    )
    for a in t.annotators:
        cells = "  ".join(f"{'{A}:{B}:{tie}'.format(**a.counts[c]):>10s}" for c in CRITERIA)
        finished = t.items - len(a.unfinished)
        lines.append(
            f"{a.annotator or '-':{width}s} {finished:8d} {len(a.unfinished):10d}  {cells}  "
            f"{a.source}"
        )
    for a in t.annotators:
        if a.unfinished:
            lines.append(f"unfinished, {a.annotator or a.source}: {_numbers(a.unfinished)}")
    return "\n".join(lines)
