"""Scene facts: what a caption claims about its image, checked against the ground truth.

The scenes world knows every object, attribute and relation of every image, so a caption's
claims can be checked one by one, as CHAIR (Rohrbach et al. 2018, "Object Hallucination in
Image Captioning") checks COCO captions against the segmentation labels.

Parsing (`parse_caption`): each sentence is tokenized, misspellings mended and phrases tagged
by `finecap.scenes.phrases` (the world's words and every synonym the reference captions use,
as one table: "ball", "six sided shape", "boxes", "polka dot", "with stripes", "to the left
of", "on the beach", "a red brick wall" -- a colour inside a background phrase is the
background's). Each noun is a *mention*: a shape (or none, for a generic noun: "object",
"shape", "thing", "something") with the colours, sizes and patterns said before it in its noun
phrase, or right after it ("with stripes"; "something blue"). "Two hearts" is two mentions, a
bare plural ("stars") one, "no hearts" none. "The red circle" after "a red circle" is the same
mention (a definite re-mention); "it" after a relation is the caption's first mention. A
relation links the last mention before it to the first after it, within a sentence.

Facts of a caption: per mention, an *object* fact when it names a shape and one fact per
claimed colour, size and pattern ("a red and blue star": two colour facts, at most one right);
each relation; each distinct background phrase. Ground-truth facts of a scene: each object's
shape, colour, size and pattern, each entry of `scene.relations` ("next to" included), the
background.

Scoring (`score_caption`). Mentions are aligned one-to-one to scene objects, the alignment
with the most correct facts (ties: earlier mentions to lower object indices); a named mention
may only align to an object of its shape, a generic one to any. A named mention left
unaligned is a *hallucinated object*: its object fact and all its attribute facts are wrong
(so "two hearts" with one heart in the image hallucinates one; CHAIR counts object words per
class, here each mention counts). An aligned mention's object fact is correct and each
attribute fact is correct when it is the object's. A relation fact is correct when some pair
of distinct objects matching its two mentions (by shape, and colour when said) holds it,
whatever the alignment ("a star left of a circle" with two circles: left of either); it
recalls that pair's entry of `scene.relations` (the aligned pair when it holds). A background
fact is correct when the scene's background is among those the phrase can mean ("on the
floor": wooden or tiled).

Metrics, micro-averaged over a corpus (sum the counts over captions, then divide):

- fact precision = correct stated facts / stated facts (per kind: of that kind). A caption
  stating nothing adds nothing; with no stated fact at all it is undefined (None);
- fact recall = ground-truth facts stated correctly (each at most once) / ground-truth facts.
  A caption stating nothing adds its image's facts to the denominator, 0 to the numerator;
- CHAIR-i = hallucinated mentions / named mentions (undefined with none);
- CHAIR-s = captions with at least one hallucinated mention / captions.

Kinds (FACT_KINDS): object, color, size, pattern, relation, background.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from finecap.data.vocab import simple_tokenize
from finecap.scenes.phrases import POSTPOSED, Tag, correct_spelling, tag_words
from finecap.scenes.world import INVERSE_RELATION, Scene, SceneObject, as_scene

FACT_KINDS = ("object", "color", "size", "pattern", "relation", "background")
ATTRIBUTES = ("color", "size", "pattern")
_SENTENCE_END = re.compile(r"[.!?;:]")


# ---------------------------------------------------------------- parsing


@dataclass
class Mention:
    """One object the caption speaks of, with the attributes it claims for it."""

    shape: str | None  # canonical shape; None for a generic noun ("a purple object")
    attributes: dict[str, list[str]] = field(default_factory=lambda: {a: [] for a in ATTRIBUTES})

    def claim(self, kind: str, value: str) -> None:
        if value not in self.attributes[kind]:
            self.attributes[kind].append(value)


@dataclass(frozen=True)
class RelationFact:
    subject: int  # mention index: "mention `subject` is `relation` mention `object`"
    relation: str
    object: int


@dataclass
class CaptionFacts:
    mentions: list[Mention] = field(default_factory=list)
    relations: list[RelationFact] = field(default_factory=list)
    backgrounds: list[frozenset[str]] = field(default_factory=list)  # what each phrase can mean


class _SentenceReader:
    """Turns one sentence's tags into mentions, relations and backgrounds (see module doc)."""

    def __init__(self, facts: CaptionFacts) -> None:
        self.facts = facts
        self.modifiers: list[tuple[str, str]] = []  # (kind, value) waiting for their noun
        self.count: int | None = None  # from "two", "a"; None: not said
        self.definite = False
        self.group: list[int] = []  # the mentions of the last noun
        self.group_end = -1  # where the last noun (or a word attached after it) ended
        self.open_after = False  # "something": following attributes are its own
        self.relation: tuple[int, str] | None = None  # (subject, relation) awaiting its object

    def read(self, tags: Sequence[Tag]) -> None:
        handlers = {
            "count": self._article,
            "definite": self._article,
            "color": self._modifier,
            "size": self._modifier,
            "pattern": self._modifier,
            "shape": self._noun,
            "generic": self._noun,
            "pattern_after": self._pattern_after,
            "relation": self._relation,
            "pronoun": self._pronoun,
            "background": self._background,
        }
        for tag in tags:
            handlers[tag.kind](tag)

    def _article(self, tag: Tag) -> None:
        self.modifiers, self.count, self.definite = [], tag.value, tag.kind == "definite"

    def _modifier(self, tag: Tag) -> None:
        if self.open_after and tag.start == self.group_end:
            for k in self.group:
                self.facts.mentions[k].claim(tag.kind, tag.value)
            self.group_end = tag.end
        else:
            self.modifiers.append((tag.kind, tag.value))

    def _noun(self, tag: Tag) -> None:
        shape = tag.value if tag.kind == "shape" else None
        self.group = self._mentions(shape, 1 if self.count is None else self.count)
        if self.group and self.relation is not None:
            self._relate(self.group[0])
        self.group_end, self.open_after = tag.end, tag.value == POSTPOSED
        self.modifiers, self.count, self.definite = [], None, False

    def _mentions(self, shape: str | None, n: int) -> list[int]:
        """Indices of the noun's mentions: new ones, or an earlier one it names again."""
        mentions = self.facts.mentions
        colors = {v for kind, v in self.modifiers if kind == "color"}
        if self.definite and shape is not None and n == 1:
            for k in reversed(range(len(mentions))):
                said = set(mentions[k].attributes["color"])
                if mentions[k].shape == shape and (not colors or not said or colors <= said):
                    self._claim([k])
                    return [k]
        first = len(mentions)
        mentions.extend(Mention(shape) for _ in range(n))
        self._claim(list(range(first, len(mentions))))
        return list(range(first, len(mentions)))

    def _claim(self, group: list[int]) -> None:
        for k in group:
            for kind, value in self.modifiers:
                self.facts.mentions[k].claim(kind, value)

    def _pattern_after(self, tag: Tag) -> None:
        if tag.start == self.group_end:  # "a ball with stripes", right after its noun
            for k in self.group:
                self.facts.mentions[k].claim("pattern", tag.value)
            self.group_end = tag.end

    def _relation(self, tag: Tag) -> None:
        self.relation = (self.group[0], tag.value) if self.group else None
        self.modifiers, self.open_after = [], False

    def _pronoun(self, tag: Tag) -> None:
        if self.relation is not None:
            self._relate(0)

    def _relate(self, obj: int) -> None:
        subject, relation = self.relation
        fact = RelationFact(subject, relation, obj)
        if subject != obj and fact not in self.facts.relations:
            self.facts.relations.append(fact)
        self.relation = None

    def _background(self, tag: Tag) -> None:
        if tag.value not in self.facts.backgrounds:
            self.facts.backgrounds.append(tag.value)
        self.modifiers, self.relation, self.open_after = [], None, False


