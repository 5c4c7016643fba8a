"""One-fact changes of a scene, the attribute-binding probe, and CLIP training's hard negatives."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from finecap.cli import main as cli_main
from finecap.clip import ClipEmbedder, load_clip
from finecap.clip.dense import (
    BAG_PAIRS,
    BAG_SIZE,
    IGNORE,
    POSITION_KEYS,
    RELATION_AXES,
    RELATION_KEYS,
    RelationHead,
    bag_labels,
    patch_labels,
    position_labels,
    relation_labels,
)
from finecap.clip.probe import ProbeInputError, ProbePair, csv_pairs, probe, scene_pairs
from finecap.clip.train import ClipTrainConfig, ImageTextPairs, clip_loss, pair_loss, shift
from finecap.data.formats import load_corpus
from finecap.scenes import Scene, SceneObject, compute_relations, generate_world
from finecap.scenes.changes import CHANGE_KINDS, change_scene, changed_texts
from finecap.scenes.language import describe_scene, mirror_text, stated_relations
from finecap.scenes.world import COLORS, INVERSE_RELATION, SHAPES, mirror_scene
from helpers.tiny_models import make_tiny_clip


def two_object_scene() -> Scene:
    objects = [
        SceneObject("circle", "red", "large", "striped", (10, 30, 45, 65)),
        SceneObject("star", "blue", "small", "plain", (60, 35, 78, 53)),
    ]
    return Scene("grass", objects, compute_relations(objects, 96))


def test_each_kind_changes_exactly_one_fact() -> None:
    scene = two_object_scene()
    for seed in range(20):
        rnd = random.Random(seed)
        shape = change_scene(scene, "shape", rnd, target=0)
        assert shape.objects[0].shape != "circle" and shape.objects[1] == scene.objects[1]
        color = change_scene(scene, "color", rnd, target=1)
        assert color.objects[1].color != "blue"
        assert color.objects[1].shape == "star" and color.background == "grass"
        background = change_scene(scene, "background", rnd)
        assert background.background != "grass" and background.objects == scene.objects
    assert change_scene(scene, "size", random.Random(0), target=0).objects[0].size == "small"
    # The star is right of the circle; reversed, the description says "left of".
    relation = change_scene(scene, "relation", random.Random(0))
    assert relation.relation_between(1, 0)[0] == "left of"
    assert scene.relation_between(1, 0)[0] == "right of"
    binding = change_scene(scene, "binding", random.Random(0))
    assert [(o.shape, o.color) for o in binding.objects] == [("circle", "blue"), ("star", "red")]
    assert scene.objects[0].color == "red"  # the original is untouched


def test_shape_and_colour_pairs_stay_unique() -> None:
    objects = [
        SceneObject("circle", "red", "large", "plain", (5, 5, 40, 40)),
        SceneObject("star", "red", "small", "plain", (50, 50, 70, 70)),
    ]
    scene = Scene("sand", objects, compute_relations(objects, 96))
    for seed in range(50):  # the circle may become anything but a second red star
        changed = change_scene(scene, "shape", random.Random(seed), target=0)
        assert changed.objects[0].shape not in ("circle", "star")
    # Same colour, so swapping colours would change nothing: no binding change exists.
    assert change_scene(scene, "binding", random.Random(0)) is None


def test_scenes_that_cannot_take_a_kind_give_none() -> None:
    lone = Scene("snow", [SceneObject("heart", "red", "large", "dotted", (20, 20, 55, 55))])
    assert change_scene(lone, "relation", random.Random(0)) is None
    assert changed_texts(lone, "binding", random.Random(0)) is None
    assert changed_texts(two_object_scene(), "relation", random.Random(0), "short") is None
    with pytest.raises(ValueError, match="unknown change kind"):
        change_scene(lone, "texture", random.Random(0))


def test_changed_texts_move_every_mention_together() -> None:
    true, changed = changed_texts(two_object_scene(), "shape", random.Random(1))
    assert "red circle" in true and "red circle" not in changed
    new_shape = changed.split()[4]  # "a large red striped SHAPE and ..."
    assert changed.endswith(f"of the red {new_shape}.")  # the relation sentence moved too
    short = changed_texts(two_object_scene(), "color", random.Random(0), register="short")
    assert short[0] == "a large red striped circle on grass"
    assert short[1].startswith("a large ") and short[1].endswith(" striped circle on grass")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), n=30, seed=5, image_size=48)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_probe_counts_wins_and_ties(world: Path, tiny_clip: Path) -> None:
    corpus = load_corpus(world)
    image = corpus.image_path(corpus.split("test")[0])
    embedder = ClipEmbedder(load_clip(tiny_clip))
    img = embedder.embed_image_files([image])[0]
    texts = ["a red circle", "a blue square", "the dog is on the table", "a cat"]
    scores = (embedder.embed_texts(texts) @ img).tolist()
    best, worst = max(range(4), key=scores.__getitem__), min(range(4), key=scores.__getitem__)
    pairs = [
        ProbePair(image, texts[best], texts[worst], "shape"),  # a win
        ProbePair(image, texts[worst], texts[best], "shape"),  # a loss
        ProbePair(image, texts[best], texts[best], "shape"),  # the same text: a tie
        ProbePair(image, texts[worst], texts[worst], "color"),  # a tie, not a win
    ]
    result = probe(embedder, pairs)
    cosines = {k: result[k].pop("text_cosine") for k in result}
    assert result == {
        "shape": {"accuracy": 1 / 3, "n": 3, "ties": 1},
        "color": {"accuracy": 0.0, "n": 1, "ties": 1},
    }
    # The text towers' view: the same text has cosine 1; two different texts less.
    assert cosines["color"] == pytest.approx(1.0, abs=1e-5)
    different = float(embedder.embed_texts([texts[best]]) @ embedder.embed_texts([texts[worst]]).T)
    assert different < 1 - 1e-4
    assert cosines["shape"] == pytest.approx((2 * different + 1) / 3, abs=1e-5)


def test_scene_pairs_cover_every_kind_the_split_has(world: Path) -> None:
    corpus = load_corpus(world)
    records = corpus.split("test")
    pairs = scene_pairs(corpus, records)
    kinds = {p.kind for p in pairs}
    assert {"shape", "color", "size", "pattern", "background"} <= kinds <= set(CHANGE_KINDS)
    assert all(p.true != p.changed for p in pairs)
    assert scene_pairs(corpus, records) == pairs  # reproducible
    true_texts = {p.true for p in pairs}
    assert true_texts <= {r.extra["descriptions"][0] for r in records}


def test_probe_cli_writes_the_documented_json(world: Path, tiny_clip: Path, tmp_path, capsys):
    out = tmp_path / "probe.json"
    args = ["clip", "probe", "--clip", str(tiny_clip), "--dataset", str(world), "--out", str(out)]
    assert cli_main(args) == 0
    result = json.loads(out.read_text())
    assert result["clip"] == str(tiny_clip) and result["split"] == "test"
    for register in ("kinds", "short_kinds"):
        for stats in result[register].values():
            assert set(stats) == {"accuracy", "n", "ties", "text_cosine"}
            assert 0 <= stats["accuracy"] <= 1 and -1 <= stats["text_cosine"] <= 1 + 1e-6
    assert result["kinds"]["shape"]["n"] == len(load_corpus(world).split("test"))  # every image
    assert "| shape |" in capsys.readouterr().out


def test_probe_csv_for_other_data(world: Path, tiny_clip: Path, tmp_path: Path, capsys) -> None:
    corpus = load_corpus(world)
    name = Path(corpus.split("test")[0].path).name
    good = tmp_path / "pairs.csv"
    good.write_text(f"image,true,changed,kind\n{name},a red circle,a red star,shape\n")
    pairs = csv_pairs(good, corpus, corpus.split("test"))
    assert pairs[0].kind == "shape" and pairs[0].image == corpus.image_path(corpus.split("test")[0])
    bad = tmp_path / "bad.csv"
    bad.write_text("image,true,changed,kind\nnowhere.png,a,b,shape\n")
    with pytest.raises(ProbeInputError, match=r"bad.csv: row 2: image 'nowhere.png'"):
        csv_pairs(bad, corpus, corpus.split("test"))
    args = ["clip", "probe", "--clip", str(tiny_clip), "--dataset", str(world)]
    assert cli_main([*args, "--pairs", str(bad)]) == 2
    assert "row 2" in capsys.readouterr().err


def test_hard_negatives_join_the_image_to_text_softmax() -> None:
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.1 * torch.randn(4, 8), dim=-1)
    neg = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    scale = torch.tensor(2.0)
    # A loop over the definition: text -> image over the images, image -> text over B + M texts.
    s = scale.exp()
    t2i = sum(-torch.log_softmax(s * txt[i] @ img.T, 0)[i] for i in range(4)) / 4
    candidates = torch.cat([txt, neg])
    i2t = sum(-torch.log_softmax(s * img[i] @ candidates.T, 0)[i] for i in range(4)) / 4
    torch.testing.assert_close(clip_loss(img, txt, scale, neg), (t2i + i2t) / 2)
    assert clip_loss(img, txt, scale, neg[:0]) == clip_loss(img, txt, scale)


def test_training_texts_carry_hard_negatives(world: Path) -> None:
    corpus = load_corpus(world)
    records = corpus.split("train")
    cfg = ClipTrainConfig(description_prob=1.0, hard_negative_prob=1.0, prompt_prob=0.0)
    data = ImageTextPairs([None] * len(records), records, cfg)
    triples = [data[i] for i in range(len(records))]
    assert all(neg and neg != text for _, text, neg, _ in triples)
    none = ImageTextPairs([None] * len(records), records, cfg.replace(hard_negative_prob=0.0))
    assert all(neg == "" for _, _, neg, _ in (none[i] for i in range(len(records))))
    short = ImageTextPairs([None] * len(records), records, cfg.replace(short_prob=1.0))
    assert all("." not in text for _, text, _, _ in (short[i] for i in range(len(records))))


def test_mirrored_images_get_mirrored_texts(world: Path) -> None:
    scene = two_object_scene()
    mirrored = mirror_scene(scene)
    assert scene.relation_between(1, 0)[0] == "right of"
    assert mirrored.relation_between(1, 0)[0] == "left of"
    assert mirror_scene(mirrored) == scene  # a mirror twice is the identity
    assert mirror_text("a star to the left of a circle") == "a star to the right of a circle"
    # In training, a flipped image comes with the mirrored scene's description.
    corpus = load_corpus(world)
    records = corpus.split("train")
    cfg = ClipTrainConfig(description_prob=1.0, prompt_prob=0.0, flip_prob=1.0)
    pixels = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    data = ImageTextPairs(pixels, records[:2], cfg)
    image, text, _, _ = data[0]
    assert torch.equal(image, pixels[0].flip(-1))
    assert text in describe_scene(mirror_scene(records[0].extra["scene"]))


def test_bag_labels_hold_each_objects_bound_pairs() -> None:
    bag = bag_labels(two_object_scene())
    assert bag.shape == (BAG_SIZE,) and bag.sum() == 2 * len(BAG_PAIRS)  # 2 objects x 3 pairs
    # Decode every set entry back into (shape, attribute value).
    named, start = set(), 0
    for _, vocab in BAG_PAIRS:
        block = bag[start : start + len(SHAPES) * len(vocab)].view(len(SHAPES), len(vocab))
        named |= {(SHAPES[s], vocab[v]) for s, v in block.nonzero().tolist()}
        start += block.numel()
    expected = {("circle", "red"), ("circle", "striped"), ("circle", "large")}
    expected |= {("star", "blue"), ("star", "plain"), ("star", "small")}
    assert named == expected  # bound: no ("circle", "blue")
    assert (bag_labels(None) == IGNORE).all()


def test_position_labels_hold_each_colour_and_shape_centre() -> None:
    # Red circle centred at (27.5, 47.5), blue star at (69, 44) of 96 px; input 48 px.
    labels = position_labels(two_object_scene(), 48)
    assert labels.shape == (len(POSITION_KEYS), 3) and labels[:, 0].sum() == 4  # 2 x (c, s)
    for key, (x, y) in [
        (("color", "red"), (27.5, 47.5)), (("shape", "circle"), (27.5, 47.5)),
        (("color", "blue"), (69, 44)), (("shape", "star"), (69, 44)),
    ]:  # fmt: skip
        torch.testing.assert_close(
            labels[POSITION_KEYS.index(key)], torch.tensor([1.0, x / 48 - 1, y / 48 - 1])
        )
    assert labels[POSITION_KEYS.index(("color", "green")), 0] == 0
    # Content moved 6 px right in the 48-px input: x + 6 / 24.
    moved = position_labels(two_object_scene(), 48, (6, 0))
    torch.testing.assert_close(moved[:, 1], torch.where(labels[:, 0] == 1, labels[:, 1] + 0.25, 0))
    # Two red objects: the mean of their centres.
    scene = two_object_scene()
    scene.objects[1] = SceneObject("star", "red", "small", "plain", (60, 35, 78, 53))
    red = position_labels(scene, 96)[POSITION_KEYS.index(("color", "red"))]
    torch.testing.assert_close(red, torch.tensor([1.0, (27.5 + 69) / 96 - 1, (47.5 + 44) / 96 - 1]))
    assert (position_labels(None, 48) == IGNORE).all()


def said(labels: torch.Tensor) -> set[tuple[tuple[str, str, str], str]]:
    """The known entries of relation labels (K, 2) as (key, the relation they state)."""
    name = {axis_before: rel for rel, axis_before in RELATION_AXES.items()}
    return {
        (RELATION_KEYS[k], name[(axis, value)])
        for k, row in enumerate(labels.tolist())
        for axis, value in enumerate(row)
        if value >= 0
    }


def test_relation_labels_key_each_pair_by_colour_and_shape_both_ways() -> None:
    scene = two_object_scene()  # the red circle is left of the blue star
    assert said(relation_labels(scene, scene.relations)) == {
        (("color", "red", "blue"), "left of"), (("color", "blue", "red"), "right of"),
        (("shape", "circle", "star"), "left of"), (("shape", "star", "circle"), "right of"),
    }  # fmt: skip
    assert said(relation_labels(scene, [(0, "next to", 1)])) == set()  # no direction
    assert said(relation_labels(None, [])) == set()
    # A red heart above the blue star: red is before blue on both axes (the circle on x,
    # the heart on y); the red-red pair says nothing.
    heart = SceneObject("heart", "red", "small", "plain", (62, 2, 80, 20))
    three = Scene("grass", [*scene.objects, heart], compute_relations([*scene.objects, heart], 96))
    labels = said(relation_labels(three, three.relations))
    assert {(("color", "red", "blue"), "left of"), (("color", "red", "blue"), "above")} <= labels
    assert ("color", "red", "red") not in RELATION_KEYS
    assert (("shape", "heart", "star"), "above") in labels
    # Two relations that contradict each other on one axis: the entry is dropped.
    both = relation_labels(scene, [(0, "left of", 1), (0, "right of", 1)])
    assert said(both) == set()


def test_relation_head_reads_each_pair_as_a_difference_of_positions() -> None:
    head = RelationHead(8)
    embeds = F.normalize(torch.randn(3, 8), dim=-1)
    logits = head.logits(embeds)  # (B, K, 2)
    assert logits.shape == (3, len(RELATION_KEYS), 2)
    # By hand: (where[a] - where[b]) . e * sqrt(P), per axis; the colours come first, then
    # the shapes.
    k = RELATION_KEYS.index(("color", "red", "blue"))
    red, blue = COLORS.index("red"), COLORS.index("blue")
    by_hand = (embeds * 8**0.5) @ (head.where[red] - head.where[blue]).T
    torch.testing.assert_close(logits[:, k], by_hand)
    star, circle = len(COLORS) + SHAPES.index("star"), len(COLORS) + SHAPES.index("circle")
    by_hand = (embeds * 8**0.5) @ (head.where[star] - head.where[circle]).T
    torch.testing.assert_close(logits[:, RELATION_KEYS.index(("shape", "star", "circle"))], by_hand)
    labels = torch.full((3, len(RELATION_KEYS), 2), IGNORE)
    assert head.loss(embeds, labels).isnan()  # nothing known
    labels[0, k, 0] = 1
    expected = F.binary_cross_entropy_with_logits(logits[0, k, 0], torch.tensor(1.0))
    torch.testing.assert_close(head.loss(embeds, labels), expected)


def test_stated_relations_are_the_descriptions_relation_sentences() -> None:
    objects = [
        SceneObject("circle", "red", "large", "striped", (10, 30, 45, 65)),
        SceneObject("star", "blue", "small", "plain", (50, 35, 68, 53)),
        SceneObject("heart", "yellow", "small", "dotted", (52, 70, 70, 88)),
    ]
    scene = Scene("grass", objects, compute_relations(objects, 96))
    assert stated_relations(scene) == [
        [(1, "right of", 0), (2, "right of", 0)],  # each object to the salient circle
        [(0, "next to", 1), (1, "above", 2)],  # left-to-right neighbours, "next to" first
    ]
    # The texts, as describe_scene wrote them before it read them from stated_relations.
    assert describe_scene(scene) == [
        "a large red striped circle, a small blue plain star and a small yellow dotted heart on"
        " grass. the blue star is right of the red circle. the yellow heart is right of the red"
        " circle.",
        "three objects on grass: a large red striped circle, a small blue plain star and a small"
        " yellow dotted heart. the red circle is next to the blue star. the blue star is above"
        " the yellow heart.",
    ]


def test_training_texts_carry_the_relations_they_state(world: Path) -> None:
    corpus = load_corpus(world)
    records = [r for r in corpus.split("train") if len(r.extra["scene"]["objects"]) >= 2]
    cfg = ClipTrainConfig(
        description_prob=1.0, hard_negative_prob=1.0, prompt_prob=0.0,
        hard_negative_kinds=["relation"], relation_weight=1.0,
    )  # fmt: skip
    data = ImageTextPairs([None] * len(records), records, cfg)
    reversed_pairs = 0
    for i in range(len(records)):
        _, text, negative, labels = data[i]
        truth, stated, negated = (
            said(labels[k]) for k in ("relation", "text_relation", "negative_relation")
        )
        # What the text states is true (a pair the whole scene contradicts may be one in it).
        # Every description states a direction but a neighbours' one of "next to"s only.
        assert stated or " is next to " in text
        # What the text states, the scene never contradicts.
        assert not {(k, INVERSE_RELATION[rel]) for k, rel in stated} & truth
        if negative and " is next to " not in text:
            # One relation reversed: of the pairs both texts state, the negative states some
            # the other way round and none in a third way.
            assert negated != stated
            known = {k for k, _ in stated} & {k for k, _ in negated}
            turned = {(k, rel) for k, rel in negated - stated if k in known}
            assert turned and all((k, INVERSE_RELATION[rel]) in stated for k, rel in turned)
            reversed_pairs += 1
    assert reversed_pairs
    # References and short texts state no relation.
    refs = ImageTextPairs([None] * len(records), records, cfg.replace(description_prob=0.0))
    assert all(not said(refs[i][3]["text_relation"]) for i in range(len(records)))
    short = ImageTextPairs([None] * len(records), records, cfg.replace(short_prob=1.0))
    assert all(not said(short[i][3]["text_relation"]) for i in range(len(records)))
    # Without a relation term, no labels are made.
    off = ImageTextPairs([None] * len(records), records, cfg.replace(relation_weight=0.0))
    assert all(not said(off[i][3]["relation"]) for i in range(len(records)))


def test_pair_loss_is_the_two_way_choice_of_true_text_over_its_negative() -> None:
    img = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    other = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    scale = torch.tensor(2.0)  # exp(2) = 7.39
    right, wrong = pair_loss(img, img, other, scale), pair_loss(img, other, img, scale)
    assert right < torch.log(torch.tensor(2.0)) < wrong
    logits = scale.exp() * torch.stack([(img * img).sum(-1), (img * other).sum(-1)], 1)
    assert torch.isclose(right, -logits.log_softmax(1)[:, 0].mean())
    assert torch.isclose(pair_loss(img, other, other, scale), torch.log(torch.tensor(2.0)))


def test_shift_moves_the_image_and_repeats_the_edges() -> None:
    image = torch.arange(16, dtype=torch.float32).view(1, 4, 4).expand(3, 4, 4)
    moved = shift(image, 1, 0, most=2)  # content one pixel to the left, last column repeated
    assert moved[0, 0].tolist() == [1.0, 2.0, 3.0, 3.0]
    assert torch.equal(shift(image, 0, 0, most=2), image)


def test_patch_labels_name_the_object_under_each_patch() -> None:
    scene = two_object_scene()  # circle (10, 30)-(45, 65), star (60, 35)-(78, 53) in 96 px
    labels = patch_labels(scene, grid=8, side=96).view(8, 8, 4)  # 12-px patches
    circle = [SHAPES.index("circle") + 1, COLORS.index("red") + 1]
    assert labels[3, 1, :2].tolist() == circle  # centre (18, 42): inside the circle's box
    assert labels[3, 5, 0] == SHAPES.index("star") + 1  # centre (66, 42)
    assert labels[0, 0].tolist() == [0, 0, 0, 0]  # background
    # Content moved 12 px right: the labels move one patch right.
    moved = patch_labels(scene, grid=8, side=96, offset=(12, 0)).view(8, 8, 4)
    assert torch.equal(moved[:, 1:], labels[:, :-1])
    assert (patch_labels(None, 8, 96) == IGNORE).all()


def test_dense_supervision_trains_and_is_not_saved(world: Path, tmp_path: Path) -> None:
    from finecap.clip.train import ScenesClipConfig, train_clip

    arch = ScenesClipConfig(tower="vit", image_size=48, patch_size=12, hidden=32, layers=1, heads=2)
    cfg = ClipTrainConfig(epochs=1, batch_size=8, dense_weight=1.0, flip_prob=0.5, max_shift=2)
    train_clip(world, tmp_path / "clip", arch, cfg)
    names = load_clip(tmp_path / "clip").model.state_dict().keys()
    assert not any("dense" in n or "heads" in n for n in names)