def parse_caption(caption: str) -> CaptionFacts:
    """The mentions, relations and background phrases a caption states."""
    facts = CaptionFacts()
    for sentence in _SENTENCE_END.split(caption):
        words = [correct_spelling(w) for w in simple_tokenize(sentence)]
        _SentenceReader(facts).read(tag_words(words))
    return facts


# ---------------------------------------------------------------- scoring


@dataclass
class FactCounts:
    """Fact and hallucination counts of one caption, or summed over a corpus (`+`)."""

    stated: Counter = field(default_factory=Counter)  # kind -> facts the captions state
    correct: Counter = field(default_factory=Counter)  # kind -> of those, true of the scene
    recalled: Counter = field(default_factory=Counter)  # kind -> ground-truth facts stated
    present: Counter = field(default_factory=Counter)  # kind -> ground-truth facts
    mentions: int = 0  # named object mentions (CHAIR-i's denominator)
    hallucinated: int = 0  # of those, matching no object of their shape
    captions: int = 0
    hallucinating_captions: int = 0  # captions with a hallucinated mention

    def __add__(self, other: FactCounts) -> FactCounts:
        return FactCounts(
            self.stated + other.stated,
            self.correct + other.correct,
            self.recalled + other.recalled,
            self.present + other.present,
            self.mentions + other.mentions,
            self.hallucinated + other.hallucinated,
            self.captions + other.captions,
            self.hallucinating_captions + other.hallucinating_captions,
        )

    def precision(self, kinds: Sequence[str] = FACT_KINDS) -> float | None:
        stated = sum(self.stated[k] for k in kinds)
        return sum(self.correct[k] for k in kinds) / stated if stated else None

    def recall(self, kinds: Sequence[str] = FACT_KINDS) -> float | None:
        present = sum(self.present[k] for k in kinds)
        return sum(self.recalled[k] for k in kinds) / present if present else None

    def net(self, kinds: Sequence[str] = FACT_KINDS) -> int:
        """Correct minus wrong stated facts of these kinds (the pairwise oracle's score)."""
        return sum(2 * self.correct[k] - self.stated[k] for k in kinds)

    @property
    def chair_i(self) -> float | None:
        return self.hallucinated / self.mentions if self.mentions else None

    @property
    def chair_s(self) -> float | None:
        return self.hallucinating_captions / self.captions if self.captions else None


def _gain(mention: Mention, obj: SceneObject) -> int | None:
    """Correct facts of `mention` if it is `obj`; None when its shape rules that out."""
    if mention.shape is not None and mention.shape != obj.shape:
        return None
    said = sum(getattr(obj, kind) in values for kind, values in mention.attributes.items())
    return (mention.shape is not None) + said


def align(mentions: Sequence[Mention], scene: Scene) -> list[int | None]:
    """Each mention's object (or None), one-to-one, with the most correct facts."""
    gains = [[_gain(m, o) for o in scene.objects] for m in mentions]

    @cache
    def best(k: int, used: int) -> tuple[int, tuple[int | None, ...]]:
        if k == len(mentions):
            return 0, ()
        score, rest = best(k + 1, used)
        choice = (score, (None, *rest))
        for o, gain in enumerate(gains[k]):
            if gain and not used >> o & 1:
                score, rest = best(k + 1, used | 1 << o)
                if score + gain > choice[0]:
                    choice = (score + gain, (o, *rest))
        return choice

    return list(best(0, 0)[1])


def _matches(mention: Mention, obj: SceneObject) -> bool:
    colors = mention.attributes["color"]
    return (mention.shape in (None, obj.shape)) and (not colors or obj.color in colors)


def _relation_recalled(
    fact: RelationFact, mentions: Sequence[Mention], scene: Scene, alignment: Sequence
) -> tuple[int, str, int] | None:
    """The entry of `scene.relations` a relation fact recalls, None when no pair holds it."""
    objs = scene.objects
    pairs = [
        (i, j)
        for i in range(len(objs))
        for j in range(len(objs))
        if i != j
        and _matches(mentions[fact.subject], objs[i])
        and _matches(mentions[fact.object], objs[j])
        and fact.relation in scene.relation_between(i, j)
    ]
    if not pairs:
        return None
    aligned = (alignment[fact.subject], alignment[fact.object])
    i, j = aligned if aligned in pairs else pairs[0]
    if (i, fact.relation, j) in scene.relations:
        return (i, fact.relation, j)
    return (j, INVERSE_RELATION[fact.relation], i)


def ground_truth(scene: Scene) -> Counter:
    """kind -> how many ground-truth facts of that kind the scene holds."""
    counts = Counter(dict.fromkeys(("object", *ATTRIBUTES), len(scene.objects)))
    counts.update(relation=len(scene.relations), background=1)
    return counts


def score_facts(facts: CaptionFacts, scene: Scene | Mapping[str, Any]) -> FactCounts:
    """Check parsed facts against a scene (see the module doc)."""
    scene = as_scene(scene)
    out = FactCounts(present=ground_truth(scene), captions=1)
    alignment = align(facts.mentions, scene)
    for mention, o in zip(facts.mentions, alignment, strict=True):
        if mention.shape is not None:
            out.stated["object"] += 1
            out.mentions += 1
            out.hallucinated += o is None
        for kind, values in mention.attributes.items():
            out.stated[kind] += len(values)
        if o is not None:
            out.correct["object"] += mention.shape is not None
            for kind, values in mention.attributes.items():
                out.correct[kind] += getattr(scene.objects[o], kind) in values
    out.recalled.update({k: out.correct[k] for k in ("object", *ATTRIBUTES)})
    recalled = [_relation_recalled(r, facts.mentions, scene, alignment) for r in facts.relations]
    out.stated["relation"] = len(facts.relations)
    out.correct["relation"] = sum(r is not None for r in recalled)
    out.recalled["relation"] = len({r for r in recalled if r is not None})
    out.stated["background"] = len(facts.backgrounds)
    out.correct["background"] = sum(scene.background in b for b in facts.backgrounds)
    out.recalled["background"] = int(out.correct["background"] > 0)
    out.hallucinating_captions = int(out.hallucinated > 0)
    return out


def score_caption(caption: str, scene: Scene | Mapping[str, Any]) -> FactCounts:
    """Parse a caption and check its facts against the image's scene."""
    return score_facts(parse_caption(caption), scene)


def score_corpus(
    captions: Sequence[str], scenes: Sequence[Scene | Mapping[str, Any]]
) -> FactCounts:
    """Counts summed over captions (one per scene): micro-averaged metrics come from them."""
    total = FactCounts()
    for caption, scene in zip(captions, scenes, strict=True):
        total += score_caption(caption, scene)
    return total
